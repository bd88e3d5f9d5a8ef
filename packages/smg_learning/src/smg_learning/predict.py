"""``smg-learning predict``: a mask file per input volume or image, from a run's segmenter.

- prostate runs: each NIfTI/MHA/NRRD volume ``(z, y, x)`` is segmented slice by slice
  at the segmenter's resolution (the training preprocessing: per-volume min-max, the
  run's ``adjacent_slices``, bilinear resize to ``image_size``) and written as
  ``<stem>_mask.nii.gz``: uint8, foreground = the task's foreground label (1), with
  the input's shape, spacing, origin and direction.
- fundus runs: each PNG/JPEG becomes ``<stem>_mask.png`` of the input's size, 0 and
  the foreground label (255).

Back at the input's in-plane size the mask is the sign of the bilinearly resized
logit margin (foreground minus background logit), so at the segmenter's own size it
is exactly the argmax that ``evaluate`` scores. Folders are searched recursively;
label files met in a folder (``*_segmentation.*``, ``*_mask.*``, files under a
``mask/`` folder) are skipped. Every input is read and checked before any mask is
written (an input holding a NaN or infinite value, or all zero, is refused, as in
training); each mask is written atomically.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medcommon.errors import InputError
from medcommon.io import Image, read_image, write_image
from medcommon.models import from_pretrained
from smg_learning.data import (
    RASTER_SUFFIXES,
    VOLUME_SUFFIXES,
    MaskSpec,
    check_intensities,
    fundus_channels,
    mask_spec,
    segmenter_input,
    volume_channels,
)
from smg_learning.run_io import SavedRun, read_run
from smg_learning.segmenter import Segmenter

OUT_SUFFIX = {"prostate": "_mask.nii.gz", "fundus": "_mask.png"}
_LABEL_STEMS = ("_segmentation", "_mask")


def _stem(path: Path, suffixes: tuple[str, ...]) -> str | None:
    low = path.name.lower()
    for s in suffixes:
        if low.endswith(s):
            return path.name[: -len(s)]
    return None


def find_inputs(paths: list[Path], task: str) -> list[Path]:
    """The input files of ``task`` named by ``paths`` (files, or folders searched recursively)."""
    suffixes = VOLUME_SUFFIXES if task == "prostate" else RASTER_SUFFIXES
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_file():
            if _stem(p, suffixes) is None:
                raise InputError(
                    p, f"not a {task} input (expected {', '.join(suffixes)}) for this run"
                )
            found.append(p)
        elif p.is_dir():
            for f in sorted(p.rglob("*")):
                stem = _stem(f, suffixes) if f.is_file() else None
                if stem is None or f.name.startswith("."):
                    continue
                if stem.lower().endswith(_LABEL_STEMS) or "mask" in f.relative_to(p).parts[:-1]:
                    continue  # label files of the public layouts, and our own outputs
                found.append(f)
        else:
            raise InputError(p, "file or folder not found")
    if not found:
        raise InputError(paths[0] if paths else "PATH", f"no {task} input files found")
    names: dict[str, Path] = {}
    for f in found:
        name = _stem(f, suffixes)
        if name in names and names[name] != f:
            raise InputError(f, f"same output name as {names[name]} (predict them separately)")
        names[name] = f
    return list(dict.fromkeys(found))


def _slices(img: Image, path: Path, task: str, saved: SavedRun) -> np.ndarray:
    """The segmenter's input slices ``(N, C, y, x)`` of one input (checked)."""
    arr = img.array
    if task == "prostate":
        if img.meta.get("channels_last") or arr.ndim not in (2, 3):
            raise InputError(path, f"expected a grey-level 2D or 3D volume, got shape {arr.shape}")
        check_intensities(arr, path, "volume")
        return volume_channels(arr if arr.ndim == 3 else arr[None], saved.cfg.adjacent_slices)
    if arr.ndim == 3 and arr.shape[2] == 4:
        arr = arr[..., :3]  # RGBA: the alpha channel carries no image
    if not (arr.ndim == 2 or (arr.ndim == 3 and arr.shape[2] == 3)):
        raise InputError(path, f"expected a grey or RGB image, got shape {arr.shape}")
    check_intensities(arr, path, "image")
    return fundus_channels(arr)


