"""Multi-site data: discover the public layouts, load slices, split each site by patient.

Layouts (``--data DIR``):

- prostate: ``DIR/<Site>/CaseNN.nii.gz`` + ``DIR/<Site>/CaseNN_segmentation.nii.gz``
  (the public six-site set: RUNMC, BMC, I2CVB, UCL, BIDMC, HK; ``.nii``, ``.mha``,
  ``.nrrd`` and ``_Segmentation`` are accepted too). Each volume is min-max normalised
  to [0, 1]; every axial slice (optionally with its two neighbours as channels) is
  resized to ``image_size``.
- fundus: ``DIR/<Domain>/image/NAME.png`` + ``DIR/<Domain>/mask/NAME.png`` (any PNG/JPEG);
  RGB images (grayscale is replicated), min-max normalised per image. Each image is a case.
- fundus, the public DoFE release: ``DIR/DomainK/{train,test}/ROIs/{image,mask}/NAME.png``.
  Its official train/test split is used (``test_fraction`` is ignored); masks are
  0 = cup, 128 = disc rim, 255 = background, and two nested structures are segmented:
  the disc (mask < 255, cup included) and the cup (mask == 0).

Masks become label maps of nested structures: label ``k`` means "inside structures
``0..k-1``" (one structure: 0/1). Defaults: prostate, any non-zero label is the gland
(the six-site release also uses label 2 at RUNMC and BMC); per-domain fundus, masks
0/255 with 255 the foreground; DoFE, disc and cup as above. ``foreground_labels``
replaces the default by one structure made of those labels; ``mask_labels`` declares
the labels a mask may hold (checked; default: prostate any, fundus 0/255, DoFE 0/128/255).

Refused before anything is written (exit 2): a volume or image holding a NaN or
infinite value, or all zero (min-max normalisation would turn it into zeros without a
word); a mask holding NaN or infinite values; labels outside the declared ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from medcommon.data import patient_split
from medcommon.errors import InputError
from medcommon.io import read_image
from smg_learning.config import FUNDUS_SITES, PROSTATE_SITES, RunConfig

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".mha", ".mhd", ".nrrd")
RASTER_SUFFIXES = (".png", ".jpg", ".jpeg")
DEFAULT_LABELS = {"prostate": ((0, 1), (1,)), "fundus": ((0, 255), (255,))}  # old defaults
#: the DoFE release's mask values: 0 cup, 128 disc rim, 255 background
DOFE_LABELS = (0, 128, 255)
DOFE_STRUCTURES = (("disc", (0, 128)), ("cup", (0,)))


@dataclass(frozen=True)
class MaskSpec:
    """How raw mask values become a label map of nested structures.

    ``labels``: the values a mask may hold (None: any integer). ``structures``: names
    and label sets, outermost first (None: any non-zero value); pixel label = the number
    of structures whose set holds its value.
    """

    labels: tuple[int, ...] | None
    structures: tuple[tuple[str, tuple[int, ...] | None], ...]

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(n for n, _ in self.structures)

    def label_map(self, m: np.ndarray) -> np.ndarray:
        """Raw mask values -> int64 label map in {0..K}."""
        out = np.zeros(m.shape, dtype=np.int64)
        for _, values in self.structures:
            out += (m != 0) if values is None else np.isin(m, values)
        return out


@dataclass(frozen=True)
class Case:
    """One patient (prostate volume) or one fundus image, with its mask file."""

    site: str
    case_id: str
    image: Path
    mask: Path
    part: str | None = None  # the release's own split ("train"/"test"), if it has one


@dataclass
class SiteSlices:
    """All 2D slices of some cases of one site, ready for the segmenter.

    ``images`` (N, C, S, S) float32 in [0, 1]; ``masks`` (N, 1, S, S) int64 label maps
    in {0..K} (K nested structures; {0, 1} for one);
    ``case_index`` (N,) the position of each slice's case in ``cases``.
    """

    site: str
    cases: list[str]
    images: torch.Tensor
    masks: torch.Tensor
    case_index: np.ndarray

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def case_slices(self, k: int) -> np.ndarray:
        """Indices of case ``k``'s slices, in z order."""
        return np.flatnonzero(self.case_index == k)


