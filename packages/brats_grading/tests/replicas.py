"""Replicas of the BraTS 2018, 2019 and 2020 training folders as released, with tiny volumes.

Each release keeps its own names for the same patients, as the organisers did:
2018 ``Brats18_<inst>_<n>_1`` (no name mapping), 2019 ``BraTS19_<inst>_<n>_1`` with a
``name_mapping.csv`` of the 2019 columns, 2020 ``BraTS20_Training_NNN`` with the 2020
columns; 2020's volumes are ``.nii`` (uncompressed), the others ``.nii.gz``. Some
patients were renamed between 2018 and 2019 (their names share nothing), and the
2020 folder holds one patient twice (two scans, two rows with the same TCGA ID).

:data:`PATIENTS` is the truth the tests compare against: each entry is one person.
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from brats_grading.synth import make_case
from medcommon.io import write_image

SHAPE = (12, 24, 24)
COLUMNS_2019 = [
    "Grade",
    "BraTS_2017_subject_ID",
    "BraTS_2018_subject_ID",
    "TCGA_TCIA_subject_ID",
    "BraTS_2019_subject_ID",
]
COLUMNS_2020 = [*COLUMNS_2019, "BraTS_2020_subject_ID"]


@dataclass(frozen=True)
class Patient:
    """One person and their case names in each release (None: not in that release)."""

    grade: str
    tcia: str
    ids: dict[str, str | None]  # "2017".."2020" -> case name
    extra_2020: str | None = None  # a second 2020 scan of the same person


def _patients() -> list[Patient]:
    out = []
    for i in range(11):
        grade = "HGG" if i % 5 not in (1, 3) else "LGG"  # 7 HGG, 4 LGG
        inst = f"TCIA0{i % 3 + 1}_{100 + i}"
        tcia = f"TCGA-0{i % 3 + 2}-{1000 + i:04d}" if i < 8 else "NA"  # 2013 cohort: NA
        old = f"2013_{i}" if i >= 8 else inst
        ids: dict[str, str | None] = {
            "2017": f"Brats17_{old}_1" if i < 7 else None,
            "2018": f"Brats18_{old}_1" if i < 9 else None,
            # two patients renamed in 2019 (nothing in common with the 2018 name)
            "2019": f"BraTS19_{'CBICA_A' + 'BCDEFGHIJKL'[i] + 'A' if i in (2, 5, 9, 10) else old}_1",
            "2020": f"BraTS20_Training_{(i * 7) % 11 + 1:03d}",  # a shuffled numbering
        }
        if i == 10:
            ids["2018"] = None
        out.append(Patient(grade, tcia, ids, "BraTS20_Training_012" if i == 4 else None))
    return out


PATIENTS = _patients()


def names_2020(p: Patient) -> list[str]:
    return [n for n in (p.ids["2020"], p.extra_2020) if n]


def patient_groups(year: str) -> list[set[str]]:
    """The true partition of a release's case names into patients."""
    groups = []
    for p in PATIENTS:
        names = names_2020(p) if year == "2020" else [p.ids[year]]
        if any(names):
            groups.append({n for n in names if n})
    return groups


def grade_of(name: str) -> str:
    for p in PATIENTS:
        if name in (*p.ids.values(), p.extra_2020):
            return p.grade
    raise KeyError(name)


def _csv(path: Path, header: list[str], rows: list[list[str]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    path.write_text(buf.getvalue(), encoding="utf-8")


def _case(folder: Path, name: str, hgg: bool, rng: np.random.Generator, ext: str) -> None:
    folder.mkdir(parents=True)
    for mod, arr in make_case(hgg, SHAPE, rng).items():
        data = arr if mod == "seg" else np.round(arr * 1000).clip(0, 32767).astype(np.int16)
        write_image(folder / f"{name}_{mod}{ext}", data, spacing=(1.0, 1.0, 1.0))


def write_release(root: Path, year: str, seed: int = 0) -> Path:
    """Write the ``year`` ("2018", "2019", "2020") replica under ``root/year``."""
    rng = np.random.default_rng(seed)
    out = Path(root) / year
    out.mkdir(parents=True)
    mapping, survival = [], []
    for p in PATIENTS:
        names = names_2020(p) if year == "2020" else [p.ids[year]]
        for name in names:
            if name is None:
                continue
            folder = out / name if year == "2020" else out / p.grade / name
            _case(folder, name, p.grade == "HGG", rng, ".nii" if year == "2020" else ".nii.gz")
            cols = [p.ids[y] or "NA" for y in ("2017", "2018")] + [p.tcia, p.ids["2019"] or "NA"]
            if name == p.extra_2020:  # a scan new in 2020: only the TCGA ID links it
                cols = ["NA", "NA", p.tcia, "NA"]
            mapping.append([p.grade, *cols] + ([name] if year == "2020" else []))
            if p.grade == "HGG":  # the survival files list HGG cases only
                survival.append([name, f"{50 + len(survival)}.5", str(300 + len(survival)), "GTR"])
    if year == "2018":
        _csv(
            out / "survival_data.csv", ["BraTS18ID", "Age", "Survival", "ResectionStatus"], survival
        )
    elif year == "2019":
        _csv(out / "name_mapping.csv", COLUMNS_2019, mapping)
        _csv(
            out / "survival_data.csv", ["BraTS19ID", "Age", "Survival", "ResectionStatus"], survival
        )
    else:
        _csv(out / "name_mapping.csv", COLUMNS_2020, mapping)
        header = ["Brats20ID", "Age", "Survival_days", "Extent_of_Resection"]
        _csv(out / "survival_info.csv", header, survival)
    return out
