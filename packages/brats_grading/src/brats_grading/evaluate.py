"""Evaluation and prediction: grade probabilities, metrics, ``evaluate`` and ``predict``.

Run folders are read with :func:`medcommon.run.load_run`.

The decision threshold is 0.5 on P(HGG): the class-weighted loss already balances
the two grades, so no threshold is tuned on test data.
"""

from __future__ import annotations

import csv
import io
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading import PACKAGE
from brats_grading.config import RunConfig
from brats_grading.data import (
    Case,
    NameMapping,
    case_files,
    discover,
    find_name_mapping,
    load_cases,
    name_patient,
    training_overlap,
)
from brats_grading.model import GradingNet
from medcommon import metrics as M
from medcommon.errors import InputError
from medcommon.fs import read_json, write_json_atomic, write_text_atomic
from medcommon.models import from_pretrained
from medcommon.run import Run, load_run

THRESHOLD = 0.5


def predict_proba(model: GradingNet, arrays: np.ndarray, batch_size: int = 8) -> np.ndarray:
    """P(HGG) for each of ``arrays`` ``(N, 4, D, H, W)``, from the fused prediction."""
    return predict_with_branches(model, arrays, batch_size)[0]


@torch.no_grad()
def predict_with_branches(
    model: GradingNet, arrays: np.ndarray, batch_size: int = 8
) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """P(HGG) ``(N,)`` from the fused prediction and from each branch, in one pass.

    The benchmark needs both; one forward pass per batch gives both, instead of
    running the test set through the model twice.
    """
    model.eval()
    device = next(model.parameters()).device
    fused: list[np.ndarray] = []
    branches: dict[str, list[np.ndarray]] = {}
    for i in range(0, len(arrays), batch_size):
        x = torch.from_numpy(np.asarray(arrays[i : i + batch_size], dtype=np.float32)).to(device)
        out = model(x)
        fused.append(torch.softmax(out["logits"], dim=1)[:, 1].cpu().numpy())
        for name, z in out["branch_logits"].items():
            branches.setdefault(name, []).append(torch.softmax(z, dim=1)[:, 1].cpu().numpy())
    if not fused:
        return np.zeros(0), {n: np.zeros(0) for n in model.branch_names}
    return np.concatenate(fused), {n: np.concatenate(p) for n, p in branches.items()}


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same ``n`` cases, ``(n, p)`` and ``(n, q)``.

    ``||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F)`` with column-centred
    ``X_c``, ``Y_c`` (Kornblith et al. 2019, eq. 5): 1 for representations equal up to
    a rotation and an isotropic scale, near 0 for unrelated ones. Issue #21 logs it
    between a secondary branch's and the primary's pooled features, the similarity
    feature alignment optimises.
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0] or x.shape[0] < 2:
        raise ValueError(f"need (n, p) and (n, q) with the same n >= 2, got {x.shape}, {y.shape}")
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def grading_metrics(y: Sequence[int], p_hgg: Sequence[float]) -> dict[str, float]:
    """accuracy, auc, sensitivity (HGG recall), specificity (LGG recall), f1 at ``THRESHOLD``,
    and the Brier score (mean squared error of P(HGG); lower is better).

    The Brier score is the one continuous function of every probability: on a few test
    cases, AUC and the thresholded rates do not move when the probabilities change in
    their last digits, the Brier score does (the reproduction checks compare it).
    """
    y = np.asarray(y, dtype=np.int64)
    p = np.asarray(p_hgg, dtype=np.float64)
    pred = (p >= THRESHOLD).astype(np.int64)
    return {
        "accuracy": M.accuracy(y, pred),
        "auc": M.auc(y, p),
        "sensitivity": M.sensitivity(y, pred),
        "specificity": M.specificity(y, pred),
        "f1": M.f1(y, pred),
        "brier": float(np.mean((p - y) ** 2)),
    }


@dataclass(frozen=True)
class TrainedRun:
    """A finished run folder: its model (eval mode), run record, config and split."""

    model: GradingNet
    run: Run
    config: RunConfig
    split: dict[str, Any]


def load_trained(run: Path, device: str = "cpu") -> TrainedRun:
    """Read a finished run folder and its model onto ``device``."""
    loaded = load_run(run, package=PACKAGE)
    for path in (loaded.path / "split.json", loaded.model_dir):
        if not path.exists():
            raise InputError(loaded.path, f"not a finished run folder (no {path.name})")
    model = from_pretrained(GradingNet, loaded.model_dir).to(device).eval()
    split = read_json(loaded.path / "split.json", "split.json")
    return TrainedRun(model, loaded, loaded.config_as(RunConfig), split)


