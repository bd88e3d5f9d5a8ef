"""The benchmark grid of issue #11: settings, runs, statistics and verdict rule.

Fixed in code and committed before any of its runs (see the git history of this
file; until issue #19 it was ``src/brats_grading/protocol.py``, commit 0019769);
results are reported wherever they land. ``run.py`` beside it runs the grid.

**Settings** (12): every combination of

- ``correlation`` of the T1ce and FLAIR cues within a grade: 0, 0.3, 0.6
  (:class:`brats_grading.synth.GradeCues`; the cues' own strengths are the same in
  every setting);
- T2 grade evidence: ``none`` (``t2_shift`` 0) or ``weak`` (0.2, ideal AUC ~0.67);
- T1/T2 noise: ``baseline`` (Rician sigma 0.15) or ``high`` (0.3).

The generator's default (0.3, weak, baseline) is one of them.

**Runs**: every registered method on every setting, seeds 0, 1, 2, stratified
K = 3 folds by patient. One data set per setting, all written from generator seed
1234 (common random numbers: the settings differ only in the cue parameters).
:data:`GRID_SYNTH` cases, resized to :data:`GRID_SHAPE` for training, and
:data:`GRID_STEPS` steps per stage: the ``small`` architecture on smaller inputs and
fewer steps, so that 12 settings x 11 methods x 9 runs fit about an hour on two CPU
cores. Nothing is tuned: every method keeps its defaults.

**Statistics**: per (setting, method, seed) the out-of-fold predictions of the K
test folds are pooled into one score per case; the AUC of a method is the mean of
its three seeds' pooled AUCs. 95% intervals: :data:`BOOTSTRAP` stratified case
resamples (:mod:`medcommon.metrics.bootstrap`), the same resamples for every method
of a setting, so the interval of ``AUC(cmg) - AUC(x)`` is paired.

**Methods**: the paper's CMG, its ablations (no guidance, no attention), the single
modalities, early and late fusion, and two attempts at making guidance matter
(issue #11, item 3), with their default weights, nothing tuned: ``cmg-proj``
(alignment through a learned, identity-initialised projection head) and ``cmg-mid``
(alignment of the intermediate features as well, weight 1). The third option of the
issue, the primary chosen on inner validation, is not run: T1ce is the strongest
single cue in every setting by construction of the generator.

**Verdict** of CMG against each other method in a setting: *wins* when the paired
95% interval lies above 0, *loses* when it lies below 0, *ties* otherwise. The
headline is the guidance ablation, ``cmg - cmg-no-guidance``, per setting.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

from brats_grading.config import SynthConfig
from brats_grading.synth import GradeCues

CORRELATIONS = (0.0, 0.3, 0.6)
T2_EVIDENCE = {"none": 0.0, "weak": 0.2}
NOISE = {"baseline": 0.15, "high": 0.3}

SEEDS = (0, 1, 2)
FOLDS = 3
DATA_SEED = 1234
GRID_SYNTH = SynthConfig(hgg=113, lgg=37, shape=(20, 32, 32))
GRID_SHAPE = (12, 16, 16)
GRID_STEPS = 60
BOOTSTRAP = 1000
LEVEL = 0.95

REFERENCE = "cmg"
HEADLINE = ("cmg", "cmg-no-guidance")
"""The guidance ablation: the paper's mechanism, reported first."""


@dataclass(frozen=True)
class Setting:
    """One cell of the grid: its name and generator parameters."""

    correlation: float
    t2: str
    noise: str

    @property
    def name(self) -> str:
        return f"rho{self.correlation:g}-t2{self.t2}-noise{self.noise}"

    @property
    def cues(self) -> GradeCues:
        return GradeCues(
            correlation=self.correlation,
            t2_shift=T2_EVIDENCE[self.t2],
            nuisance_noise=NOISE[self.noise],
        )


SETTINGS: tuple[Setting, ...] = tuple(
    Setting(c, t, n) for c, t, n in itertools.product(CORRELATIONS, T2_EVIDENCE, NOISE)
)
DEFAULT_SETTING = Setting(0.3, "weak", "baseline")
"""The generator's default (:data:`brats_grading.synth.CUES`) as a grid cell."""


def verdict(lo: float, hi: float) -> str:
    """``wins`` / ``loses`` / ``ties`` from the paired interval of ``cmg - other``."""
    if lo > 0:
        return "wins"
    if hi < 0:
        return "loses"
    return "ties"
