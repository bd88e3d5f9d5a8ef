"""``predict``: p(y=1 | x) of new image files with a trained run's model.

Inputs are files or folders (searched recursively for ``.dcm``/``.dicom``/``.png``/
``.jpg``/``.jpeg``). Each image is preprocessed exactly as in training and evaluation
(:func:`pbbl_cxr.data.preprocess_image` at the run model's ``image_size``) and scored
with the plain logits, as at inference (the bias-balanced prior is a training-time
term only; Luo et al. 2022, Sec. 2.3). Every file is read before any output is
written, so one unreadable file is an :class:`InputError` naming it and no output.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from pbbl_cxr.data import XrayDataset, preprocess_image
from pbbl_cxr.evaluate import load_run_model, predict_probs

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")


def collect_images(paths: Sequence[str | Path]) -> list[Path]:
    """Files as given, plus image files found recursively (sorted) in the given folders."""
    files: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            found = sorted(
                p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not found:
                raise InputError(path, "no DICOM, PNG or JPEG files in this folder")
            files += found
        elif path.is_file():
            files.append(path)
        else:
            raise InputError(path, "file or folder not found")
    return files


def predict_files(
    run_dir: str | Path,
    paths: Sequence[str | Path],
    device: str = "cpu",
    quiet: bool = True,
) -> list[tuple[str, float]]:
    """``[(file, p(y=1)), ...]`` for every image under ``paths`` (binary runs only).

    The images go through the same :class:`~pbbl_cxr.data.XrayDataset` (float16 pixels
    in memory) and :func:`~pbbl_cxr.evaluate.predict_probs` as ``evaluate``, so a file
    that is also in a split gets the probability ``evaluate`` scored it with.
    """
    model = load_run_model(run_dir)
    if model.config.num_classes != 2:
        raise InputError(
            run_dir, f"predict needs a binary model, not {model.config.num_classes} classes"
        )
    files = collect_images(paths)
    size = model.config.image_size
    images = torch.empty((len(files), 1, size, size), dtype=torch.float16)
    for i, f in enumerate(tqdm(files, desc="read", disable=quiet, leave=False)):
        images[i] = preprocess_image(f, size)  # all read before anything is scored or written
    n = len(files)
    dataset = XrayDataset(images, torch.zeros(n), torch.full((n,), -1), [str(f) for f in files])
    probs = predict_probs(model.to(device), dataset, device=device)[:, 1]
    return [(str(f), float(p)) for f, p in zip(files, probs)]


def predictions_csv(rows: Sequence[tuple[str, float]]) -> str:
    """``path,p_y1`` then one line per image (6 decimals; paths quoted where CSV needs it)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["path", "p_y1"])
    writer.writerows([path, f"{p:.6f}"] for path, p in rows)
    return buf.getvalue()


def write_predictions(rows: Sequence[tuple[str, float]], out: str | Path | None) -> str:
    """The CSV text, written atomically to ``out`` when given; returns the text."""
    text = predictions_csv(rows)
    if out is not None:
        if Path(out).is_dir():
            raise InputError(out, "is a folder; --out takes a file name")
        write_text_atomic(out, text)
    return text
