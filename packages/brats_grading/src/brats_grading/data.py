"""BraTS training folders: discovery (2018/2019 and 2020 layouts), preprocessing, folds.

Layouts (as the organisers ship them; ``.nii.gz`` or ``.nii``):

- **2018/2019**: ``DATA/HGG/<case>/<case>_{t1,t1ce,t2,flair}.nii.gz`` and ``DATA/LGG/...``;
  the grade is the folder. 2018 adds ``survival_data.csv``; 2019 adds
  ``survival_data.csv`` and ``name_mapping.csv`` (Grade, BraTS_2017_subject_ID,
  BraTS_2018_subject_ID, TCGA_TCIA_subject_ID, BraTS_2019_subject_ID).
- **2020**: ``DATA/<case>/<case>_{t1,...}.nii.gz`` plus ``DATA/name_mapping.csv`` (the 2019
  columns and BraTS_2020_subject_ID), whose ``Grade`` column gives the grades, and
  ``survival_info.csv``.

Patients: the releases overlap (2018 is within 2019, 2019 within 2020) under new
names. ``name_mapping.csv``, where present, links a row's IDs of every year, so a
case's patient is the row's TCGA/TCIA ID (or its oldest BraTS ID): the same person
is one patient in the folds and in :func:`training_overlap`.

Preprocessing (:func:`preprocess_case`): per modality z-score within its non-zero
(brain) voxels, background set to 0; crop to the bounding box of the union brain
mask; trilinear resize to the preset's ``(slices, y, x)``.

Labels: HGG = 1 (the positive class of sensitivity/F1), LGG = 0.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from brats_grading.config import MODALITIES
from medcommon.data import check_disjoint, patient_kfold, read_csv_rows
from medcommon.errors import InputError
from medcommon.io import read_image

GRADES = {"HGG": 1, "LGG": 0}
_CASE_ID = re.compile(r"^(?:brats\d{2}_)?(?P<patient>.+?)(?:_\d+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Case:
    """One subject: its id, patient id (for splits), grade label and modality files."""

    name: str
    patient: str
    label: int | None
    files: dict[str, Path]


def patient_of(case: str, layout: str) -> str:
    """Patient id of a case: 2018/2019 names ``Brats18_TCIA01_131_1`` -> ``TCIA01_131``."""
    if layout == "2020":
        return case
    m = _CASE_ID.match(case)
    return m.group("patient") if m else case


# The ID columns of ``name_mapping.csv``, newest release first. 2019's file stops at
# BraTS_2019_subject_ID; 2020's adds BraTS_2020_subject_ID. Missing IDs read "NA".
ID_COLUMNS = (
    "BraTS_2020_subject_ID",
    "BraTS_2019_subject_ID",
    "BraTS_2018_subject_ID",
    "BraTS_2017_subject_ID",
    "BraTS_subject_ID",
)
TCIA_COLUMN = "TCGA_TCIA_subject_ID"
_MISSING = {"", "na", "n/a", "nan", "none", "-"}


def _present(value: str | None) -> str | None:
    value = (value or "").strip()
    return None if value.lower() in _MISSING else value


@dataclass(frozen=True)
class NameMapping:
    """One release's ``name_mapping.csv``: which BraTS IDs (any year) are one patient.

    ``patient``: every ID the file names (2017-2020 subject IDs and the TCGA/TCIA ID)
    -> the patient's canonical id; ``grade``: every BraTS ID -> its ``Grade`` label;
    ``id_column``: the newest BraTS ID column present (the names of this release's
    case folders); ``aliases``: canonical id -> all BraTS IDs of that patient;
    ``current``: every BraTS ID of a row -> the row's ``id_column`` name (how this
    release calls that scan).
    """

    path: Path
    columns: list[str]
    id_column: str
    patient: dict[str, str]
    grade: dict[str, int]
    aliases: dict[str, list[str]]
    current: dict[str, str]
    rows: list[dict[str, str]]


def canonical_patient(row: dict[str, str]) -> str | None:
    """A patient's id that every release's mapping row gives alike.

    The TCGA/TCIA subject ID when present (the source archive's patient); otherwise
    the oldest BraTS ID (2017 -> 2020) with its ``BratsNN_`` prefix and scan suffix
    removed (:func:`patient_of`), since a newer release copies the older columns.
    """
    tcia = _present(row.get(TCIA_COLUMN))
    if tcia:
        return tcia
    for col in (*reversed(ID_COLUMNS[:4]), ID_COLUMNS[4]):
        name = _present(row.get(col))
        if name:
            return name_patient(name)
    return None


def name_patient(name: str) -> str:
    """:func:`patient_of` for a BraTS ID of any release, the layout read from its prefix."""
    return patient_of(name, "2020" if name.lower().startswith("brats20_") else "2019")


def read_name_mapping(path: str | Path) -> NameMapping:
    """Read ``name_mapping.csv`` of any release (2019 or 2020 columns; see :data:`ID_COLUMNS`)."""
    path = Path(path)
    columns, rows = read_csv_rows(path)
    id_col = next((c for c in ID_COLUMNS if c in columns), None)
    if id_col is None:
        raise InputError(path, f"no BraTS_<year>_subject_ID column (columns: {', '.join(columns)})")
    patient: dict[str, str] = {}
    grade: dict[str, int] = {}
    aliases: dict[str, list[str]] = {}
    current: dict[str, str] = {}
    for row in rows:
        pid = canonical_patient(row)
        if pid is None:
            raise InputError(f"{path}:{row['_line']}", "row names no subject ID")
        names = [n for c in ID_COLUMNS if (n := _present(row.get(c)))]
        label = GRADES.get((row.get("Grade") or "").strip().upper())
        here = _present(row.get(id_col))
        for n in names:
            patient[n] = pid
            if here:
                current[n] = here
            if label is not None:
                grade[n] = label
        tcia = _present(row.get(TCIA_COLUMN))
        if tcia:
            patient[tcia] = pid
        aliases.setdefault(pid, [])
        aliases[pid] += [n for n in names if n not in aliases[pid]]
    return NameMapping(path, columns, id_col, patient, grade, aliases, current, rows)


def find_name_mapping(folder: Path) -> NameMapping | None:
    """The ``name_mapping.csv`` of a training folder, or None if it has none."""
    path = Path(folder) / "name_mapping.csv"
    return read_name_mapping(path) if path.is_file() else None


def case_files(folder: Path, case: str | None = None) -> dict[str, Path]:
    """The four modality files of a case folder; a missing one is an :class:`InputError`."""
    case = case or folder.name
    files = {}
    for mod in MODALITIES:
        found = [folder / f"{case}_{mod}{ext}" for ext in (".nii.gz", ".nii")]
        found = [p for p in found if p.is_file()]
        if not found:
            raise InputError(
                folder / f"{case}_{mod}.nii.gz",
                f"case {case}: modality {mod} missing" + _unexpected_files(folder, case),
            )
        files[mod] = found[0]
    return files


def _unexpected_files(folder: Path, case: str) -> str:
    """A hint naming the image files of ``folder`` that are not ``<case>_<modality>``
    (a renamed or misspelt file: ``_t1c`` for ``_t1ce``, another case's prefix)."""
    if not folder.is_dir():
        return ""
    known = {f"{case}_{m}{ext}" for m in (*MODALITIES, "seg") for ext in (".nii.gz", ".nii")}
    odd = sorted(
        p.name
        for p in folder.iterdir()
        if p.name.endswith((".nii.gz", ".nii")) and p.name not in known
    )
    if not odd:
        return ""
    return (
        f"; the folder holds {', '.join(odd)}, expected {case}_"
        f"{{{','.join(MODALITIES)}}}.nii.gz (or .nii), named after the folder"
    )


def _subdirs(path: Path) -> list[Path]:
    return sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))


