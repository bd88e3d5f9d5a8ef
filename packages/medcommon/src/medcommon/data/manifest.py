"""Reading manifest files as they are found in the wild.

Real split files come with a UTF-8 byte-order mark, Windows line endings, an
unnamed pandas index column, a comma at the end of every line (NIH's own
``Data_Entry_2017.csv``) and gzip compression; these readers absorb them and name
the file and line of anything they cannot parse.
"""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path
from typing import Any

from medcommon.errors import InputError


def read_csv_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV manifest (``.csv`` or ``.csv.gz``) into ``(columns, rows)``.

    The BOM is stripped, CRLF accepted, an unnamed leading column (a saved pandas
    index) dropped, and so is an unnamed empty last column (every line ending with a
    comma); a value under that last column is an error naming its line. Each row dict
    also carries ``"_line"``: its line number in the file, for error messages.

    Raises:
        InputError: missing, unreadable or empty file, no header, or a row of the wrong width.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    text = _read_text(path)
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(path, "manifest is empty") from None
    header = [h.strip() for h in header]
    drop_first = bool(header) and header[0] in {"", "Unnamed: 0"}
    drop_last = len(header) > 1 + drop_first and header[-1] == ""
    columns = header[int(drop_first) : len(header) - int(drop_last)]
    if not columns or any(not c for c in columns):
        raise InputError(path, f"header has empty column names: {header}")
    rows = []
    for line_no, values in enumerate(reader, start=2):
        if not values or all(not v.strip() for v in values):
            continue
        if len(values) != len(header):
            raise InputError(
                f"{path}:{line_no}", f"expected {len(header)} fields, got {len(values)}"
            )
        if drop_last and values[-1].strip():
            raise InputError(f"{path}:{line_no}", "a value under the header's unnamed last column")
        values = values[int(drop_first) : len(values) - int(drop_last)]
        row: dict[str, Any] = {c: v.strip() for c, v in zip(columns, values)}
        row["_line"] = line_no
        rows.append(row)
    return columns, rows


def _read_text(path: Path) -> str:
    """The file's text (gunzipped for ``*.gz``); unreadable bytes name the file."""
    try:
        if path.suffix.lower() == ".gz":
            with gzip.open(path, "rb") as fh:
                data = fh.read()
        else:
            data = path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InputError(path, f"not a readable file ({exc})") from None
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(path, f"not UTF-8 text ({exc.reason} at byte {exc.start})") from None


def read_jsonl(path: str | Path, line_numbers: bool = False) -> list[dict[str, Any]]:
    """Read JSON Lines; a malformed line is an :class:`InputError` naming its line number.

    With ``line_numbers`` each record also carries ``"_line"`` (as
    :func:`read_csv_rows` does), so later field checks can name the line too.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    records = []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(f"{path}:{line_no}", f"malformed JSON ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise InputError(f"{path}:{line_no}", "expected a JSON object per line")
            if line_numbers:
                obj["_line"] = line_no
            records.append(obj)
    return records