class SliceDataset(Dataset):
    """Map-style dataset over :class:`SiteSlices` parts: ``{"image", "mask", "site"}`` items."""

    def __init__(self, parts: list[SiteSlices], site_ids: list[int]) -> None:
        self.images = torch.cat([p.images for p in parts])
        self.masks = torch.cat([p.masks for p in parts])
        self.sites = torch.cat(
            [torch.full((len(p),), s, dtype=torch.long) for p, s in zip(parts, site_ids)]
        )

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"image": self.images[i], "mask": self.masks[i], "site": self.sites[i]}


def _strip(name: str, suffixes: tuple[str, ...]) -> str | None:
    low = name.lower()
    for s in suffixes:
        if low.endswith(s):
            return name[: -len(s)]
    return None


def _prostate_cases(site_dir: Path) -> list[Case]:
    images, masks = {}, {}
    for f in sorted(site_dir.iterdir()):
        stem = _strip(f.name, VOLUME_SUFFIXES) if f.is_file() else None
        if stem is None:
            continue
        if stem.lower().endswith("_segmentation"):
            masks[stem[: -len("_segmentation")]] = f
        else:
            images[stem] = f
    for stem, f in images.items():
        if stem not in masks:
            raise InputError(f, f"image without its segmentation ({stem}_segmentation.nii.gz)")
    for stem, f in masks.items():
        if stem not in images:
            raise InputError(f, f"segmentation without its image ({stem}.nii.gz)")
    return [Case(site_dir.name, s, images[s], masks[s]) for s in sorted(images)]


def _raster_pairs(folder: Path, site: str, prefix: str = "", part: str | None = None) -> list[Case]:
    """The ``folder/image/NAME`` + ``folder/mask/NAME`` pairs (case id ``prefix + NAME``)."""
    img_dir, mask_dir = folder / "image", folder / "mask"
    if not mask_dir.is_dir():
        raise InputError(folder, "has image/ but no mask/ folder")

    def listing(d: Path) -> dict[str, Path]:
        out = {}
        for f in sorted(d.iterdir()):
            stem = _strip(f.name, RASTER_SUFFIXES) if f.is_file() else None
            if stem is not None:
                out[stem] = f
        return out

    images, masks = listing(img_dir), listing(mask_dir)
    for stem, f in images.items():
        if stem not in masks:
            raise InputError(f, f"image without its mask (mask/{stem}.png)")
    for stem, f in masks.items():
        if stem not in images:
            raise InputError(f, f"mask without its image (image/{stem}.png)")
    return [Case(site, prefix + s, images[s], masks[s], part) for s in sorted(images)]


def _fundus_cases(site_dir: Path) -> list[Case]:
    return _raster_pairs(site_dir, site_dir.name)


def _is_dofe(site_dir: Path) -> bool:
    return any((site_dir / p / "ROIs").is_dir() for p in ("train", "test"))


def _dofe_cases(site_dir: Path) -> list[Case]:
    """DoFE: ``{train,test}/ROIs/{image,mask}``; case ids ``train/NAME``, ``test/NAME``."""
    cases = []
    for part in ("train", "test"):
        rois = site_dir / part / "ROIs"
        if (rois / "image").is_dir():
            cases += _raster_pairs(rois, site_dir.name, f"{part}/", part)
    return cases


@dataclass
class MultiSiteData:
    """The sites found under a data folder, each a list of :class:`Case` (not yet loaded)."""

    root: Path
    task: str
    sites: dict[str, list[Case]] = field(default_factory=dict)
    layout: str = ""  # "prostate", "fundus" (per-domain image/, mask/) or "dofe"

    def resolve_sites(
        self, sites: tuple[str, ...] | list[str], heldout: tuple[str, ...] | list[str]
    ) -> tuple[list[str], list[str]]:
        """Validate the training order and the held-out sites against the folder.

        Without ``sites``, every site not held out trains, in the public order
        (RUNMC, BMC, I2CVB, UCL, BIDMC, HK / Domain1..4) when the names match, else sorted.
        """
        for flag, names in (("--sites", sites), ("--heldout", heldout)):
            for n in names:
                if n not in self.sites:
                    raise InputError(
                        flag, f"unknown site {n!r}; {self.root} has {', '.join(self.sites)}"
                    )
            dup = sorted({n for n in names if list(names).count(n) > 1})
            if dup:
                raise InputError(flag, f"site {dup[0]!r} is listed twice")
        both = sorted(set(sites) & set(heldout))
        if both:
            raise InputError("--heldout", f"site {both[0]!r} is also in --sites")
        order = list(sites) or [n for n in self.sites if n not in heldout]
        if not order:
            raise InputError("--sites", "no site left to train on")
        for n in [*order, *heldout]:
            if not self.sites[n]:
                raise InputError(self.root / n, "site has no cases")
        return order, list(heldout)