def detect_layout(data: Path) -> str:
    """``"2019"`` (2018 and 2019: ``HGG/`` + ``LGG/``) or ``"2020"`` (flat case folders).

    The grade folders decide first: a 2019 release ships ``HGG/``, ``LGG/`` *and* a
    ``name_mapping.csv`` (without 2020 IDs), so the CSV alone does not make a 2020 folder.
    """
    data = Path(data)
    if not data.is_dir():
        raise InputError(data, "data folder not found")
    if (data / "HGG").is_dir() or (data / "LGG").is_dir():
        return "2019"
    if (data / "name_mapping.csv").is_file():
        return "2020"
    subs = _subdirs(data)
    if not subs:
        raise InputError(
            data,
            "empty folder: expected HGG/ and LGG/ (2018/2019) or case folders with name_mapping.csv (2020)",
        )
    raise InputError(
        data / "name_mapping.csv",
        "not found: a 2020-style folder of cases needs name_mapping.csv with a Grade column "
        "(2018/2019 folders need HGG/ and LGG/)",
    )


def discover(data: str | Path) -> tuple[str, list[Case]]:
    """Find every case and its grade; returns ``(layout, cases)`` sorted by name.

    A case's ``patient`` comes from ``name_mapping.csv`` when the folder has one
    (:func:`canonical_patient`: the same person under the 2017-2020 IDs is one
    patient), else from its name (:func:`patient_of`). Side files such as
    ``survival_data.csv`` / ``survival_info.csv`` are not needed and are ignored.
    """
    data = Path(data)
    layout = detect_layout(data)
    mapping = find_name_mapping(data)
    cases: list[Case] = []
    if layout == "2019":
        for grade, label in GRADES.items():
            if not (data / grade).is_dir():
                continue
            for folder in _subdirs(data / grade):
                name = folder.name
                pid = mapping.patient.get(name) if mapping else None
                cases.append(Case(name, pid or patient_of(name, layout), label, case_files(folder)))
    else:
        assert mapping is not None  # detect_layout found the file
        path = mapping.path
        if "Grade" not in mapping.columns:
            raise InputError(path, f"no Grade column (columns: {', '.join(mapping.columns)})")
        for row in mapping.rows:
            name, grade = _present(row[mapping.id_column]), row["Grade"].strip().upper()
            if name is None:
                continue  # a patient of an older release that this one dropped
            if grade not in GRADES:
                raise InputError(
                    f"{path}:{row['_line']}", f"Grade {row['Grade']!r} is not HGG or LGG"
                )
            folder = data / name
            if not folder.is_dir():
                raise InputError(
                    folder, f"case {name} is listed in name_mapping.csv but has no folder"
                )
            cases.append(Case(name, mapping.patient[name], GRADES[grade], case_files(folder)))
    if not cases:
        raise InputError(data, "no cases found")
    return layout, sorted(cases, key=lambda c: c.name)