def evaluate_run(
    run: Path, data: Path, split_name: str = "test", quiet: bool = True, device: str = "cpu"
) -> dict:
    """Metrics of a run's model on the named split of ``data``; writes ``RUN/eval-<split>.json``.

    The run's split names may be another release's IDs (a run trained on 2018 data,
    evaluated on the 2020 folder): ``data``'s ``name_mapping.csv`` maps them to its
    own cases. Cases whose patient the run trained on under another name (``--split
    test``/``all`` on a newer release) are named in a warning on stderr and in the
    result's ``trained_under_another_name`` (``{case: training name}``).
    """
    trained = load_trained(run, device)
    if split_name not in ("train", "test", "all"):
        raise InputError("--split", f"unknown split {split_name!r}; use train, test or all")
    _, cases = discover(data)
    mapping = find_name_mapping(data)
    by_name = {c.name: c for c in cases}
    if split_name == "all":
        chosen = list(cases)
    else:  # a run trained on another release names its cases by that release's IDs
        chosen = []
        for n in trained.split[split_name]:
            here = mapping.current.get(n, n) if mapping else n
            if here not in by_name:
                raise InputError(
                    data, f"case {n} of the run's {split_name} split is not in this folder"
                )
            chosen.append(by_name[here])
    overlap = {}
    if split_name != "train":
        overlap = training_overlap(trained.split.get("train", []), chosen, mapping)
        warn_overlap(overlap)
    arrays = load_cases(chosen, trained.config.shape, quiet=quiet)
    probs = predict_proba(trained.model, arrays)
    result = {
        "split": split_name,
        "method": trained.run.info.method,
        "n": len(chosen),
        "metrics": grading_metrics([c.label for c in chosen], probs),
        "cases": {c.name: float(p) for c, p in zip(chosen, probs)},
        "trained_under_another_name": overlap,
    }
    result.update(result["metrics"])
    write_json_atomic(Path(run) / f"eval-{split_name}.json", result)
    return result


def predict_cases(
    run: Path, case_dirs: Sequence[Path], quiet: bool = True, device: str = "cpu"
) -> dict[str, float]:
    """P(HGG) of each case folder (``<case>/<case>_{t1,t1ce,t2,flair}.nii.gz``).

    Warns (stderr) about case folders whose patient is in the run's training split,
    under this name or another release's (mapped by the ``name_mapping.csv`` of the
    training folder the case folder sits in).
    """
    trained = load_trained(run, device)
    cases: list[Case] = []
    overlap: dict[str, str] = {}
    for folder in case_dirs:
        folder = Path(folder)
        if not folder.is_dir():
            raise InputError(folder, "case folder not found")
        mapping = _mapping_near(folder)
        pid = (mapping.patient.get(folder.name) if mapping else None) or name_patient(folder.name)
        cases.append(Case(folder.name, pid, None, case_files(folder)))
        overlap.update(
            training_overlap(trained.split.get("train", []), cases[-1:], mapping, same_name=True)
        )
    warn_overlap(overlap)
    arrays = load_cases(cases, trained.config.shape, quiet=quiet)
    probs = predict_proba(trained.model, arrays)
    return {c.name: float(p) for c, p in zip(cases, probs)}


def _mapping_near(case_dir: Path) -> NameMapping | None:
    """The ``name_mapping.csv`` of the training folder a case folder sits in (2020: its
    parent; 2019: its grandparent, above ``HGG/``/``LGG/``), or None."""
    for folder in (case_dir.parent, case_dir.parent.parent):
        mapping = find_name_mapping(folder)
        if mapping is not None:
            return mapping
    return None


def warn_overlap(overlap: Mapping[str, str]) -> None:
    """One ``warning:`` line on stderr naming the cases the run trained on (if any)."""
    if not overlap:
        return
    pairs = ", ".join(f"{c} (= {t})" if c != t else c for c, t in sorted(overlap.items()))
    print(
        f"warning: {len(overlap)} case(s) are patients of this run's training split: {pairs}",
        file=sys.stderr,
    )


def grade(p_hgg: float) -> str:
    """``HGG`` at or above :data:`THRESHOLD`, else ``LGG``."""
    return "HGG" if p_hgg >= THRESHOLD else "LGG"


def predictions_csv(probs: Mapping[str, float]) -> str:
    """The CSV text ``case,p_hgg,grade`` (one row per case, in the given order)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "p_hgg", "grade"])
    for name, p in probs.items():
        writer.writerow([name, f"{p:.6f}", grade(p)])
    return buf.getvalue()


def write_predictions(out: Path, probs: Mapping[str, float]) -> Path:
    """Write :func:`predictions_csv` to ``out`` atomically (never a half-written file)."""
    out = Path(out)
    if out.is_dir():
        raise InputError(out, "is a folder; --out needs a file name (e.g. predictions.csv)")
    write_text_atomic(out, predictions_csv(probs))
    return out
