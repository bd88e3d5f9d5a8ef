"""medcommon benchmark: loop overhead and reader throughput, as ratios measured in one run.

- Loop: time per optimizer step of ``medcommon.train.Trainer`` against a bare
  PyTorch loop (DataLoader, forward, backward, step) on the same model, data and
  number of steps. Runs alternate (bare, ours, bare, ours, ...) and the ratio of
  medians is reported, so a slower or busier machine shifts both alike.
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
from medcommon.testing import pydicom_test_file
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


def bare_loop(steps: int, batch: int) -> float:
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
    done, t0 = 0, time.perf_counter()
    while done < steps:
        for x, y in loader:
            loss = torch.nn.functional.cross_entropy(model(x), y)
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            done += 1
            if done == steps:
                break
    return (time.perf_counter() - t0) / steps


def our_loop(steps: int, batch: int, run_dir: Path) -> float:
    seed_everything(0)
    data, model = make_data(), make_model()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)

    def step(m, b, ctx):
        x, y = b
        return torch.nn.functional.cross_entropy(m(x), y)

    cfg = TrainConfig(max_steps=steps, batch_size=batch, log_every=25)
    trainer = Trainer(model, opt, data, step, config=cfg, run_dir=run_dir, device="cpu", quiet=True)
    t0 = time.perf_counter()
    trainer.fit()
    return (time.perf_counter() - t0) / steps


def reader_throughput(tmp: Path, n_files: int = 40) -> dict[str, float]:
    dicom = pydicom_test_file("CT_small.dcm")
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
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(1)  # one core each: less sensitive to the other core's load
    rows, bare, ours = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(10, args.batch)  # warm-up (allocator, kernels)
        for r in range(args.repeats):
            bare.append(bare_loop(args.steps, args.batch))
            ours.append(our_loop(args.steps, args.batch, Path(tmp) / f"run{r}"))
            rows.append(
                {"method": "bare-pytorch", "seed": r, "metrics": {"ms_per_step": 1e3 * bare[-1]}}
            )
            rows.append(
                {
                    "method": "medcommon-trainer",
                    "seed": r,
                    "metrics": {"ms_per_step": 1e3 * ours[-1]},
                }
            )
        readers = reader_throughput(Path(tmp))
    ratio = statistics.median(ours) / statistics.median(bare)
    extra = {"loop_time_ratio_ours_vs_bare": ratio, **readers}
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
                f"{args.steps} steps, batch {args.batch}, 1 thread, {args.repeats} alternating repeats; "
                f"ratio of medians.\n\n| quantity | value |\n|---|---|\n{facts}",
            )
        ],
    )
    print(f"loop time ratio (medcommon Trainer / bare PyTorch): {ratio:.3f}")
    for k, v in readers.items():
        print(f"{k}: {v:.1f}")


if __name__ == "__main__":
    main()
