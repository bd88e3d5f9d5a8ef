"""Evaluation and prediction: grade probabilities, metrics, ``evaluate`` and ``predict``.

The decision threshold is 0.5 on P(HGG): the class-weighted loss already balances
the two grades, so no threshold is tuned on test data.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading.data import Case, case_files, discover, load_cases, patient_of
from brats_grading.model import GradingNet
from medcommon import metrics as M
from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic
from medcommon.models import from_pretrained

THRESHOLD = 0.5


@torch.no_grad()
def predict_proba(model: GradingNet, arrays: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """P(HGG) for each of ``arrays`` ``(N, 4, D, H, W)``, from the fused prediction."""
    model.eval()
    device = next(model.parameters()).device
    out = []
    for i in range(0, len(arrays), batch_size):
        x = torch.from_numpy(np.asarray(arrays[i : i + batch_size], dtype=np.float32)).to(device)
        out.append(torch.softmax(model(x)["logits"], dim=1)[:, 1].cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0)


def grading_metrics(y: Sequence[int], p_hgg: Sequence[float]) -> dict[str, float]:
    """accuracy, auc, sensitivity (HGG recall), specificity (LGG recall), f1 at ``THRESHOLD``."""
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p_hgg, dtype=np.float64)
    pred = (p >= THRESHOLD).astype(np.int64)
    return {
        "accuracy": M.accuracy(y, pred),
        "auc": M.auc(y, p),
        "sensitivity": M.sensitivity(y, pred),
        "specificity": M.specificity(y, pred),
        "f1": M.f1(y, pred),
    }


def load_run(run: Path) -> tuple[GradingNet, dict[str, Any], dict[str, Any]]:
    """The trained model, the saved config dict and the split of a run folder."""
    run = Path(run)
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    for name in ("config.json", "split.json"):
        if not (run / name).is_file():
            raise InputError(run, f"not a finished run folder (no {name})")
    if not (run / "model").is_dir():
        raise InputError(run, "not a finished run folder (no model/)")
    model = from_pretrained(GradingNet, run / "model").eval()
    config = read_json(run / "config.json")
    split = read_json(run / "split.json")
    return model, config, split


def evaluate_run(run: Path, data: Path, split_name: str = "test", quiet: bool = True) -> dict:
    """Metrics of a run's model on the named split of ``data``; writes ``RUN/eval-<split>.json``."""
    model, config, split = load_run(run)
    if split_name not in ("train", "test", "all"):
        raise InputError("--split", f"unknown split {split_name!r}; use train, test or all")
    _, cases = discover(data)
    by_name = {c.name: c for c in cases}
    names = [c.name for c in cases] if split_name == "all" else split[split_name]
    missing = [n for n in names if n not in by_name]
    if missing:
        raise InputError(
            data, f"case {missing[0]} of the run's {split_name} split is not in this folder"
        )
    chosen = [by_name[n] for n in names]
    arrays = load_cases(chosen, config["shape"], quiet=quiet)
    probs = predict_proba(model, arrays)
    result = {
        "split": split_name,
        "method": config.get("method"),
        "n": len(chosen),
        "metrics": grading_metrics([c.label for c in chosen], probs),
        "cases": {c.name: float(p) for c, p in zip(chosen, probs)},
    }
    result.update(result["metrics"])
    write_json_atomic(Path(run) / f"eval-{split_name}.json", result)
    return result


def predict_cases(run: Path, case_dirs: Sequence[Path], quiet: bool = True) -> dict[str, float]:
    """P(HGG) of each case folder (``<case>/<case>_{t1,t1ce,t2,flair}.nii.gz``)."""
    model, config, _ = load_run(run)
    cases = []
    for folder in case_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "case folder not found")
        cases.append(Case(folder.name, patient_of(folder.name, "2019"), None, case_files(folder)))
    arrays = load_cases(cases, config["shape"], quiet=quiet)
    probs = predict_proba(model, arrays)
    return {c.name: float(p) for c, p in zip(cases, probs)}