@torch.no_grad()
def predict_slices(model: Segmenter, x: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    """Class maps ``(N, *size)`` int64 of slices ``x`` ``(N, C, S, S)`` (0 = background).

    The logits are resized bilinearly to ``size`` before the argmax (at ``size == (S, S)``
    this is :meth:`Segmenter.predict`); with two classes it equals thresholding the
    logit margin at 0.
    """
    model.eval()
    out = []
    for i in range(0, x.shape[0], 64):  # the chunks of Segmenter.predict
        logits = model(x[i : i + 64])
        if tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        out.append(logits.argmax(1).cpu())
    return torch.cat(out).numpy()


def class_values(spec: MaskSpec) -> list[int]:
    """For each class k (the number of nested structures a pixel is in), a raw mask value
    the layout writes for it: prostate 0/1, fundus 0/255, DoFE 255 (background), 128 (rim)
    and 0 (cup) — so a predicted mask reads back like the layout's own masks."""
    candidates = list(spec.labels) if spec.labels else list(range(256))
    mapped = spec.label_map(np.array(candidates))
    values = []
    for k in range(len(spec.structures) + 1):
        hits = [c for c, m in zip(candidates, mapped) if m == k]
        values.append(int(hits[0]) if hits else k)
    return values


def _write_volume_like(path: Path, mask: np.ndarray, img: Image) -> None:
    """Write ``mask`` (atomically) with ``img``'s spacing, origin and direction."""
    write_image(path, mask, img.spacing, img.meta.get("origin"), img.meta.get("direction"))


def predict_paths(
    run: str | Path, paths: list[Path], out: str | Path | None = None, device: str = "cpu"
) -> list[Path]:
    """Write a mask per input under ``out`` (default ``RUN/predictions``); returns their paths.

    Raises:
        InputError: the run has no model, a path is missing or of the wrong kind, an
            input is unreadable or malformed; nothing is written then.
    """
    saved = read_run(run, need_split=False)
    task = saved.task
    if task not in OUT_SUFFIX:
        raise InputError(saved.path, f"unknown task {task!r} in the run")
    model_dir = saved.run.model_dir
    if not (model_dir / "model.safetensors").is_file():
        raise InputError(saved.path, "no trained model (model/; is the run finished?)")
    inputs = find_inputs(list(paths), task)
    for p in inputs:  # read and check everything before writing anything
        _slices(read_image(p), p, task, saved)
    model = from_pretrained(Segmenter, model_dir).to(device)
    # a three-class fundus model was trained on the DoFE layout's nested disc and cup
    layout = "dofe" if task == "fundus" and model.config.out_channels == 3 else task
    values = np.array(class_values(mask_spec(saved.cfg, layout)))
    out = Path(out) if out is not None else saved.path / "predictions"
    suffixes = VOLUME_SUFFIXES if task == "prostate" else RASTER_SUFFIXES
    written = []
    for p in inputs:
        img = read_image(p)
        slices = _slices(img, p, task, saved)
        size = tuple(slices.shape[-2:])
        x = segmenter_input(slices, saved.cfg.image_size).to(device)
        classes = predict_slices(model, x, size)
        mask = values[classes].astype(np.uint8 if values.max() <= 255 else np.uint16)
        target = out / f"{_stem(p, suffixes)}{OUT_SUFFIX[task]}"
        if task == "prostate":
            _write_volume_like(target, mask if img.array.ndim == 3 else mask[0], img)
        else:
            write_image(target, mask[0])
        written.append(target)
    return written


__all__ = ["OUT_SUFFIX", "find_inputs", "predict_paths", "predict_slices"]
