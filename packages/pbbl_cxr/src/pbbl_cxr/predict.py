"""``predict``: p(y=1 | x) of new image files with a trained run's model.

Inputs are files or folders (searched recursively for ``.dcm``/``.dicom``/``.png``/
``.jpg``/``.jpeg``). Each image is preprocessed exactly as in training and evaluation
(:func:`pbbl_cxr.data.preprocess_image` at the run model's ``image_size``) and scored
with the plain logits, as at inference (the bias-balanced prior is a training-time
term only; Luo et al. 2022, Sec. 2.3). Every file is read before any output is
written, so one unreadable file is an :class:`InputError` naming it and no output.

A DICOM file whose ``Modality`` or ``BodyPartExamined`` says it is not a chest
radiograph (an extremity CR, an RGB secondary capture, a CT slice) is scored all the
same, with one ``warning:`` line on stderr naming it (:func:`not_a_chest_radiograph`):
the model was trained on chest radiographs, and its probability for anything else means
nothing. Files without these attributes (PNG, JPEG, anonymised DICOM) are not warned about.
"""

from __future__ import annotations

import csv
import io
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from pbbl_cxr.data import XrayDataset, read_model_image
from pbbl_cxr.evaluate import load_run_model, predict_probs

IMAGE_SUFFIXES = (".dcm", ".dicom", ".png", ".jpg", ".jpeg")
CHEST_MODALITIES = ("CR", "DX", "RG")
"""DICOM Modality values of a radiograph: computed, digital, and film-screen radiography."""
CHEST_BODY_PARTS = ("CHEST", "THORAX", "LUNG", "TORAX")
"""A BodyPartExamined containing one of these (``CHEST``, ``PORT CHEST``, ``LUNGS``,
``TORAX``) names the chest."""


def not_a_chest_radiograph(path: str | Path, meta: dict) -> str | None:
    """Why a decoded file is not a chest radiograph by its own DICOM header, or ``None``.

    ``Modality`` outside :data:`CHEST_MODALITIES` (``OT`` of a secondary capture, ``CT``,
    ``MR``, ...) or a ``BodyPartExamined`` naming no part of :data:`CHEST_BODY_PARTS`
    (``EXTREMITY``, ``HAND``, ...). An empty or missing attribute says nothing; files
    that are not DICOM are never flagged.
    """
    if meta.get("format") != "dicom":
        return None
    import pydicom

    modality = str(meta.get("modality", "")).strip().upper()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["BodyPartExamined"])
        body = str(ds.get("BodyPartExamined", "") or "").strip().upper()
    except Exception:  # the pixels were read already; a header we cannot reread says nothing
        body = ""
    reasons = []
    if modality and modality not in CHEST_MODALITIES:
        reasons.append(f"Modality {modality}")
    if body and not any(part in body for part in CHEST_BODY_PARTS):
        reasons.append(f"BodyPartExamined {body}")
    if not reasons:
        return None
    photometric = str(meta.get("photometric_interpretation", ""))
    colour = f", {photometric} colour" if meta.get("channels_last") and photometric else ""
    return f"{' and '.join(reasons)}{colour}: not a chest radiograph"


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
    notes = []
    for i, f in enumerate(tqdm(files, desc="read", disable=quiet, leave=False)):
        # all read before anything is scored or written
        images[i], meta = read_model_image(f, size)
        why = not_a_chest_radiograph(f, meta)
        if why is not None:
            notes.append(f"warning: {f}: {why}; scored anyway, but the model was trained on "
                         "chest radiographs")  # fmt: skip
    for note in notes:  # one line per file, after the progress bar
        print(note, file=sys.stderr)
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
