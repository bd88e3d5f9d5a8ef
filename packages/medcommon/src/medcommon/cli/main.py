"""The ``medcommon`` console script: ``inspect`` an image, combine benchmark ``report``s."""

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


app = App("medcommon", "Shared tools: inspect images, combine benchmark reports.", __version__)


def _inspect_args(p) -> None:
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per file")


def _report_args(p) -> None:
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")


@app.command("inspect", "print what the loader sees in an image file", args=_inspect_args)
def cmd_inspect(args) -> int:
    return _inspect(args.paths, args.json)


@app.command(
    "report", "combine benchmark folders (results.json) into one markdown report", args=_report_args
)
def cmd_report(args) -> int:
    return _report(args.dirs, args.out)


main, entry, build_parser = app.main, app.entry, app.build_parser