def training_overlap(
    trained: Sequence[str],
    cases: Sequence[Case],
    mapping: NameMapping | None,
    same_name: bool = False,
) -> dict[str, str]:
    """Cases whose patient was trained on under another name: ``{case: training name}``.

    ``trained``: the case names of a run's training split (any release);
    ``cases``: the cases about to be evaluated, their ``patient`` from ``mapping``
    (the evaluated data's ``name_mapping.csv``), which also maps the training names
    to patients. A case trained on under its own name is not listed (that is
    ``--split train``, asked for on purpose) unless ``same_name``.
    """

    def pid(name: str) -> str:
        return (mapping.patient.get(name) if mapping else None) or name_patient(name)

    seen: dict[str, str] = {}
    for name in trained:
        seen.setdefault(pid(name), name)
    own = set(trained)
    return {
        c.name: seen[c.patient]
        for c in cases
        if (same_name or c.name not in own) and c.patient in seen
    }


def load_case(case: Case) -> np.ndarray:
    """Read the four modalities as ``(4, z, y, x)`` float32, checking shape and content."""
    volumes = []
    shape = None
    for mod in MODALITIES:
        path = case.files[mod]
        arr = np.asarray(read_image(path).array)
        if arr.ndim == 4 and arr.shape[-1] == 1:
            arr = arr[..., 0]
        if arr.ndim != 3:
            raise InputError(
                path, f"case {case.name}: expected a 3-D volume, got shape {arr.shape}"
            )
        if shape is None:
            shape = arr.shape
        elif arr.shape != shape:
            raise InputError(
                path,
                f"case {case.name}: {mod} has shape {arr.shape}, other modalities {shape}",
            )
        arr = arr.astype(np.float32)
        if not np.isfinite(arr).all():
            raise InputError(path, f"case {case.name}: {mod} contains NaN or infinite values")
        if not np.any(arr):
            raise InputError(path, f"case {case.name}: {mod} is all zero")
        volumes.append(arr)
    return np.stack(volumes)


