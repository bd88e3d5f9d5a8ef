"""Synthetic BraTS-like cases in the public on-disk layouts (2018/2019 and 2020).

Each case is a skull-stripped "brain" (an ellipsoid with a grey/white texture and
a bias field) holding one tumour: a core, a surrounding oedema and, depending on
the grade, an enhancing rim. The grade (``g`` = 1 HGG, 0 LGG) shows

- clearly in **T1ce**: rim enhancement amplitude ``0.3 + 0.6 (g + e1)``,
  ``e1 ~ N(0, 0.5)``, floored at 0 (an ideal observer of the amplitude: AUC 0.92);
- weakly in **FLAIR**: oedema extent (radius factor) ``1.3 + 0.6 (g + e2)``,
  ``e2 ~ N(0, 0.6)``, clipped to [1.05, 2.8] (ideal AUC 0.88 on the factor; on the
  image a size cue, confounded by the tumour's own radius and shape);
- ``e1`` and ``e2`` are independent, so T1ce and FLAIR are complementary: the ideal
  observer of both reaches AUC 0.97 (Monte Carlo, 200k cases). A within-grade
  "aggressiveness" ``u ~ N(0, shared)`` added to both (``GradeCues.shared``, 0 by
  default) makes them redundant instead;
- not at all in **T1** and **T2**: their tumour looks the same for both grades, they
  carry strong Rician noise (sigma 0.3, six times T1ce's), and they show rims around
  the tumour (amplitude ``U(0, 1.2)``, as bright as T1ce's) and ring-shaped
  distractors elsewhere, all unrelated to the grade: a 4-channel early fusion sees
  "enhancing rims" in three channels and must learn from few cases that only the
  T1ce one matters.

Volumes are stored as int16 (intensity x 1000, as BraTS ships most files), with a
``_seg`` label map (1 core, 2 oedema, 4 enhancing rim) that the grading code ignores.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import ndimage
from tqdm.auto import tqdm

from brats_grading.config import MODALITIES, SynthConfig
from medcommon.errors import InputError
from medcommon.fs import atomic_dir
from medcommon.io import write_image
from medcommon.synthetic import add_noise, bias_field, ellipse, grid, random_blob, smooth_noise

LAYOUTS = ("2018", "2019", "2020")
NAME_MAPPING_COLUMNS = (
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2020_subject_ID",
)


def _shell(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Voxels within ``width`` voxels outside ``mask`` (an enhancing rim)."""
    return ndimage.binary_dilation(mask, iterations=width) & ~mask


@dataclass(frozen=True)
class GradeCues:
    """How strongly each modality shows the grade (see the module docstring).

    Each grade-bearing cue is ``low + (high - low) * (g + u + e)`` with ``g`` = 1 for
    HGG, 0 for LGG, ``u ~ N(0, shared)`` one per case (seen by both cues) and ``e ~
    N(0, <cue>_noise)`` its own. ``nuisance_noise`` is the Rician noise of T1 and T2.
    """

    t1ce_low: float = 0.3
    t1ce_high: float = 0.9
    t1ce_noise: float = 0.5
    flair_low: float = 1.3
    flair_high: float = 1.9
    flair_noise: float = 0.6
    shared: float = 0.0
    nuisance_noise: float = 0.3


CUES = GradeCues()


