"""Diagnostic: early fusion of (t1ce, flair) only, paired with a committed benchmark's runs.

Usage (from the repository root; about 1 min on one core):

    python packages/brats_grading/benchmarks/early_fusion_subset.py \
        packages/brats_grading/benchmarks/small                       # seed-1234 data
    python packages/brats_grading/benchmarks/early_fusion_subset.py \
        packages/brats_grading/benchmarks/small-heldout-seed7 DATA    # DATA = synth --seed 7
        [--threads N]

It trains `early-fusion` with `model.modalities = (t1ce, flair)` at the benchmark's
preset (`configs/<preset>.yaml`), on its splits and seeds, and prints the paired AUC differences against the 4-channel early
fusion, single-t1ce and cmg rows of that benchmark's `results.json`.

The pairing is exact only on the benchmark's CPU thread count: the process pins
`--threads` (default: the benchmark's recorded `provenance.threads`; 1 for the
committed `small` runs, which predate that record and ran with `OMP_NUM_THREADS=1`)
with `medcommon.train.fix_threads`, whatever `OMP_NUM_THREADS` says.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from brats_grading.config import synth_preset
from brats_grading.data import discover, load_cases, make_split
from brats_grading.evaluate import grading_metrics, predict_proba
from brats_grading.synth import write_synthetic
from brats_grading.train import fit_method, method_config
from medcommon.config import replace_nested
from medcommon.fs import read_json
from medcommon.train import fix_threads

UNRECORDED_THREADS = 1
"""Threads of a benchmark whose results.json has no ``provenance.threads`` (the
committed ``small`` runs: ``OMP_NUM_THREADS=1``, README)."""


def main(bench: Path, data: Path | None, threads: int | None = None) -> None:
    results = read_json(bench / "results.json")
    recorded = (results.get("provenance") or {}).get("threads") or UNRECORDED_THREADS
    fix_threads(recorded if threads is None else threads)
    folds, preset = results["extra"]["folds"], results["preset"]
    with tempfile.TemporaryDirectory() as tmp:
        if data is None:  # the benchmark's own synthetic set
            data = write_synthetic(Path(tmp) / "d", synth_preset(preset), "2019", seed=1234)
        _, cases = discover(data)
        method, base = method_config("early-fusion", preset)
        arrays = load_cases(cases, base.shape)
    labels = [c.label for c in cases]
    index = {c.name: i for i, c in enumerate(cases)}
    auc = {}
    for seed in results["seeds"]:
        for fold in range(folds):
            split = make_split(cases, folds, fold, base.split_seed)
            train = [index[n] for n in split["train"]]
            test = [index[n] for n in split["test"]]
            _, cfg = method_config(
                "early-fusion", preset, overrides=[f"folds={folds}", f"fold={fold}"]
            )
            cfg = replace_nested(cfg, model={"modalities": ("t1ce", "flair")})
            info = fit_method(
                method, cfg, arrays, labels, train, patients=[c.patient for c in cases], seed=seed
            )
            probs = predict_proba(info.model, arrays[test])
            auc[seed, fold] = grading_metrics([labels[i] for i in test], probs)["auc"]
    ref = {(r["method"], r["seed"], r["fold"]): r["metrics"]["auc"] for r in results["rows"]}
    runs = sorted(auc)
    print(f"early fusion (t1ce, flair): mean AUC {np.mean([auc[k] for k in runs]):.3f}")
    for other in ("early-fusion", "single-t1ce", "cmg"):
        d = np.array([auc[k] - ref[(other, *k)] for k in runs])
        print(
            f"  minus {other}: {d.mean():+.3f} ± {d.std(ddof=1):.3f}, higher in {int((d > 0).sum())}/{d.size}"
        )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench", type=Path, help="a benchmark folder holding results.json")
    parser.add_argument(
        "data", type=Path, nargs="?", default=None, help="its data (default: synthetic)"
    )
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads, pinned (default: the benchmark's recorded count)")  # fmt: skip
    args = parser.parse_args()
    main(args.bench, args.data, args.threads)