def preprocess_case(volumes: np.ndarray, shape: Sequence[int]) -> np.ndarray:
    """Z-score in the brain mask, crop to the brain, resize: ``(4, z, y, x) -> (4, *shape)``.

    Each modality is normalised with the mean and std of its own non-zero voxels;
    the crop is the bounding box of the union of the modalities' non-zero voxels.
    """
    out = np.zeros_like(volumes, dtype=np.float32)
    for c, vol in enumerate(volumes):
        mask = vol != 0
        vals = vol[mask]
        std = float(vals.std())
        out[c][mask] = (vals - vals.mean()) / (std if std > 0 else 1.0)
    brain = (volumes != 0).any(axis=0)
    idx = np.nonzero(brain)
    box = tuple(slice(int(i.min()), int(i.max()) + 1) for i in idx)
    cropped = torch.from_numpy(np.ascontiguousarray(out[(slice(None), *box)]))
    resized = F.interpolate(
        cropped[None], size=tuple(int(s) for s in shape), mode="trilinear", align_corners=False
    )
    return resized[0].numpy()


def load_cases(cases: Sequence[Case], shape: Sequence[int], quiet: bool = True) -> np.ndarray:
    """Read and preprocess ``cases`` into one ``(N, 4, *shape)`` float16 array.

    float16 halves the memory of the in-RAM set (the ``full`` preset at 128^3 holds
    about 16 MB per case); batches are cast back to float32.
    """
    arrays = np.zeros((len(cases), len(MODALITIES), *shape), np.float16)
    for i, case in enumerate(tqdm(cases, desc="load", disable=quiet, leave=False)):
        arrays[i] = preprocess_case(load_case(case), shape)
    return arrays


class GradingDataset(Dataset):
    """Preprocessed cases as ``{"x": (4, z, y, x) float32, "y": int64, "index": int64}``.

    ``flip``: random left-right flip (the last axis) with probability 1/2, drawn from
    the torch RNG (which the trainer seeds and checkpoints).
    """

    def __init__(self, arrays: np.ndarray, labels: Sequence[int], flip: bool = False) -> None:
        self.arrays = arrays
        self.labels = np.asarray(labels, dtype=np.int64)
        self.flip = flip

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        x = torch.from_numpy(self.arrays[i].astype(np.float32))
        if self.flip and torch.rand(()) < 0.5:
            x = x.flip(-1)
        return {"x": x, "y": torch.tensor(self.labels[i]), "index": torch.tensor(i)}


def make_split(cases: Sequence[Case], folds: int, fold: int, seed: int) -> dict[str, list[str]]:
    """Patient-level stratified k-fold: ``{"train": [case names], "test": [...]}`` for ``fold``."""
    labels = [c.label for c in cases]
    if len(set(labels)) < 2:
        raise InputError("data", "need both HGG and LGG cases for grading")
    n_minority = min(sum(1 for v in labels if v == g) for g in (0, 1))
    if folds > n_minority:
        raise InputError("--folds", f"{folds} folds but only {n_minority} cases of the rarer grade")
    splits = patient_kfold([c.patient for c in cases], folds, seed=seed, labels=labels)
    train_idx, test_idx = splits[fold]
    split = {
        "train": [cases[i].name for i in train_idx],
        "test": [cases[i].name for i in test_idx],
    }
    check_disjoint(
        {
            "train": [cases[i].patient for i in train_idx],
            "test": [cases[i].patient for i in test_idx],
        }
    )
    return split


def class_weights(labels: Sequence[int]) -> torch.Tensor:
    """Inverse-frequency weights ``w_c = N / (2 N_c)`` (balanced classes weigh 1 each)."""
    y = np.asarray(labels)
    counts = np.array([max(int((y == c).sum()), 1) for c in (0, 1)], dtype=np.float64)
    return torch.tensor(len(y) / (2.0 * counts), dtype=torch.float32)