def make_case(
    hgg: bool,
    shape: tuple[int, int, int],
    rng: np.random.Generator,
    cues: GradeCues = CUES,
) -> dict[str, np.ndarray]:
    """One synthetic case: ``{modality: (z, y, x) float32 >= 0, "seg": uint8}``."""
    brain = ellipse(shape, (0.0, 0.0, 0.0), (0.85, 0.8, 0.72))
    white = smooth_noise(shape, rng, sigma=2.0) > 0.0
    center = [rng.uniform(-0.3, 0.3), rng.uniform(-0.35, 0.35), rng.uniform(-0.3, 0.3)]
    radius = rng.uniform(0.2, 0.23)
    core = random_blob(shape, rng, center, radius, irregularity=0.2) & brain
    if core.sum() < 8:  # keep a visible tumour even on very small grids
        core = ellipse(shape, center, (radius,) * 3) & brain
    g = 1.0 if hgg else 0.0
    shared = rng.normal(0.0, cues.shared)
    z_t1ce = g + shared + rng.normal(0.0, cues.t1ce_noise)
    z_flair = g + shared + rng.normal(0.0, cues.flair_noise)
    enh_amp = max(0.0, cues.t1ce_low + (cues.t1ce_high - cues.t1ce_low) * z_t1ce)
    edema_factor = float(
        np.clip(cues.flair_low + (cues.flair_high - cues.flair_low) * z_flair, 1.05, 2.8)
    )
    t2_factor = rng.uniform(1.2, 2.3)  # grade-independent extent seen by T2
    rim = _shell(core, 1) & brain
    coords = grid(shape)
    dist = np.sqrt(sum((g - c) ** 2 for g, c in zip(coords, center)))
    edema = (dist <= radius * edema_factor) & brain & ~core & ~rim
    t2_lesion = (dist <= radius * t2_factor) & brain

    def tissue(white_value: float, grey_value: float) -> np.ndarray:
        return np.where(white, white_value, grey_value).astype(np.float64)

    def distractors(img: np.ndarray, count: int) -> np.ndarray:
        """Grade-independent bright rings anywhere in the brain."""
        for _ in range(count):
            c = [rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), rng.uniform(-0.45, 0.45)]
            blob = ellipse(shape, c, (rng.uniform(0.1, 0.22),) * 3)
            img = img + rng.uniform(0.0, 1.2) * (_shell(blob, 1) & brain)
        return img

    out: dict[str, np.ndarray] = {}
    t1 = tissue(0.8, 0.6)
    t1[t2_lesion] = 0.45
    t1[rim] += rng.uniform(0.0, 1.2)  # a rim as bright as T1ce's, unrelated to the grade
    out["t1"] = distractors(t1, int(rng.integers(1, 4)))
    t1ce = tissue(0.8, 0.6)
    t1ce[core] = 0.45
    t1ce[rim] += enh_amp
    out["t1ce"] = t1ce
    t2 = tissue(0.45, 0.65)
    t2[t2_lesion] = 1.1
    t2[rim] += rng.uniform(0.0, 1.2)
    out["t2"] = distractors(t2, int(rng.integers(1, 4)))
    flair = tissue(0.5, 0.6)
    flair[edema] = 1.0
    flair[core | rim] = 0.85
    out["flair"] = flair
    noise = {"t1": cues.nuisance_noise, "t1ce": 0.05, "t2": cues.nuisance_noise, "flair": 0.05}
    for name in MODALITIES:
        img = out[name] * bias_field(shape, rng, 0.2) * rng.uniform(0.8, 1.25)
        img = add_noise(img, rng, noise[name], rician=True)
        out[name] = np.where(brain, img, 0.0).astype(np.float32)
    seg = np.zeros(shape, np.uint8)
    seg[edema] = 2
    seg[core] = 1
    if hgg:
        seg[rim] = 4
    out["seg"] = seg
    return out


def case_names(layout: str, n: int) -> list[str]:
    """Case folder names in the style of the given BraTS release."""
    if layout == "2020":
        return [f"BraTS20_Training_{i + 1:03d}" for i in range(n)]
    prefix = "Brats18" if layout == "2018" else "BraTS19"
    return [f"{prefix}_SYN{i // 10:02d}_{i % 10 + 1:03d}_1" for i in range(n)]


def _write_case(folder: Path, case: str, volumes: dict[str, np.ndarray]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, arr in volumes.items():
        data = arr if name == "seg" else np.round(arr * 1000.0).clip(0, 32767).astype(np.int16)
        write_image(folder / f"{case}_{name}.nii.gz", data, spacing=(1.0, 1.0, 1.0))


def write_synthetic(
    out: str | Path,
    cfg: SynthConfig,
    layout: str = "2019",
    seed: int = 0,
    quiet: bool = False,
    cues: GradeCues = CUES,
) -> Path:
    """Write a synthetic training folder in ``layout`` to ``out`` (atomically, as a whole).

    Returns ``out``. Grades are interleaved by a seeded shuffle; the HGG:LGG ratio is
    ``cfg.hgg : cfg.lgg``.
    """
    if layout not in LAYOUTS:
        raise InputError("--layout", f"unknown layout {layout!r}; choose from {', '.join(LAYOUTS)}")
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty")
    rng = np.random.default_rng(seed)
    grades = np.array([1] * cfg.hgg + [0] * cfg.lgg)[rng.permutation(cfg.hgg + cfg.lgg)]
    names = case_names(layout, len(grades))
    rows = []
    with atomic_dir(out) as tmp:
        for name, hgg in tqdm(list(zip(names, grades)), desc="synth", disable=quiet, leave=False):
            volumes = make_case(bool(hgg), tuple(cfg.shape), rng, cues)
            grade = "HGG" if hgg else "LGG"
            folder = tmp / name if layout == "2020" else tmp / grade / name
            _write_case(folder, name, volumes)
            rows.append([grade, "NA", "NA", "NA", "NA", name])
        if layout == "2020":
            buf = io.StringIO()
            writer = csv.writer(buf, lineterminator="\n")
            writer.writerow(NAME_MAPPING_COLUMNS)
            writer.writerows(rows)
            (tmp / "name_mapping.csv").write_text(buf.getvalue(), encoding="utf-8")
    return out
