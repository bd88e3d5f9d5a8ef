"""The synthetic generator carries the evidence its docstring promises, measured on the images.

T1ce must show the grade clearly, FLAIR weakly, T1 and T2 not at all, and T1ce and
FLAIR must be complementary: a classifier on both cues beats the T1ce cue alone.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_predict

from brats_grading.synth import CUES, GradeCues, make_case
from medcommon import metrics as M

SHAPE = (12, 24, 24)


def _cues(n: int, cues: GradeCues = CUES, seed: int = 0):
    """Per case: T1ce/T1/T2 contrast on the shell around the core, FLAIR bright volume."""
    rng = np.random.default_rng(seed)
    grades = np.arange(n) % 2
    rows = []
    for hgg in grades:
        case = make_case(bool(hgg), SHAPE, rng, cues)
        core = case["seg"] == 1
        shell = ndimage.binary_dilation(core) & ~core
        row = {}
        for name in ("t1ce", "t1", "t2"):
            img = case[name]
            row[name] = img[shell].mean() / img[img > 0].mean()
        flair = case["flair"]
        # oedema is the brightest FLAIR tissue; its volume relative to the core's
        bright = flair > 1.5 * np.median(flair[flair > 0])
        row["flair"] = (bright & ~core).sum() / max(core.sum(), 1)
        rows.append(row)
    return grades, {k: np.array([r[k] for r in rows]) for k in rows[0]}


@pytest.fixture(scope="module")
def measured():
    return _cues(400)


def test_t1ce_clear_flair_weak_t1_t2_silent(measured):
    y, cue = measured
    auc = {k: M.auc(y, v) for k, v in cue.items()}
    assert auc["t1ce"] > 0.85, auc
    assert 0.6 < auc["flair"] < auc["t1ce"], auc
    for silent in ("t1", "t2"):
        assert abs(auc[silent] - 0.5) < 0.08, auc


def test_t1ce_and_flair_are_complementary(measured):
    """Cross-validated logistic regression on both cues beats the T1ce cue alone."""
    y, cue = measured
    both = np.column_stack([cue["t1ce"], cue["flair"]])
    both = (both - both.mean(0)) / both.std(0)
    p = cross_val_predict(LogisticRegression(), both, y, cv=5, method="predict_proba")[:, 1]
    assert M.auc(y, p) > M.auc(y, cue["t1ce"]) + 0.02


def test_shared_latent_makes_the_cues_redundant():
    """With a large shared within-grade component the cues correlate within a grade."""
    y, cue = _cues(300, GradeCues(shared=0.6, t1ce_noise=0.2, flair_noise=0.3), seed=1)
    hgg = y == 1
    r_shared = np.corrcoef(cue["t1ce"][hgg], cue["flair"][hgg])[0, 1]
    y, cue = _cues(300, seed=1)
    r_default = np.corrcoef(cue["t1ce"][y == 1], cue["flair"][y == 1])[0, 1]
    assert r_shared > r_default + 0.2, (r_shared, r_default)


def test_written_folder_shows_the_grade_in_t1ce(data19):
    """On the files as written: HGG rims enhance, so T1ce around the core is brighter for HGG."""
    from brats_grading.data import discover
    from medcommon.io import read_image

    _, cases = discover(data19)
    contrast = {0: [], 1: []}
    for c in cases:
        t1ce = read_image(c.files["t1ce"]).array.astype(float)
        seg = read_image(c.files["t1ce"].with_name(f"{c.name}_seg.nii.gz")).array
        ring = ndimage.binary_dilation(seg == 1) & (seg != 1)
        contrast[c.label].append(t1ce[ring].mean() / t1ce[t1ce > 0].mean())
    assert np.mean(contrast[1]) > np.mean(contrast[0]) + 0.15