def discover(root: str | Path, task: str = "auto") -> MultiSiteData:
    """Find the sites and cases under ``root`` (prostate or fundus layout).

    Raises:
        InputError: the folder is missing or empty, mixes layouts, or a case lacks its mask.
    """
    root = Path(root)
    if not root.is_dir():
        raise InputError(root, "data folder not found")
    site_dirs = [d for d in sorted(root.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    if not site_dirs:
        raise InputError(root, "no site folders found")
    layouts = {
        d.name: ("dofe" if _is_dofe(d) else "fundus" if (d / "image").is_dir() else "prostate")
        for d in site_dirs
    }
    found = set(layouts.values())
    if len(found) > 1:
        raise InputError(root, f"mixes the {' and '.join(sorted(found))} layouts")
    layout = found.pop()
    detected = "prostate" if layout == "prostate" else "fundus"
    if task != "auto" and task != detected:
        raise InputError(root, f"looks like the {detected} layout, not {task}")
    reader = {"prostate": _prostate_cases, "fundus": _fundus_cases, "dofe": _dofe_cases}[layout]
    sites = {d.name: reader(d) for d in site_dirs}
    public = PROSTATE_SITES if detected == "prostate" else FUNDUS_SITES
    if set(sites) <= set(public):
        sites = {n: sites[n] for n in public if n in sites}
    return MultiSiteData(root, detected, sites, layout)


def mask_spec(cfg: RunConfig, layout: str) -> MaskSpec:
    """The declared labels and structures of a layout (module docstring), with the overrides."""
    if layout == "prostate":
        labels, structures = None, (("prostate", None),)
    elif layout == "dofe":
        labels, structures = DOFE_LABELS, DOFE_STRUCTURES
    else:
        labels, structures = DEFAULT_LABELS["fundus"][0], (("foreground", (255,)),)
    labels = tuple(cfg.mask_labels) or labels
    if cfg.foreground_labels:
        structures = (("foreground", tuple(cfg.foreground_labels)),)
    for _, values in structures:
        missing = sorted(set(values or ()) - set(labels or values or ()))
        if missing:
            raise InputError("--set foreground_labels", f"{missing[0]} is not among mask_labels")
    return MaskSpec(labels, structures)


def check_intensities(arr: np.ndarray, path: Path, what: str = "volume") -> None:
    """Refuse an image that min-max normalisation would silently turn into zeros: one
    holding a NaN or infinite value, or an all-zero one (as brats-grading does)."""
    if not np.isfinite(arr).all():
        bad = int(arr.size - np.isfinite(arr).sum())
        raise InputError(path, f"{what} holds {bad} NaN or infinite value(s)")
    if not np.any(arr):
        raise InputError(path, f"{what} is all zero")


def check_mask_values(m: np.ndarray, path: Path) -> None:
    """Refuse a (float) mask holding NaN or infinite values before its labels are read."""
    if np.issubdtype(m.dtype, np.floating) and not np.isfinite(m).all():
        bad = int(m.size - np.isfinite(m).sum())
        raise InputError(path, f"mask holds {bad} NaN or infinite value(s)")


def _minmax(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def _resize(x: torch.Tensor, size: int, mode: str) -> torch.Tensor:
    if x.shape[-2:] == (size, size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=(size, size), mode="nearest")
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


def volume_channels(arr: np.ndarray, adjacent_slices: int = 1) -> np.ndarray:
    """A ``(z, y, x)`` volume, min-max normalised, as ``(z, C, y, x)`` slices.

    ``C`` is 1, or 3 with ``adjacent_slices == 3`` (each slice with its neighbours,
    repeated at the ends).
    """
    v = _minmax(arr)
    if adjacent_slices == 3:
        idx = np.arange(v.shape[0])
        return np.stack([v[np.clip(idx + d, 0, len(idx) - 1)] for d in (-1, 0, 1)], axis=1)
    return v[:, None]


def fundus_channels(arr: np.ndarray) -> np.ndarray:
    """A ``(y, x, 3)`` (or grey ``(y, x)``) image, min-max normalised, as ``(1, 3, y, x)``."""
    if arr.ndim == 2:
        arr = np.repeat(arr[..., None], 3, axis=2)
    return _minmax(arr).transpose(2, 0, 1)[None]


def segmenter_input(slices: np.ndarray, size: int) -> torch.Tensor:
    """``(N, C, y, x)`` slices in [0, 1] resized (bilinear, antialiased) to ``(N, C, size, size)``."""
    x = _resize(torch.from_numpy(np.ascontiguousarray(slices)), size, "bilinear")
    return x.clamp(0, 1).float()


def load_case(
    case: Case, task: str, cfg: RunConfig, spec: MaskSpec | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Read one case: images (Z, C, S, S) float32 in [0, 1], masks (Z, 1, S, S) int64 labels.

    ``spec``: how mask values become structures (default: :func:`mask_spec` of ``task``'s
    plain layout).
    """
    img = read_image(case.image)
    msk = read_image(case.mask)
    spec = spec or mask_spec(cfg, task)
    labels = spec.labels
    check_intensities(img.array, case.image, "image" if task == "fundus" else "volume")
    check_mask_values(msk.array, case.mask)
    if task == "fundus":
        arr = img.array if img.array.ndim == 3 else np.repeat(img.array[..., None], 3, axis=2)
        m = msk.array if msk.array.ndim == 2 else msk.array[..., 0]
        if arr.shape[:2] != m.shape:
            raise InputError(
                case.mask, f"mask shape {m.shape} differs from image shape {arr.shape[:2]}"
            )
        vol = fundus_channels(arr)
        m = m[None]  # (1, y, x)
    else:
        arr = img.array
        if arr.ndim == 2:
            arr = arr[None]
        if arr.ndim != 3:
            raise InputError(case.image, f"expected a 3D volume, got shape {arr.shape}")
        m = msk.array if msk.array.ndim == 3 else msk.array[None]
        if m.shape != arr.shape:
            raise InputError(
                case.mask, f"mask shape {m.shape} differs from image shape {arr.shape}"
            )
        vol = volume_channels(arr, cfg.adjacent_slices)
    values = np.unique(m)
    bad = [x for x in values if x != int(x) or (labels is not None and int(x) not in labels)]
    if bad:
        declared = "integers" if labels is None else list(labels)
        raise InputError(
            case.mask,
            f"mask has labels {[float(x) if x != int(x) else int(x) for x in bad[:5]]} "
            f"not among the declared {declared} (set mask_labels / foreground_labels)",
        )
    lab = spec.label_map(m).astype(np.float32)[:, None]  # (z, 1, y, x) in {0..K}
    masks = _resize(torch.from_numpy(lab), cfg.image_size, "nearest")
    return segmenter_input(vol, cfg.image_size), masks.round().long()


def load_slices(
    cases: list[Case], task: str, cfg: RunConfig, site: str, spec: MaskSpec | None = None
) -> SiteSlices:
    """Load and stack the slices of ``cases`` (all of one site)."""
    ims, mks, idx = [], [], []
    for k, c in enumerate(cases):
        i, m = load_case(c, task, cfg, spec)
        ims.append(i)
        mks.append(m)
        idx.append(np.full(i.shape[0], k))
    if not ims:
        raise InputError(site, "no cases in this split")
    return SiteSlices(
        site, [c.case_id for c in cases], torch.cat(ims), torch.cat(mks), np.concatenate(idx)
    )


def split_site(cases: list[Case], test_fraction: float, seed: int) -> dict[str, list[str]]:
    """A patient-level train/test split of one site's cases (at least one case each side).

    A release with its own split (every case has ``part``, both parts present) keeps it.
    """
    ids = [c.case_id for c in cases]
    parts = {c.part for c in cases}
    if parts == {"train", "test"}:
        return {p: [c.case_id for c in cases if c.part == p] for p in ("train", "test")}
    if len(ids) < 2:
        raise InputError(cases[0].image.parent if cases else "site", "needs at least 2 cases")
    n_test = min(max(1, round(len(ids) * test_fraction)), len(ids) - 1)
    train_idx, test_idx = patient_split(ids, [len(ids) - n_test, n_test], seed=seed)
    if len(test_idx) == 0 or len(train_idx) == 0:  # rounding in patient_split
        order = np.random.default_rng(seed).permutation(len(ids))
        test_idx, train_idx = np.sort(order[:n_test]), np.sort(order[n_test:])
    return {"train": [ids[i] for i in train_idx], "test": [ids[i] for i in test_idx]}


@dataclass
class ContinualData:
    """Loaded slices for a run: ``parts[split][site]`` for the training and held-out sites."""

    task: str
    sites: list[str]
    heldout: list[str]
    split: dict[str, dict[str, list[str]]]
    parts: dict[str, dict[str, SiteSlices]]
    channels: int
    #: the nested mask structures, outermost first (label k: inside structures < k)
    structures: tuple[str, ...] = ("foreground",)

    @property
    def columns(self) -> list[str]:
        """Dice-matrix columns: training sites in order, then held-out sites."""
        return [*self.sites, *self.heldout]


def load_continual(
    root: str | Path,
    cfg: RunConfig,
    sites: tuple[str, ...] | list[str] = (),
    heldout: tuple[str, ...] | list[str] = (),
    split: dict[str, dict[str, list[str]]] | None = None,
) -> ContinualData:
    """Discover, validate and load everything a run needs (before any output is written).

    Args:
        split: a saved split (``RUN/split.json``) to reuse; otherwise each site is
            split by patient with ``cfg.test_fraction`` and ``cfg.split_seed``.
    """
    ms = discover(root, cfg.task)
    order, held = ms.resolve_sites(sites or cfg.sites, heldout or cfg.heldout)
    if len(order) > cfg.smd.num_prompts:
        raise InputError(
            "--sites", f"{len(order)} sites exceed smd.num_prompts ({cfg.smd.num_prompts})"
        )
    spec = mask_spec(cfg, ms.layout or ms.task)
    split = dict(split or {})
    parts: dict[str, dict[str, SiteSlices]] = {"train": {}, "test": {}}
    for name in [*order, *held]:
        cases = ms.sites[name]
        if name not in split:
            split[name] = split_site(cases, cfg.test_fraction, cfg.split_seed)
        by_id = {c.case_id: c for c in cases}
        for part in ("train", "test"):
            missing = [i for i in split[name][part] if i not in by_id]
            if missing:
                raise InputError(root, f"case {name}/{missing[0]} of the saved split is missing")
            chosen = [by_id[i] for i in split[name][part]]
            parts[part][name] = load_slices(chosen, ms.task, cfg, name, spec)
    channels = int(next(iter(parts["train"].values())).images.shape[1])
    split = {n: split[n] for n in [*order, *held]}
    return ContinualData(ms.task, order, held, split, parts, channels, spec.names)


# ------------------------------------------------------------ validation split
def _take(part: SiteSlices, cases: list[int]) -> SiteSlices:
    keep = np.isin(part.case_index, cases)
    new_index = np.searchsorted(np.asarray(cases), part.case_index[keep])
    idx = torch.from_numpy(np.flatnonzero(keep))
    return SiteSlices(
        part.site, [part.cases[c] for c in cases], part.images[idx], part.masks[idx], new_index
    )


def validation_data(data: ContinualData, fraction: float = 0.25, seed: int = 0) -> ContinualData:
    """The training sites only, each site's training cases split into train / ``"test"`` (validation).

    At least one case on each side; the split is a seeded permutation per site. The
    result has no held-out sites and its ``"test"`` parts are validation slices.
    """
    if not 0.0 < fraction < 1.0:
        raise InputError("val_fraction", "must be in (0, 1)")
    train, val, split = {}, {}, {}
    for k, site in enumerate(data.sites):
        part = data.parts["train"][site]
        n = len(part.cases)
        if n < 2:
            raise InputError(site, "needs at least 2 training cases for a validation split")
        n_val = min(max(1, round(n * fraction)), n - 1)
        order = np.random.default_rng([seed, k]).permutation(n)
        val_cases, train_cases = sorted(order[:n_val].tolist()), sorted(order[n_val:].tolist())
        train[site], val[site] = _take(part, train_cases), _take(part, val_cases)
        split[site] = {
            "train": [part.cases[c] for c in train_cases],
            "test": [part.cases[c] for c in val_cases],
        }
    return ContinualData(
        task=data.task,
        sites=list(data.sites),
        heldout=[],
        split=split,
        parts={"train": train, "test": val},
        channels=data.channels,
        structures=data.structures,
    )
