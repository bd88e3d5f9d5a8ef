"""medcommon benchmark: loop overhead and reader throughput, as ratios measured in one run.

- Loop: time per optimizer step of ``medcommon.train.Trainer`` against a bare
  PyTorch loop (DataLoader, forward, backward, step) on the same model, data and
  number of steps. Runs alternate in pairs (bare, ours); we report the median of
  the per-pair ratios, for process CPU time (insensitive to other jobs on a
  shared machine) and for wall time.
- Readers: files per second for DICOM (pydicom's shipped CT_small) and NIfTI
  volumes, read cold with ``read_image`` and through ``ArrayCache``.

Usage: ``python bench_core.py --out DIR [--steps 150 --repeats 3]``; writes
DIR/results.json and DIR/report.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from medcommon import __version__
from medcommon.data import ArrayCache
from medcommon.io import read_image, write_image
from medcommon.report import make_results, write_report, write_results
from medcommon.train import TrainConfig, Trainer, seed_everything


def make_model() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(32, 2),
    )


def make_data(n: int = 1024) -> TensorDataset:
    gen = torch.Generator().manual_seed(0)
    return TensorDataset(
        torch.randn(n, 1, 48, 48, generator=gen), torch.randint(0, 2, (n,), generator=gen)
    )


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def bare_loop(steps: int, batch: int) -> tuple[float, float]:
    seed_everything(0)
    data, model = make_data(), make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loader = DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        generator=torch.Generator().manual_seed(0),
    )
    done, (w0, c0) = 0, _clocks()
    while done < steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    w1, c1 = _clocks()
    return (w1 - w0) / steps, (c1 - c0) / steps


def our_loop(steps: int, batch: int, run_dir: Path) -> tuple[float, float]:
    seed_everything(0)
    data, model = make_data(), make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(m, b, ctx):
        x, y = b
        return torch.nn.functional.cross_entropy(m(x), y)

    cfg = TrainConfig(max_steps=steps, batch_size=batch, log_every=25)
    trainer = Trainer(model, opt, data, step, config=cfg, run_dir=run_dir, device="cpu", quiet=True)
    w0, c0 = _clocks()
    trainer.fit()
    w1, c1 = _clocks()
    return (w1 - w0) / steps, (c1 - c0) / steps


def reader_throughput(tmp: Path, n_files: int = 40) -> dict[str, float]:
    import pydicom.data  # the file ships inside the pydicom wheel: never downloaded

    dicom = Path(pydicom.data.__file__).parent / "test_files" / "CT_small.dcm"
    rng = np.random.default_rng(0)
    vols = []
    for i in range(n_files // 4):
        path = tmp / f"vol{i}.nii.gz"
        write_image(path, rng.normal(size=(32, 96, 96)).astype(np.float32), (2.0, 1.0, 1.0))
        vols.append(path)
    out = {}
    for name, paths in (("dicom", [dicom] * n_files), ("nifti", vols * 4)):
        t0 = time.perf_counter()
        for p in paths:
            read_image(p)
        out[f"{name}_files_per_s"] = len(paths) / (time.perf_counter() - t0)
        cache = ArrayCache(lambda p: read_image(p).array, max_items=64)
        for p in set(paths):
            cache(p)  # warm
        t0 = time.perf_counter()
        for p in paths:
            cache(p)
        out[f"{name}_cached_files_per_s"] = len(paths) / (time.perf_counter() - t0)
        disk = ArrayCache(
            lambda p: read_image(p).array, max_items=0, cache_dir=tmp / f"cache-{name}"
        )
        for p in set(paths):
            disk(p)
        t0 = time.perf_counter()
        for p in paths:
            disk(p)
        out[f"{name}_disk_cached_files_per_s"] = len(paths) / (time.perf_counter() - t0)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # one core each: less sensitive to the other core's load
    rows, cpu_ratios, wall_ratios = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(20, args.batch)  # warm-up of both (allocator, kernels, Accelerate state)
        our_loop(20, args.batch, Path(tmp) / "warmup")
        for r in range(args.repeats):
            bare_wall, bare_cpu = bare_loop(args.steps, args.batch)
            our_wall, our_cpu = our_loop(args.steps, args.batch, Path(tmp) / f"run{r}")
            cpu_ratios.append(our_cpu / bare_cpu)
            wall_ratios.append(our_wall / bare_wall)
            for method, wall, cpu in (
                ("bare-pytorch", bare_wall, bare_cpu),
                ("medcommon-trainer", our_wall, our_cpu),
            ):
                metrics = {"ms_per_step_cpu": 1e3 * cpu, "ms_per_step_wall": 1e3 * wall}
                rows.append({"method": method, "seed": r, "metrics": metrics})
        readers = reader_throughput(Path(tmp))
    ratio = statistics.median(cpu_ratios)
    extra = {
        "loop_cpu_time_ratio_ours_vs_bare": ratio,
        "loop_wall_time_ratio_ours_vs_bare": statistics.median(wall_ratios),
        **readers,
    }
    for k, v in readers.items():
        rows.append({"method": "readers", "seed": 0, "metrics": {k: v}})
    results = make_results(
        "medcommon", __version__, "small", list(range(args.repeats)), rows, extra=extra
    )
    write_results(args.out, results)
    facts = "\n".join(f"| {k} | {v:.3g} |" for k, v in extra.items())
    write_report(
        args.out,
        results,
        "medcommon: loop overhead and reader throughput",
        sections=[
            (
                "Measured in this run",
                f"{args.steps} steps, batch {args.batch}, 1 thread, {args.repeats} alternating "
                "(bare, ours) pairs; median of the per-pair ratios.\n\n"
                f"| quantity | value |\n|---|---|\n{facts}",
            )
        ],
    )
    print(
        f"loop CPU-time ratio (medcommon Trainer / bare PyTorch), median of {args.repeats} pairs: {ratio:.3f}"
    )
    print(f"  per-pair CPU ratios: {', '.join(f'{x:.3f}' for x in cpu_ratios)}")
    print(f"  per-pair wall ratios: {', '.join(f'{x:.3f}' for x in wall_ratios)}")
    for k, v in readers.items():
        print(f"{k}: {v:.1f}")


if __name__ == "__main__":
    main()
