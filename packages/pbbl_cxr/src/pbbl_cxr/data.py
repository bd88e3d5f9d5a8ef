"""Split manifests as the authors published them, and the in-memory dataset built from them.

A dataset folder holds ``train.csv`` (or several ``train_*.csv``, e.g. SbP's
``train_NIH.csv`` + ``train_MIMIC.csv``, concatenated), ``valid.csv`` and ``test.csv``.
Each manifest has an image-path column (``path``), a label column and, optionally, a
bias column. Known headers are detected (``path,pneumothorax,gender``,
``path,pneumonia,MIMIC``, ``path,label,bias``); others are named with
``--label-column`` / ``--bias-column``. The published files' quirks (UTF-8 BOM, CRLF,
an unnamed pandas index column) are absorbed by :func:`medcommon.data.read_csv_rows`.

Paths: ``--path-map OLD=NEW`` rewrites a path prefix first (for the authors' absolute
paths); a relative path then resolves against ``--image-root`` if given, else against
the manifest's folder; a path that does not exist is looked up by file name anywhere
under ``--image-root`` (NIH's nested ``images_0NN/images/`` folders), also with another
image suffix (the SbP CSVs' ``.jpg`` names for NIH's ``.png`` files).

Train-time augmentation (:func:`augment_batch`) is the authors': random resized crop +
horizontal flip (GbP) or flip only (SbP), drawn per image from ``(seed, step, index)``.
"""

from __future__ import annotations

import functools
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from medcommon.data import read_csv_rows
from medcommon.errors import InputError
from medcommon.io import read_image

KNOWN_COLUMNS = (("pneumothorax", "gender"), ("pneumonia", "MIMIC"), ("label", "bias"))
PATH_COLUMNS = ("path", "image", "image_path", "filename")
SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class DataOptions:
    """How to read manifests and images (command-line flags of ``train``/``evaluate``)."""

    label_column: str | None = None
    bias_column: str | None = None
    image_root: Path | None = None
    path_map: tuple[tuple[str, str], ...] = ()
    image_size: int = 32
    num_classes: int = 2


@dataclass
class Record:
    """One manifest row: the resolved image path, label, bias (-1 = unknown), and where it came from."""

    path: Path
    label: int
    bias: int
    where: str


def parse_path_map(items: Sequence[str]) -> tuple[tuple[str, str], ...]:
    """``["OLD=NEW", ...]`` -> ``(("OLD", "NEW"), ...)``."""
    out = []
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old:
            raise InputError("--path-map", f"expected OLD=NEW, got {item!r}")
        out.append((old, new))
    return tuple(out)


def data_options(
    flags: Mapping[str, Any], image_size: int = 32, num_classes: int = 2
) -> DataOptions:
    """:class:`DataOptions` from the ``--label-column``, ``--bias-column``, ``--image-root``
    and ``--path-map`` flags (``flags``: their argparse names, e.g. ``RunSpec.options``)."""
    root = flags.get("image_root")
    if root is not None and not Path(root).is_dir():
        raise InputError(root, "--image-root folder not found")
    return DataOptions(
        label_column=flags.get("label_column"),
        bias_column=flags.get("bias_column"),
        image_root=None if root is None else Path(root),
        path_map=parse_path_map(flags.get("path_map") or ()),
        image_size=image_size,
        num_classes=num_classes,
    )


