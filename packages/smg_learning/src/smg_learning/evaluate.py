"""Per-site Dice/HD95, the stage x site Dice matrix and its continual summaries.

Dice and HD95 are per case (a prostate volume: its slices stacked in z; a fundus
image) and averaged over the site's cases. HD95 is in pixels of the resized
grid; a case whose prediction is empty while its truth is not (HD95 = inf) is
given the image diagonal, so the mean stays finite.

With several nested structures (fundus disc and cup: label maps in {0..K}, structure
``k`` is ``label > k``) each is scored on its own; ``dice/<site>`` is their mean and
``dice/<structure>/<site>`` each one, and the summary adds a matrix per structure
(``by_structure``). One structure (prostate) gives exactly the one-structure numbers.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.metrics import continual_summary, dice, hd95
from medcommon.models import from_pretrained
from smg_learning.data import ContinualData, SiteSlices, load_continual
from smg_learning.run_io import read_run
from smg_learning.segmenter import Segmenter


@torch.no_grad()
def evaluate_site(
    model: Segmenter,
    part: SiteSlices,
    device: str | torch.device = "cpu",
    structures: tuple[str, ...] | list[str] = ("foreground",),
) -> dict[str, float]:
    """Mean per-case Dice and HD95 of ``model`` on one site's slices.

    Returns ``dice`` and ``hd95`` (the mean over structures) and, with more than one
    structure, ``dice/<structure>`` and ``hd95/<structure>``.
    """
    model.eval()
    pred = model.predict(part.images.to(device)).cpu().numpy().astype(np.int64)  # (N, S, S)
    truth = part.masks[:, 0].numpy()
    diag = math.hypot(*pred.shape[1:])
    out: dict[str, float] = {}
    for k, name in enumerate(structures):  # structure k: label > k
        dices, hds = [], []
        for c in range(len(part.cases)):
            idx = part.case_slices(c)
            p, t = pred[idx] > k, truth[idx] > k
            if p.shape[0] == 1:
                p, t = p[0], t[0]
            dices.append(dice(p, t))
            h = hd95(p, t)
            hds.append(diag if not math.isfinite(h) else h)
        out[f"dice/{name}"], out[f"hd95/{name}"] = float(np.mean(dices)), float(np.mean(hds))
    out["dice"] = float(np.mean([out[f"dice/{n}"] for n in structures]))
    out["hd95"] = float(np.mean([out[f"hd95/{n}"] for n in structures]))
    if len(structures) == 1:
        out = {"dice": out["dice"], "hd95": out["hd95"]}
    return out


def stage_metrics(
    model: Segmenter, data: ContinualData, split: str, device="cpu"
) -> dict[str, float]:
    """``dice/<site>`` and ``hd95/<site>`` for every Dice-matrix column (+ per structure)."""
    structures = tuple(getattr(data, "structures", ("foreground",)))
    out = {}
    for site in data.columns:
        m = evaluate_site(model, data.parts[split][site], device, structures)
        out[f"dice/{site}"] = m["dice"]
        out[f"hd95/{site}"] = m["hd95"]
        if len(structures) > 1:
            for n in structures:
                out[f"dice/{n}/{site}"] = m[f"dice/{n}"]
                out[f"hd95/{n}/{site}"] = m[f"hd95/{n}"]
    return out


def summarize(
    rows: list[dict[str, float]], data_sites: list[str], columns: list[str]
) -> dict[str, Any]:
    """Dice/HD95 matrices (stages x columns) and memorizability, generalizability, BWT, HD95.

    ``hd95`` is the mean HD95 over the training sites after the last stage (the
    memorizability counterpart); ``hd95_unseen`` over the held-out sites, averaged over stages.
    """
    dm = [[r[f"dice/{c}"] for c in columns] for r in rows]
    hm = [[r[f"hd95/{c}"] for c in columns] for r in rows]
    out: dict[str, Any] = {
        "stages": [f"site-{s}" for s in data_sites[: len(rows)]],
        "columns": list(columns),
        "dice_matrix": dm,
        "hd95_matrix": hm,
    }
    out.update(continual_summary(np.asarray(dm)))
    t = len(rows)
    out["hd95"] = float(np.mean(hm[-1][:t]))
    held = len(columns) - len(data_sites)
    out["hd95_unseen"] = (
        float(np.mean([row[len(data_sites) :] for row in hm])) if held else float("nan")
    )
    # per structure (rows with ``dice/<structure>/<column>`` keys): its own matrix + summary
    names = []
    for key in rows[0] if rows else ():
        parts = key.split("/")
        if len(parts) == 3 and parts[0] == "dice" and parts[2] == columns[0]:
            names.append(parts[1])
    if names:
        out["by_structure"] = {}
        for n in names:
            sdm = [[r[f"dice/{n}/{c}"] for c in columns] for r in rows]
            shm = [[r[f"hd95/{n}/{c}"] for c in columns] for r in rows]
            entry: dict[str, Any] = {"dice_matrix": sdm, "hd95_matrix": shm}
            entry.update(continual_summary(np.asarray(sdm)))
            entry["hd95"] = float(np.mean(shm[-1][:t]))
            out["by_structure"][n] = entry
    return out


def evaluate_run(
    run: str | Path, data_dir: str | Path, split: str = "test", device: str = "cpu"
) -> dict[str, Any]:
    """Recompute the Dice matrix of a finished run from its per-stage models and saved split.

    Writes ``RUN/eval-<split>.json`` and returns its content.
    """
    saved = read_run(run)
    run, sites = saved.path, saved.sites
    if split not in ("train", "test"):
        raise InputError("--split", f"unknown split {split!r}; choose train or test")
    data = load_continual(data_dir, saved.cfg, sites, saved.heldout, split=saved.split)
    rows = []
    for site in sites:
        stage_dir = run / "stages" / site
        if not (stage_dir / "model.safetensors").is_file():
            raise InputError(stage_dir, "missing stage model (is the run finished?)")
        model = from_pretrained(Segmenter, stage_dir).to(device)
        rows.append(stage_metrics(model, data, split, device))
    result = {"split": split, **summarize(rows, sites, data.columns)}
    write_json_atomic(run / f"eval-{split}.json", result)
    return result
