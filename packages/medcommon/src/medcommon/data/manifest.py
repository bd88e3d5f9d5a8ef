"""Reading manifest files as they are found in the wild.

Real split files come with a UTF-8 byte-order mark, Windows line endings and an
unnamed pandas index column; these readers absorb all three and name the file
and line of anything they cannot parse.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from medcommon.errors import InputError


def read_csv_rows(path: str | Path) -> tuple[list[str], list[dict[str, str]]]:
    """Read a CSV manifest into ``(columns, rows)``.

    The BOM is stripped, CRLF accepted, and an unnamed leading column (a saved
    pandas index) dropped. Each row dict also carries ``"_line"``: its line number
    in the file, for error messages.

    Raises:
        InputError: missing or empty file, no header, or a row of the wrong width.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "manifest not found")
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.reader(text.splitlines())
    try:
        header = next(reader)
    except StopIteration:
        raise InputError(path, "manifest is empty") from None
    header = [h.strip() for h in header]
    drop_first = bool(header) and header[0] in {"", "Unnamed: 0"}
    columns = header[1:] if drop_first else header
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
        values = values[1:] if drop_first else values
        row: dict[str, Any] = {c: v.strip() for c, v in zip(columns, values)}
        row["_line"] = line_no
        rows.append(row)
    return columns, rows


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
