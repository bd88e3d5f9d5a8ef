"""Peak memory per rank of loading a Llava under ``accelerate launch`` with FSDP, with and
without ``fsdp_cpu_ram_efficient_loading`` (issue #24, item 3).

From the repository root::

    python packages/unlearn_bench/benchmarks/fsdp-loading/probe.py --out DIR [--hidden 1024]

Writes ``DIR/results.json``. One Llava (the package's tiny one widened to ``--hidden``, 8
decoder layers, so its weights dominate each process's memory) is saved once in float16,
as llava-hf ships LLaVA-1.5, and loaded in float32 as ``unlearn`` loads it (transformers
then converts every tensor into process memory; a float32 file would stay memory-mapped
and shared, so the resident set would not show it).
Then 2 processes (torchrun, gloo) each call ``unlearn_bench.model.load_llava`` with the
environment ``accelerate launch`` exports for the shipped FSDP config, once with the flag
true (only rank 0 reads the weights) and once false. Each rank reports the bytes of
parameter data it holds and its peak resident set (``ru_maxrss``). One thread per process.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from medcommon.fs import write_json_atomic
from medcommon.provenance import provenance


def worker(model_dir: str, out: str) -> None:
    import torch.distributed as dist

    from unlearn_bench.model import load_llava

    model, _ = load_llava(model_dir)
    if not dist.is_initialized():
        dist.init_process_group("gloo")
    rank = dist.get_rank()
    held = sum(p.numel() * p.element_size() for p in model.parameters() if not p.is_meta)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux
    Path(out, f"rank{rank}.json").write_text(
        json.dumps({"held_mb": held / 2**20, "peak_rss_mb": rss})
    )
    dist.barrier()
    dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--hidden", type=int, default=1024)
    args = p.parse_args(argv)
    import torch

    from medcommon.train import seed_everything
    from unlearn_bench.config import TinyModelConfig
    from unlearn_bench.model import build_tiny, save_llava

    h = args.hidden
    cfg = TinyModelConfig(hidden_size=h, intermediate_size=4 * h, num_layers=8, num_heads=8)
    seed_everything(0)
    model, processor = build_tiny(cfg, ["a tiny corpus for the tokenizer"] * 4)
    n_params = sum(p.numel() for p in model.parameters())
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        save_llava(model.to(torch.float16), processor, Path(tmp) / "model")
        del model
        for flag in ("true", "false"):
            out = Path(tmp) / flag
            out.mkdir()
            env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": "",
                   "ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": flag}  # fmt: skip
            cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                   "--master_addr", "127.0.0.1", "--master_port", "29561" if flag == "true" else "29562",
                   __file__, "--worker", str(Path(tmp) / "model"), str(out)]  # fmt: skip
            proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
            if proc.returncode != 0:
                raise SystemExit(proc.stderr[-3000:])
            for r in (0, 1):
                row = json.loads((out / f"rank{r}.json").read_text())
                rows.append({"cpu_ram_efficient_loading": flag == "true", "rank": r, **row})
    res = {"n_params": n_params, "weights_mb": n_params * 4 / 2**20, "rows": rows,
           "torch": torch.__version__, "provenance": provenance()}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "results.json", res)
    print(f"{n_params / 1e6:.1f} M parameters, {res['weights_mb']:.0f} MB in float32")
    print("| cpu_ram_efficient_loading | rank | parameter data held (MB) | peak RSS (MB) |")
    print("|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['cpu_ram_efficient_loading']} | {r['rank']} | {r['held_mb']:.0f} | {r['peak_rss_mb']:.0f} |"
        )
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:4])
    else:
        sys.exit(main())
