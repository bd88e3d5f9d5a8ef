"""The ``medcommon`` console script: ``inspect`` an image, combine benchmark ``report``s."""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path

from medcommon import __version__
from medcommon.cli.args import make_parser, subparsers
from medcommon.cli.runner import run_main
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
                    print(f"  {key:28s} {value}")
    return 0


def _report(dirs: Sequence[Path], out: Path | None) -> int:
    from medcommon.report import combine_reports

    text = combine_reports(dirs)
    if out is not None:
        write_text_atomic(out, text)
    else:
        sys.stdout.write(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = make_parser(
        "medcommon", "Shared tools: inspect images, combine benchmark reports.", __version__
    )
    sub = subparsers(parser)
    p = sub.add_parser("inspect", help="print what the loader sees in an image file")
    p.add_argument("paths", type=Path, nargs="+")
    p.add_argument("--json", action="store_true", help="one JSON object per file")
    p = sub.add_parser(
        "report", help="combine benchmark folders (results.json) into one markdown report"
    )
    p.add_argument("dirs", type=Path, nargs="+")
    p.add_argument("--out", type=Path, default=None, help="write here instead of stdout")
    args = parser.parse_args(argv)
    if args.command == "inspect":
        return _inspect(args.paths, args.json)
    return _report(args.dirs, args.out)


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(run_main(main))
