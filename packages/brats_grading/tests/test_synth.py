"""The synthetic generator carries the evidence its docstring promises, measured on the images.

T1ce must show the grade clearly, FLAIR weakly, T2 weakly (extent) or not at all, T1
not at all; the within-grade correlation of the T1ce and FLAIR cues must be what the
config says, and at correlation 0 the cues are complementary: a classifier on both
beats the T1ce cue alone.
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
        t2 = case["t2"]  # T2-hyperintense extent relative to the core
        row["t2_extent"] = (ndimage.gaussian_filter(t2, 1.0) > 0.9).sum() / max(core.sum(), 1)
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
    for silent in ("t1", "t2"):  # the rim contrasts: grade-free in T1 and T2
        assert abs(auc[silent] - 0.5) < 0.08, auc


def test_t2_extent_is_weak_evidence_only_when_switched_on(measured):
    """Default (t2_shift 0.2): T2's extent carries weak grade evidence; at 0, none."""
    y, cue = measured
    weak = M.auc(y, cue["t2_extent"])
    y0, cue0 = _cues(400, GradeCues(t2_shift=0.0))
    none = M.auc(y0, cue0["t2_extent"])
    assert 0.55 < weak < 0.8, weak
    assert abs(none - 0.5) < 0.08, none


def test_t1ce_and_flair_are_complementary_when_uncorrelated():
    """Correlation 0: cross-validated logistic regression on both cues beats T1ce alone."""
    y, cue = _cues(400, GradeCues(correlation=0.0))
    both = np.column_stack([cue["t1ce"], cue["flair"]])
    both = (both - both.mean(0)) / both.std(0)
    p = cross_val_predict(LogisticRegression(), both, y, cv=5, method="predict_proba")[:, 1]
    assert M.auc(y, p) > M.auc(y, cue["t1ce"]) + 0.02


def test_correlated_cues_correlate_on_the_images():
    """On the images: the T1ce and FLAIR cues of HGG cases correlate more at 0.6 than at 0."""
    r = {}
    for rho in (0.0, 0.6):
        y, cue = _cues(300, GradeCues(correlation=rho), seed=1)
        hgg = y == 1
        r[rho] = np.corrcoef(cue["t1ce"][hgg], cue["flair"][hgg])[0, 1]
    assert r[0.6] > r[0.0] + 0.2, r


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
