"""Peak memory of NPO with the reference model held vs its log-probabilities computed once
(issue #24), measured in fresh processes on one small Llava.

From the repository root::

    python packages/unlearn_bench/benchmarks/reference-memory/probe.py --out DIR [--hidden 512]

Writes ``DIR/results.json``. One vanilla model (the package's tiny Llava widened to
``--hidden``, so its weights dominate the process's memory) is fine-tuned once. Then
``unlearn --method npo`` runs twice, each in a fresh process, with
``reference_logprobs=model`` and ``=once``. Each process's peak resident set is
``ru_maxrss`` of ``resource.getrusage(RUSAGE_CHILDREN)``. One thread, float32 on the CPU.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from medcommon.fs import write_json_atomic
from medcommon.provenance import provenance


def _run(args: list[str]) -> float:
    """Run one command in a fresh process; its peak RSS in MB."""
    code = (
        "import resource, subprocess, sys; "
        "rc = subprocess.run(sys.argv[1:]).returncode; "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(rc)"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                         env=env)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(out.stderr[-2000:])
    return int(out.stdout.strip().splitlines()[-1]) / 1024  # kB on Linux


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=512)
    args = p.parse_args(argv)
    cli = [sys.executable, "-m", "unlearn_bench.cli"]
    h = args.hidden
    model = [f"model.hidden_size={h}", f"model.intermediate_size={4 * h}", "model.num_layers=4",
             "model.num_heads=8", "model.vocab_size=500"]  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        subprocess.run([*cli, "generate", str(tmp / "data"), "--preset", "tiny"], check=True,
                       capture_output=True)  # fmt: skip
        ft = [*cli, "finetune", "--data", str(tmp / "data"), "--out", str(tmp / "vanilla"),
              "--quiet", "--device", "cpu", "--set", "epochs=1"]  # fmt: skip
        for m in model:
            ft += ["--set", m]
        subprocess.run(ft, check=True, capture_output=True)
        from safetensors import safe_open

        with safe_open(str(tmp / "vanilla" / "model" / "model.safetensors"), "pt") as f:
            n_params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())  # noqa: SIM118 (a safe_open handle)
        peaks = {}
        for mode in ("model", "once"):
            peaks[mode] = _run([*cli, "unlearn", "--model", str(tmp / "vanilla"), "--data",
                                str(tmp / "data"), "--out", str(tmp / f"npo-{mode}"), "--method",
                                "npo", "--quiet", "--device", "cpu", "--set",
                                f"reference_logprobs={mode}"])  # fmt: skip
    result = {
        "parameters": n_params,
        "weights_mb_float32": n_params * 4 / 2**20,
        "peak_rss_mb": peaks,
        "saved_mb": peaks["model"] - peaks["once"],
        "provenance": provenance(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
