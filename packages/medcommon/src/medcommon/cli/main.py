"""The ``medcommon`` console script: ``inspect`` an image, combine benchmark ``report``s,
``compare`` two benchmark results."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medcommon import __version__
from medcommon.cli.app import App
from medcommon.fs import write_text_atomic


def _inspect(paths: Sequence[Path], as_json: bool) -> int:
    from medcommon.io import read_image

    for path in paths:
        info = {"path": str(path), **read_image(path).summary()}
        if as_json:
            print(json.dumps(info))
        else:
            print(path)
            for key, value in info.items():
                if key != "path" and value not in ("", None):
                    if isinstance(value, (list, tuple)):  # unknown spacing entries are None
                        value = (
                            "(" + ", ".join("unknown" if v is None else str(v) for v in value) + ")"
                        )
                    print(f"  {key:28s} {value}")
    return 0


def _report(dirs: Sequence[Path], out: Path | None) -> int:
    from medcommon.report import combine_reports

    text = combine_reports(dirs, relative_to=out.parent if out is not None else None)
    if out is not None:
        write_text_atomic(out, text)
    else:
        sys.stdout.write(text)
    return 0


DIFFER = 3
"""``compare``'s exit code when the results differ (1 and 2 keep their contract meanings)."""


def _compare(a: Path, b: Path, tolerance: float, show: int) -> int:
    from medcommon.report import load_results
    from medcommon.report.compare import compare, row_count, summary_lines

    first, second = load_results(a), load_results(b)
    res = compare(first, second)
    print("\n".join(summary_lines(res, row_count(first), show)))
    return DIFFER if res["max_abs"] > tolerance or res["missing"] or res["claims"] else 0


app = App(
    "medcommon",
    "Shared tools: inspect images, combine and compare benchmark results.",
    __version__,
)


def _inspect_args(p) -> None:
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per file")


def _report_args(p) -> None:
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")


def _compare_args(p) -> None:
    p.add_argument("a", type=Path, help="a results.json (or the folder holding it)")
    p.add_argument("b", type=Path, help="the results.json to compare it with")
    p.add_argument(
        "--tolerance", type=float, default=0.0, help="largest allowed difference (default 0)"
    )
    p.add_argument("--show", type=int, default=10, help="differences to list (default 10)")


@app.command(
    "compare",
    "compare two results.json metric by metric (exit 3 if they differ beyond --tolerance)",
    args=_compare_args,
)
def cmd_compare(args) -> int:
    return _compare(args.a, args.b, args.tolerance, args.show)


@app.command("inspect", "print what the loader sees in an image file", args=_inspect_args)
def cmd_inspect(args) -> int:
    return _inspect(args.paths, args.json)


@app.command(
    "report", "combine benchmark folders (results.json) into one markdown report", args=_report_args
)
def cmd_report(args) -> int:
    return _report(args.dirs, args.out)


main, entry, build_parser = app.main, app.entry, app.build_parser
