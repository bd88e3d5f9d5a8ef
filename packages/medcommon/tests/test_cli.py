"""The exit-code contract and the medcommon console script."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from medai_testkit import pydicom_test_file as shipped_dicom
from medcommon import __version__
from medcommon.cli import run_main
from medcommon.cli.main import main
from medcommon.errors import InputError
from medcommon.report import make_results, write_results


def test_input_error_is_one_line_and_exit_2(capsys):
    def bad(argv):
        raise InputError("data/train.csv:14", "label 'maybe' is not one of 0, 1")

    assert run_main(bad) == 2
    err = capsys.readouterr().err
    assert err == "error: data/train.csv:14: label 'maybe' is not one of 0, 1\n"


def test_internal_error_is_exit_1_with_traceback(capsys):
    def broken(argv):
        raise RuntimeError("boom")

    assert run_main(broken) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "RuntimeError: boom" in err


def test_usage_error_is_one_line_and_exit_2():
    proc = subprocess.run(
        [sys.executable, "-c", "from medcommon.cli.main import entry; entry()", "frobnicate"],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: medcommon:")
    assert "Traceback" not in proc.stderr


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"medcommon {__version__}"


def test_inspect_reports_what_the_loader_sees(capsys):
    path = shipped_dicom("CT_small.dcm")
    assert run_main(main, ["inspect", "--json", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["shape"] == [128, 128]
    assert info["photometric_interpretation"] == "MONOCHROME2"
    assert info["frames"] == 1 and info["modality"] == "CT"
    assert info["min"] < -800


def test_inspect_missing_file_is_exit_2(capsys, tmp_path):
    assert run_main(main, ["inspect", str(tmp_path / "nope.dcm")]) == 2
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.dcm'}: file not found\n"


def test_report_combines_benchmark_folders(tmp_path, capsys):
    for pkg in ("pkg-a", "pkg-b"):
        rows = [
            {"method": "erm", "seed": s, "metrics": {"auc": 0.5 + s / 10}, "train_seconds": 1.0}
            for s in (0, 1)
        ]
        write_results(
            tmp_path / pkg, make_results(pkg, "0.1.0", "tiny", [0, 1], rows, extra={"ratio": 1.02})
        )
    out = tmp_path / "combined.md"
    assert (
        run_main(
            main, ["report", str(tmp_path / "pkg-a"), str(tmp_path / "pkg-b"), "--out", str(out)]
        )
        == 0
    )
    text = out.read_text()
    assert "## pkg-a 0.1.0" in text and "## pkg-b 0.1.0" in text
    assert "| erm | 0.550 ± 0.071 |" in text
    assert "| ratio | 1.02 |" in text
    assert run_main(main, ["report", str(tmp_path)]) == 2


def test_require_fresh_out(tmp_path):
    from medcommon.run import require_fresh_out

    require_fresh_out(tmp_path / "new")  # absent: fine
    (tmp_path / "empty").mkdir()
    require_fresh_out(tmp_path / "empty")  # empty: fine
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "log.jsonl").write_text("{}\n")
    with pytest.raises(
        InputError, match=r"used: run folder already exists and is not empty \(pass --resume"
    ):
        require_fresh_out(tmp_path / "used")


def test_read_json_names_the_file(tmp_path):
    from medcommon.fs import read_json

    with pytest.raises(InputError, match="split.json: split not found"):
        read_json(tmp_path / "split.json", "split")
    bad = tmp_path / "config.json"
    bad.write_text("{oops")
    with pytest.raises(InputError, match="config.json: invalid JSON"):
        read_json(bad)
    bad.write_text('{"a": 1}')
    assert read_json(bad) == {"a": 1}
