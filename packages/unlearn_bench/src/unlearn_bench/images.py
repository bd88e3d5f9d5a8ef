"""Synthetic medical images whose modality and finding are visible, plus an identity.

An image is a function of three things:

- the **modality** (CT, MRI, X-ray, ultrasound): the background rendering
  (a bright cortical ring, smooth soft tissue, a vertical attenuation gradient,
  a speckled fan);
- the **finding** (six patterns of shape, brightness and position);
- the **identity** of the entity: a per-entity body outline and texture, so each
  patient (or condition) has its own recognisable anatomy. Two images of the same
  entity share the identity and differ in noise, a small shift and contrast: the
  "other image" used by the test split.

The model can therefore learn to *read* modality and finding from pixels (a skill
that transfers to held-out entities), while everything else about an entity has to
be memorised.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medcommon import synthetic as syn
from medcommon.errors import InputError

MODALITIES = ("CT", "MRI", "X-ray", "ultrasound")
FINDINGS = ("nodule", "cyst", "effusion", "mass", "calcification", "no finding")


def identity_params(rng: np.random.Generator) -> dict:
    """The per-entity anatomy: body centre, radii, rotation and a texture seed."""
    return {
        "center": [float(rng.uniform(-0.15, 0.15)), float(rng.uniform(-0.15, 0.15))],
        "radii": [float(rng.uniform(0.55, 0.85)), float(rng.uniform(0.5, 0.85))],
        "angle": float(rng.uniform(0, np.pi)),
        "texture_seed": int(rng.integers(0, 2**31 - 1)),
        "organ_center": [float(rng.uniform(-0.3, 0.3)), float(rng.uniform(-0.3, 0.3))],
    }


def render(
    size: int, modality: str, finding: str, identity: dict, rng: np.random.Generator
) -> np.ndarray:
    """One ``(size, size)`` uint8 image; ``rng`` drives only the acquisition noise."""
    shape = (size, size)
    yy, xx = syn.grid(shape)
    texture = syn.smooth_noise(
        shape, np.random.default_rng(identity["texture_seed"]), sigma=max(1.0, size / 10)
    )
    shift = rng.uniform(-0.05, 0.05, size=2)
    center = [identity["center"][0] + shift[0], identity["center"][1] + shift[1]]
    body = syn.ellipse(shape, center, identity["radii"], identity["angle"]).astype(float)
    organ = syn.ellipse(
        shape,
        [identity["organ_center"][0] + shift[0], identity["organ_center"][1] + shift[1]],
        [0.22, 0.3],
        identity["angle"],
    ).astype(float)
    if modality == "CT":
        inner = syn.ellipse(shape, center, [r * 0.85 for r in identity["radii"]], identity["angle"])
        img = 0.05 + body * 0.35 + (body - inner) * 0.55 + 0.12 * organ + 0.06 * texture * body
    elif modality == "MRI":
        img = 0.1 + body * (0.45 + 0.18 * texture) + 0.2 * organ
    elif modality == "X-ray":
        img = 0.15 + 0.5 * (yy + 1) / 2 * body + 0.1 * texture * body - 0.15 * organ
    else:  # ultrasound: a speckled fan
        fan = (yy > -0.9) & (np.abs(xx) < (yy + 1.0) * 0.6)
        speckle = np.abs(rng.normal(0, 1, shape))
        img = fan * (0.2 + 0.25 * speckle * (0.6 + 0.4 * (texture > 0))) + 0.2 * organ * fan
    img = img + _finding(shape, finding, identity, rng)
    img = syn.add_noise(img, rng, sigma=0.03)
    img = img * rng.uniform(0.9, 1.1)
    return syn.to_uint(np.clip(img, 0, 1))


def _finding(shape, finding: str, identity: dict, rng: np.random.Generator) -> np.ndarray:
    oc = identity["organ_center"]
    if finding == "nodule":  # small bright round spot
        return 0.5 * syn.ellipse(shape, [oc[0] - 0.1, oc[1] + 0.1], [0.12, 0.12])
    if finding == "cyst":  # larger dark round hole
        return -0.45 * syn.ellipse(shape, oc, [0.25, 0.25])
    if finding == "effusion":  # bright band at the bottom
        yy, _ = syn.grid(shape)
        return 0.45 * (yy > 0.55)
    if finding == "mass":  # big irregular bright blob
        return 0.4 * syn.random_blob(shape, rng, oc, 0.3, irregularity=0.3)
    if finding == "calcification":  # a few tiny very bright dots
        out = np.zeros(shape)
        for dy, dx in ((-0.3, -0.3), (0.3, 0.2), (0.0, 0.4)):
            out += 0.7 * syn.ellipse(shape, [oc[0] + dy, oc[1] + dx], [0.07, 0.07])
        return out
    return np.zeros(shape)


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".dcm", ".tif", ".tiff", ".bmp")


def list_user_images(folder: Path) -> list[Path]:
    """The image files of a user folder, sorted (``--images DIR``)."""
    if not folder.is_dir():
        raise InputError(folder, "image folder not found")
    files = sorted(
        p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
    )
    if not files:
        raise InputError(folder, f"no image files ({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_user_image(path: Path, size: int) -> np.ndarray:
    """Read any 2D image (PNG/JPEG/DICOM...) as a ``(size, size)`` uint8 array."""
    from PIL import Image

    from medcommon.io import read_image

    arr = np.asarray(read_image(path).array, dtype=np.float64)
    arr = np.squeeze(arr)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., :3].mean(-1)
    if arr.ndim == 3:  # a volume: its middle slice
        arr = arr[arr.shape[0] // 2]
    if arr.ndim != 2:
        raise InputError(path, f"expected a 2D image, got shape {arr.shape}")
    lo, hi = np.percentile(arr, [0.5, 99.5])
    arr = syn.to_uint((arr - lo) / (hi - lo) if hi > lo else arr * 0)
    return np.asarray(Image.fromarray(arr).resize((size, size), Image.BILINEAR))
