"""Prediction and the bias-aware metrics of Luo et al. (2022).

AUC and AP overall; AUC on bias-aligned samples (label == bias), on bias-conflicting
samples, and their mean (balanced AUC); accuracy per ``(label, bias)`` group and the
worst-group accuracy. Scores are ``p(y=1|x)`` from plain logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from medcommon import metrics as M
from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.models import from_pretrained
from medcommon.run import load_run
from pbbl_cxr.data import DataOptions, XrayDataset, load_split
from pbbl_cxr.models import Classifier


@torch.no_grad()
def predict_probs(
    model: torch.nn.Module, dataset: XrayDataset, batch_size: int = 256, device: str = "cpu"
) -> torch.Tensor:
    """Softmax probabilities ``(N, C)`` of ``model`` on ``dataset`` (model put in eval mode)."""
    was_training = model.training
    model.eval()
    out = []
    for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
        out.append(torch.softmax(model(batch["image"].to(device)).float(), dim=1).cpu())
    model.train(was_training)
    return torch.cat(out)


def classification_metrics(
    labels: torch.Tensor, probs: torch.Tensor, bias: torch.Tensor | None = None
) -> dict[str, float]:
    """``auc, ap, accuracy`` and, when every sample has a bias label, ``auc_aligned,
    auc_conflicting, auc_balanced``, ``acc_y{y}_b{b}`` per group, ``acc_worst_group``."""
    y = labels.cpu().numpy().astype(np.int64)
    p = probs.cpu().numpy().astype(np.float64)
    pred = p.argmax(1)
    out: dict[str, float] = {"accuracy": M.accuracy(y, pred)}
    if p.shape[1] == 2:
        out["auc"] = M.auc(y, p[:, 1])
        out["ap"] = M.ap(y, p[:, 1])
    if bias is not None and bool((bias >= 0).all()):
        b = bias.cpu().numpy().astype(np.int64)
        if p.shape[1] == 2:
            aucs = M.bias_aucs(y, p[:, 1], b)
            out.update({k: v for k, v in aucs.items() if k != "auc"})
        groups = [f"y{a}_b{c}" for a, c in zip(y, b)]
        accs = M.group_accuracy(y, pred, groups)
        out.update({f"acc_{k}": v for k, v in accs.items() if k not in ("worst", "mean")})
        out["acc_worst_group"] = accs["worst"]
        out["acc_mean_group"] = accs["mean"]
    return out


def evaluate_model(
    model: torch.nn.Module, dataset: XrayDataset, device: str = "cpu", batch_size: int = 256
) -> dict[str, float]:
    """All metrics of ``model`` on ``dataset``."""
    probs = predict_probs(model, dataset, batch_size=batch_size, device=device)
    return classification_metrics(dataset.labels, probs, dataset.bias)


def load_run_model(run_dir: str | Path) -> Classifier:
    """The model a ``train`` run of pbbl-cxr kept (``RUN/model/``)."""
    from pbbl_cxr import PACKAGE

    run = load_run(run_dir, package=PACKAGE)
    if not run.model_dir.is_dir():
        raise InputError(run.path, "not a finished run folder (no model/)")
    return from_pretrained(Classifier, run.model_dir)


def evaluate_run(
    run_dir: str | Path,
    data_dir: str | Path,
    split: str,
    opts: DataOptions,
    device: str = "cpu",
    quiet: bool = True,
) -> dict[str, float]:
    """Score a run's model on a split and write ``RUN/eval-<split>.json``."""
    model = load_run_model(run_dir).to(device)
    opts = DataOptions(
        **{
            **vars(opts),
            "image_size": model.config.image_size,
            "num_classes": model.config.num_classes,
        }
    )
    dataset = load_split(data_dir, split, opts, quiet=quiet)
    result = evaluate_model(model, dataset, device=device)
    write_json_atomic(
        Path(run_dir) / f"eval-{split}.json", {"split": split, "n": len(dataset), **result}
    )
    return result