def split_files(data_dir: str | Path, split: str) -> list[Path]:
    """The manifest file(s) of ``split`` in ``data_dir``."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise InputError(data_dir, "dataset folder not found")
    if split not in SPLITS:
        raise InputError("--split", f"unknown split {split!r}; choose from {', '.join(SPLITS)}")
    single = data_dir / f"{split}.csv"
    if single.is_file():
        return [single]
    many = sorted(data_dir.glob(f"{split}_*.csv"))
    if many:
        return many
    raise InputError(data_dir, f"no {split}.csv (or {split}_*.csv) manifest")


def detect_columns(
    columns: Sequence[str], path: Path, label_column: str | None, bias_column: str | None
) -> tuple[str, str, str | None]:
    """Return the ``(path, label, bias)`` column names of a manifest (bias may be None)."""
    lower = {c.lower(): c for c in columns}
    path_col = next((lower[c] for c in PATH_COLUMNS if c in lower), None)
    if path_col is None:
        raise InputError(path, f"missing column 'path'; columns are {', '.join(columns)}")
    if label_column is not None:
        if label_column not in columns:
            raise InputError(
                path, f"missing column {label_column!r}; columns are {', '.join(columns)}"
            )
        if bias_column is not None and bias_column not in columns:
            raise InputError(
                path, f"missing column {bias_column!r}; columns are {', '.join(columns)}"
            )
        return path_col, label_column, bias_column
    for lab, bias in KNOWN_COLUMNS:
        if lab in columns:
            if bias_column is not None and bias_column not in columns:
                raise InputError(
                    path, f"missing column {bias_column!r}; columns are {', '.join(columns)}"
                )
            return path_col, lab, bias_column or (bias if bias in columns else None)
    raise InputError(
        path,
        "cannot tell the label column from the header "
        f"({', '.join(columns)}); name it with --label-column (and --bias-column)",
    )


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm")


class ImageIndex:
    """Every image file under a root, by file name and by stem; built once per root.

    NIH ChestX-ray14 unpacks to ``images_001/images/*.png`` ... ``images_012/images/*.png``;
    the published SbP CSVs name NIH images ``<stem>.jpg`` (the authors converted them) and
    GbP ones ``./dataset/GbP/<stem>.png``. Looking a name up here finds the file wherever
    it lies under ``--image-root``, and with another image suffix if only that exists.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        stack = [root]
        while stack:  # os.scandir: one stat-free pass, ~1 s for NIH's 112,120 files
            with os.scandir(stack.pop()) as entries:
                for e in entries:
                    if e.is_dir(follow_symlinks=True):
                        stack.append(Path(e.path))
                    elif Path(e.name).suffix.lower() in IMAGE_SUFFIXES:
                        path = Path(e.path)
                        self.by_name.setdefault(e.name, []).append(path)
                        self.by_stem.setdefault(path.stem, []).append(path)

    def find(self, name: str, where: str) -> Path | None:
        """The one file called ``name`` (else the one with its stem and an image suffix).

        A name that occurs in two folders is an :class:`InputError` on ``where``: the
        match would be a guess.
        """
        hits = self.by_name.get(name, [])
        if not hits:  # another suffix: prefer .png, then .jpg, .jpeg, .dcm
            same_stem = self.by_stem.get(Path(name).stem, [])
            rank = {p: IMAGE_SUFFIXES.index(p.suffix.lower()) for p in same_stem}
            hits = [p for p in same_stem if rank[p] == min(rank.values())]
        if len(hits) > 1:
            raise InputError(
                where,
                f"{name} occurs {len(hits)} times under {self.root} ({hits[0]}, {hits[1]}); "
                "point --image-root at one copy or use --path-map",
            )
        return hits[0] if hits else None


@functools.lru_cache(maxsize=4)
def image_index(root: str) -> ImageIndex:
    """The :class:`ImageIndex` of ``root``, built on the first miss of a manifest and
    shared by its rows (:func:`read_manifest` clears it)."""
    return ImageIndex(Path(root))


def resolve_image_path(
    raw: str, manifest_dir: Path, opts: DataOptions, where: str = "manifest"
) -> Path:
    """Apply ``--path-map``, then resolve against ``--image-root`` or the manifest folder.

    If the result does not exist and ``--image-root`` is given, the file is looked up
    by name anywhere under the root (:class:`ImageIndex`: nested NIH folders; ``.jpg``
    names of the published SbP CSVs matched to ``.png`` files and the other way round).
    """
    mapped = False
    for old, new in opts.path_map:
        if raw.startswith(old):
            raw, mapped = new + raw[len(old) :], True
            break
    p = Path(raw)
    foreign = p.is_absolute() and not mapped  # e.g. the authors' machine
    if not p.is_absolute():
        p = (opts.image_root or manifest_dir) / p
    if opts.image_root is None or p.is_file():
        return p
    found = image_index(str(opts.image_root.resolve())).find(p.name, where)
    if found is not None:
        return found
    return opts.image_root / p.name if foreign else p  # reported as "image not found"


def _int_field(value: str, where: str, name: str, allowed: int) -> int:
    try:
        number = float(value)
    except ValueError:
        raise InputError(where, f"{name} {value!r} is not a number") from None
    if not number.is_integer() or not 0 <= number < allowed:
        raise InputError(
            where,
            f"{name} {value!r} is outside the {name} set {{{', '.join(map(str, range(allowed)))}}}",
        )
    return int(number)


def read_manifest(path: Path, opts: DataOptions) -> list[Record]:
    """Parse one manifest into :class:`Record` s (images are not opened here)."""
    image_index.cache_clear()  # a fresh look at --image-root per manifest (files may change)
    columns, rows = read_csv_rows(path)
    path_col, label_col, bias_col = detect_columns(
        columns, path, opts.label_column, opts.bias_column
    )
    records = []
    for row in rows:
        where = f"{path}:{row['_line']}"
        raw = row[path_col]
        if not raw:
            raise InputError(where, "empty image path")
        label = _int_field(row[label_col], where, "label", opts.num_classes)
        bias = -1
        if bias_col is not None and row[bias_col] != "":
            bias = _int_field(row[bias_col], where, "bias", max(2, opts.num_classes))
        records.append(
            Record(resolve_image_path(raw, path.parent, opts, where), label, bias, where)
        )
    return records


def read_split(data_dir: str | Path, split: str, opts: DataOptions) -> list[Record]:
    """All records of a split; an empty split or a missing image is an :class:`InputError`."""
    records: list[Record] = []
    files = split_files(data_dir, split)
    for f in files:
        records += read_manifest(f, opts)
    if not records:
        raise InputError(files[0], f"the {split} split is empty (no rows)")
    for r in records:
        if not r.path.is_file():
            raise InputError(r.where, f"image not found: {r.path}")
    return records


def to_unit_gray(arr: np.ndarray) -> np.ndarray:
    """Pixels -> float32 ``(y, x)`` in [0, 1].

    Colour is averaged; a multi-frame image keeps its first frame. ``uint8`` is divided
    by 255, ``uint16`` by 4095 (12-bit data) or 65535, anything else (DICOM after its
    LUTs, floats) is min-max scaled.
    """
    a = np.asarray(arr)
    if a.ndim == 3 and a.shape[-1] in (3, 4):
        a = a[..., :3].astype(np.float32).mean(-1)
    elif a.ndim == 3:
        a = a[0]
    if a.ndim != 2:
        raise ValueError(f"expected a 2-D image, got shape {a.shape}")
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype == np.uint16:
        return a.astype(np.float32) / (4095.0 if a.max() <= 4095 else 65535.0)
    a = a.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    return (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)


def preprocess_image(path: str | Path, size: int) -> torch.Tensor:
    """Read one image file (DICOM, PNG, JPEG) as the model sees it: ``(1, size, size)`` float32.

    :func:`medcommon.io.read_image` (DICOM: rescale, VOI window, MONOCHROME1 inverted),
    then :func:`to_unit_gray`, then an antialiased bilinear resize. Training, evaluation
    and ``predict`` all go through here.

    Raises:
        InputError: the file is missing, unreadable or not a 2-D image (names the file).
    """
    return read_model_image(path, size)[0]


def read_model_image(path: str | Path, size: int) -> tuple[torch.Tensor, dict]:
    """:func:`preprocess_image`, and the reader's facts about the file (``Image.meta``:
    ``format``, DICOM ``modality``, ...)."""
    try:
        image = read_image(path)
        pixels = to_unit_gray(image.array)
    except InputError:
        raise
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    t = torch.from_numpy(pixels)[None, None]
    if t.shape[-2:] != (size, size):
        t = torch.nn.functional.interpolate(
            t, size=(size, size), mode="bilinear", antialias=True, align_corners=False
        )
    return t[0], dict(image.meta)


def load_image(record: Record, size: int) -> torch.Tensor:
    """:func:`preprocess_image` of a manifest row; errors name the row, then the file."""
    try:
        return preprocess_image(record.path, size)
    except InputError as exc:
        raise InputError(record.where, f"{exc.where}: {exc.problem}") from None


class XrayDataset(Dataset):
    """Decoded images in memory with labels, true bias (-1 = unknown) and pseudo bias labels.

    Items are dicts: ``image`` (1, S, S) float32, ``label``, ``bias``, ``bias_hat``,
    ``index`` (long scalars). ``bias_hat`` starts as a copy of ``label`` (as in the
    authors' code) and is replaced by :meth:`with_bias_hat`.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        bias: torch.Tensor,
        paths: Sequence[str] = (),
        bias_hat: torch.Tensor | None = None,
    ) -> None:
        self.images = images  # (N, 1, S, S) float16 to halve memory
        self.labels = labels.long()
        self.bias = bias.long()
        self.bias_hat = (bias_hat if bias_hat is not None else labels).long().clone()
        self.paths = list(paths)

    def __len__(self) -> int:
        return self.labels.numel()

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {
            "image": self.images[i].float(),
            "label": self.labels[i],
            "bias": self.bias[i],
            "bias_hat": self.bias_hat[i],
            "index": torch.tensor(i),
        }

    @property
    def has_bias(self) -> bool:
        return bool((self.bias >= 0).all())

    def with_bias_hat(self, bias_hat: torch.Tensor) -> XrayDataset:
        """The same samples with new pseudo bias labels."""
        return XrayDataset(self.images, self.labels, self.bias, self.paths, bias_hat)


def load_split(
    data_dir: str | Path, split: str, opts: DataOptions, quiet: bool = True
) -> XrayDataset:
    """Read a split's manifests and decode all its images (every bad row is reported)."""
    records = read_split(data_dir, split, opts)
    s = opts.image_size
    images = torch.empty((len(records), 1, s, s), dtype=torch.float16)
    for i, r in enumerate(tqdm(records, desc=f"load {split}", disable=quiet, leave=False)):
        images[i] = load_image(r, s)
    return XrayDataset(
        images,
        torch.tensor([r.label for r in records]),
        torch.tensor([r.bias for r in records]),
        [str(r.path) for r in records],
    )


# ------------------------------------------------------------------ augmentation
AUGMENTATIONS = ("none", "crop-flip", "flip")


def _sample_generator(seed: int, step: int, index: int) -> torch.Generator:
    # One stream per (run seed, step, sample): the same draws on any number of processes
    # and after --resume, without touching the global RNG.
    return torch.Generator().manual_seed(((seed * 1_000_003 + step) * 1_000_033 + index) % 2**63)


def random_resized_crop_box(
    height: int,
    width: int,
    gen: torch.Generator,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` of a crop, as ``torchvision.transforms.RandomResizedCrop.get_params``.

    Area a uniform share ``scale`` of the image, aspect ratio log-uniform in ``ratio``;
    10 tries, then the central crop with the ratio clamped to ``ratio``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        u = torch.rand(2, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        aspect = math.exp(log_lo + (log_hi - log_lo) * u[1])
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (1,), generator=gen))
            left = int(torch.randint(0, width - w + 1, (1,), generator=gen))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def augment_batch(
    images: torch.Tensor, index: torch.Tensor, mode: str, seed: int, step: int
) -> torch.Tensor:
    """Augment a training batch ``(B, C, S, S)`` -> ``(B, C, S, S)`` (a new tensor).

    ``crop-flip`` (the authors' GbP transform): a random resized crop (scale 0.08-1,
    ratio 3/4-4/3) resized back to ``S`` (bilinear, antialiased), then a horizontal flip
    with probability 1/2; ``flip`` (SbP): the flip only; ``none``: unchanged. The authors
    crop the full-resolution file; here the crop is of the decoded ``S x S`` image.
    """
    if mode == "none":
        return images
    if mode not in AUGMENTATIONS:
        raise InputError("--set augment", f"unknown augmentation {mode!r}")
    out = images.clone()
    size = images.shape[-2:]
    for k, i in enumerate(index.tolist()):
        gen = _sample_generator(seed, step, int(i))
        img = images[k]
        if mode == "crop-flip":
            top, left, h, w = random_resized_crop_box(size[0], size[1], gen)
            crop = img[None, :, top : top + h, left : left + w].float()
            img = torch.nn.functional.interpolate(
                crop, size=size, mode="bilinear", antialias=True, align_corners=False
            )[0].to(images.dtype)
        if float(torch.rand(1, generator=gen)) < 0.5:
            img = img.flip(-1)
        out[k] = img
    return out
