"""Synthetic BraTS-like cases in the public on-disk layouts (2018/2019 and 2020).

Each case is a skull-stripped "brain" (an ellipsoid with a grey/white texture and
a bias field) holding one tumour: a core, a surrounding oedema and, depending on
the grade, an enhancing rim. The grade (``g`` = 1 HGG, 0 LGG) shows

- clearly in **T1ce**: rim enhancement amplitude ``0.3 + 0.6 z1``, ``z1 = g + e1``,
  ``e1 ~ N(0, 0.5)``, floored at 0 (an ideal observer of the amplitude: AUC 0.92);
- weakly in **FLAIR**: oedema extent (radius factor) ``1.3 + 0.6 z2``, ``z2 = g + e2``,
  ``e2 ~ N(0, 0.6)``, clipped to [1.05, 2.8] (ideal AUC 0.88 on the factor; on the
  image a size cue, confounded by the tumour's own radius and shape);
- ``e1`` and ``e2`` correlate within a grade with coefficient
  ``GradeCues.correlation`` (their own variances fixed, so each cue alone is equally
  informative at every correlation). Enhancement and oedema share biology (both
  follow the tumour's aggressiveness and angiogenesis), so in real BraTS they are
  correlated within a grade, and the default is 0.3. At 0 the cues are
  complementary (ideal observer of both: AUC 0.97); the higher the correlation, the
  less FLAIR adds to T1ce;
- weakly, if ``GradeCues.t2_shift`` > 0, in **T2**: the T2-hyperintense extent is
  ``U(1.2, 2.3) + t2_shift * g`` times the core radius (default 0.2: ideal AUC about
  0.67, the weak grade evidence T2 carries in real gliomas); at 0, none;
- not at all in **T1**. T1 and T2 carry Rician noise ``GradeCues.nuisance_noise``
  (default 0.15, three times T1ce's), rims around the tumour (amplitude
  ``U(0, 1.2)``, as bright as T1ce's) and ring-shaped distractors elsewhere, all
  unrelated to the grade: a 4-channel early fusion sees "enhancing rims" in three
  channels and must learn from few cases that only the T1ce one matters.

History (issue #11): an earlier generator (commit 8895864) set the correlation to 0,
doubled the T1/T2 noise to 0.3 and narrowed the core radius to U(0.2, 0.23) after
CMG had lost on the generator before it; every change favoured CMG. The defaults
here restore correlated cues, the original noise (0.15) and radius (U(0.19, 0.24)),
and add weak T2 evidence, because that is what real BraTS looks like. The benchmark
grid (`benchmarks/grid/protocol.py`) covers correlation 0 / 0.3 / 0.6, T2 evidence
none / weak and noise 0.15 / 0.3, fixed before its runs.

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

    The T1ce and FLAIR cues are ``low + (high - low) * (g + e)`` with ``g`` = 1 for
    HGG, 0 for LGG and ``e ~ N(0, <cue>_noise)``; ``correlation`` is the within-grade
    correlation of the two ``e``. ``t2_shift`` adds grade evidence to T2's lesion
    extent; ``nuisance_noise`` is the Rician noise of T1 and T2; ``radius`` the
    range of the core radius (fraction of the half field of view).

    ``flair_share`` (issue #21's positive control; 0, the default, leaves every image
    as before): FLAIR shows the T1ce rim enhancement too, on the same rim voxels, at
    this fraction of its T1ce amplitude. The one latent pattern (``z1``) is then
    strong in T1ce and faint in FLAIR, beside FLAIR's own oedema cue (``z2``): the
    premise of cross-modality guidance, that what the primary learns easily is in the
    secondary's image, weaker. It draws no random number, so every other voxel of a
    case is the same at every share.
    """

    t1ce_low: float = 0.3
    t1ce_high: float = 0.9
    t1ce_noise: float = 0.5
    flair_low: float = 1.3
    flair_high: float = 1.9
    flair_noise: float = 0.6
    correlation: float = 0.3
    t2_shift: float = 0.2
    nuisance_noise: float = 0.15
    radius: tuple[float, float] = (0.19, 0.24)
    flair_share: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.correlation < 1.0:
            raise InputError("cues.correlation", f"must be in [0, 1), got {self.correlation}")
        if self.t2_shift < 0 or self.nuisance_noise < 0:
            raise InputError("cues", "t2_shift and nuisance_noise must be >= 0")
        if not 0.0 <= self.flair_share <= 1.0:
            raise InputError("cues.flair_share", f"must be in [0, 1], got {self.flair_share}")
        if not 0 < self.radius[0] <= self.radius[1]:
            raise InputError("cues.radius", f"need 0 < low <= high, got {self.radius}")


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
    radius = rng.uniform(*cues.radius)
    core = random_blob(shape, rng, center, radius, irregularity=0.2) & brain
    if core.sum() < 8:  # keep a visible tumour even on very small grids
        core = ellipse(shape, center, (radius,) * 3) & brain
    g = 1.0 if hgg else 0.0
    # Two standard normals with correlation rho, each scaled to its cue's own noise.
    rho = cues.correlation
    u, v = rng.normal(size=2)
    z_t1ce = g + cues.t1ce_noise * u
    z_flair = g + cues.flair_noise * (rho * u + np.sqrt(1.0 - rho * rho) * v)
    enh_amp = max(0.0, cues.t1ce_low + (cues.t1ce_high - cues.t1ce_low) * z_t1ce)
    edema_factor = float(
        np.clip(cues.flair_low + (cues.flair_high - cues.flair_low) * z_flair, 1.05, 2.8)
    )
    t2_factor = rng.uniform(1.2, 2.3) + cues.t2_shift * g  # T2 lesion extent (weak grade cue)
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
    flair[rim] += cues.flair_share * enh_amp  # the T1ce pattern, faint (0 by default)
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
