"""Building GbP / SbP-style biased splits from NIH ChestX-ray14 and MIMIC-CXR metadata.

Unlike the published splits (per image: patients leak between train and test), patients
are first assigned to train / valid / test pools with
:func:`medcommon.data.patient_split`, then each split is sampled from its own pool:
train at the requested bias ratio, valid and test group-balanced.

- ``gbp``: NIH ``Data_Entry_2017.csv`` (or ``Data_Entry_2017_v2020.csv[.gz]``, whose
  ``Patient Sex`` column is read as ``Patient Gender``); label = the finding (default ``Pneumothorax``),
  negatives = ``No Finding``; bias = ``Patient Gender == --bias-value`` (default ``M``).
  Writes ``train.csv``, ``valid.csv``, ``test.csv`` with ``path,pneumothorax,gender``.
- ``sbp``: NIH (source 0) + MIMIC-CXR-JPG (source 1, ``mimic-cxr-2.0.0-chexpert.csv`` and
  ``mimic-cxr-2.0.0-metadata.csv``, frontal views); label = ``Pneumonia``, negatives =
  ``No Finding``. Writes ``train_NIH.csv``, ``train_MIMIC.csv``, ``valid.csv``, ``test.csv``
  with ``path,pneumonia,MIMIC``.

Image paths are written as ``<prefix><file>`` (``--nih-prefix``, ``--mimic-prefix``),
to be resolved at training time with ``--image-root``.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medcommon.data import check_disjoint, patient_split, read_csv_rows
from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from pbbl_cxr.synth import group_counts


@dataclass(frozen=True)
class Candidate:
    """One usable image: path, label, bias and patient id."""

    path: str
    label: int
    bias: int
    patient: str


def _need(columns: list[str], required: list[str], path: Path) -> None:
    missing = [c for c in required if c not in columns]
    if missing:
        raise InputError(path, f"missing column {missing[0]!r}; columns are {', '.join(columns)}")


def read_metadata(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """:func:`medcommon.data.read_csv_rows`: also a gzipped CSV (``*.csv.gz``, as
    ``Data_Entry_2017_v2020.csv.gz`` ships in the torchxrayvision wheel) and a CSV whose
    every line ends with a comma (NIH's own ``Data_Entry_2017.csv``)."""
    return read_csv_rows(path)


def _choices(value: str, valid: set[str]) -> str:
    """``did you mean 'X'? `` (a close match, if any) + ``choose from A, B, ...``."""
    close = difflib.get_close_matches(value, sorted(valid), n=1, cutoff=0.6)
    near = [v for v in valid if v.lower() == value.lower()] or close
    hint = f"did you mean {near[0]!r}? " if near else ""
    return f"{hint}choose from {', '.join(sorted(valid))}"


def nih_candidates(
    csv_path: Path, finding: str, bias: str, bias_value: str = "M", prefix: str = "images/"
) -> list[Candidate]:
    """NIH rows with ``finding`` (label 1) or ``No Finding`` (label 0).

    ``bias="gender"``: bias = 1 where ``Patient Gender == bias_value``; ``bias="source"``: 0.
    """
    columns, rows = read_metadata(csv_path)
    # NIH's 2020 re-release renamed "Patient Gender" to "Patient Sex".
    sex = "Patient Sex" if "Patient Sex" in columns and "Patient Gender" not in columns else None
    if sex is not None:
        for row in rows:
            row["Patient Gender"] = row[sex]
        columns = [*columns, "Patient Gender"]
    _need(columns, ["Image Index", "Finding Labels", "Patient ID", "Patient Gender"], csv_path)
    findings = {x.strip() for row in rows for x in row["Finding Labels"].split("|")}
    findings.discard("No Finding")
    findings.discard("")
    if finding not in findings:
        raise InputError(
            "--finding",
            f"unknown finding {finding!r}: not in {csv_path}'s Finding Labels; "
            + _choices(finding, findings),
        )
    if bias == "gender":
        sexes = {row["Patient Gender"].strip().upper() for row in rows} - {""}
        if bias_value.upper() not in sexes:
            raise InputError(
                "--bias-value",
                f"unknown value {bias_value!r}: not a Patient Gender of {csv_path}; "
                + _choices(bias_value, sexes),
            )
    out = []
    for row in rows:
        labels = {x.strip() for x in row["Finding Labels"].split("|")}
        if finding in labels:
            y = 1
        elif labels == {"No Finding"}:
            y = 0
        else:
            continue
        b = (
            int(row["Patient Gender"].strip().upper() == bias_value.upper())
            if bias == "gender"
            else 0
        )
        out.append(Candidate(prefix + row["Image Index"], y, b, f"nih-{row['Patient ID']}"))
    return out


def mimic_candidates(
    chexpert_csv: Path, metadata_csv: Path, finding: str = "Pneumonia", prefix: str = "MIMIC/"
) -> list[Candidate]:
    """MIMIC-CXR-JPG frontal images with ``finding == 1`` (label 1) or ``No Finding == 1`` (0)."""
    cols, rows = read_csv_rows(chexpert_csv)
    _need(cols, ["subject_id", "study_id", finding, "No Finding"], chexpert_csv)
    study_label = {}
    for row in rows:
        if row[finding] in ("1", "1.0"):
            study_label[row["study_id"]] = 1
        elif row["No Finding"] in ("1", "1.0") and row[finding] in ("", "0", "0.0"):
            study_label[row["study_id"]] = 0
    cols, rows = read_csv_rows(metadata_csv)
    _need(cols, ["dicom_id", "subject_id", "study_id"], metadata_csv)
    out = []
    for row in rows:
        y = study_label.get(row["study_id"])
        if y is None or row.get("ViewPosition", "PA") not in ("PA", "AP"):
            continue
        sid = row["subject_id"]
        rel = f"files/p{sid[:2]}/p{sid}/s{row['study_id']}/{row['dicom_id']}.jpg"
        out.append(Candidate(prefix + rel, y, 1, f"mimic-{sid}"))
    return out


def sample_biased_splits(
    candidates: list[Candidate],
    sizes: tuple[int, int, int],
    bias_ratio: float,
    seed: int = 0,
) -> dict[str, list[Candidate]]:
    """Patient-disjoint train / valid / test: train at ``bias_ratio``, the others group-balanced."""
    if not candidates:
        raise InputError("metadata", "no usable images (no positives or negatives found)")
    pools = patient_split(
        [c.patient for c in candidates],
        [float(s) for s in sizes],
        seed=seed,
        labels=[(c.label, c.bias) for c in candidates],
    )
    rng = np.random.default_rng(seed)
    out: dict[str, list[Candidate]] = {}
    for name, pool, n, ratio in zip(
        ("train", "valid", "test"), pools, sizes, (bias_ratio, None, None)
    ):
        chosen: list[Candidate] = []
        for (y, b), k in group_counts(n, ratio).items():
            members = [
                candidates[i] for i in pool if (candidates[i].label, candidates[i].bias) == (y, b)
            ]
            if len(members) < k:
                raise InputError(
                    f"{name} group (label={y}, bias={b})",
                    f"needs {k} images but its patients have only {len(members)}; "
                    "ask for fewer images (--n-train/--n-valid/--n-test)",
                )
            chosen += [members[i] for i in rng.choice(len(members), size=k, replace=False)]
        out[name] = [chosen[i] for i in rng.permutation(len(chosen))]
    check_disjoint({k: [c.patient for c in v] for k, v in out.items()})
    return out


def write_splits(out_dir: Path, splits: dict[str, list[Candidate]], kind: str) -> list[Path]:
    """Write the manifests in the GbP or SbP layout; returns the files written."""
    header = "path,pneumothorax,gender" if kind == "gbp" else "path,pneumonia,MIMIC"
    files: dict[str, list[Candidate]] = {}
    for name, items in splits.items():
        if kind == "sbp" and name == "train":
            files["train_NIH"] = [c for c in items if c.bias == 0]
            files["train_MIMIC"] = [c for c in items if c.bias == 1]
        else:
            files[name] = items
    written = []
    for name, items in files.items():
        text = header + "\n" + "".join(f"{c.path},{c.label},{c.bias}\n" for c in items)
        path = out_dir / f"{name}.csv"
        write_text_atomic(path, text)
        written.append(path)
    return written


def build_splits(
    out_dir: str | Path,
    nih_csv: str | Path,
    kind: str = "gbp",
    *,
    bias_ratio: float = 0.9,
    sizes: tuple[int, int, int] = (1800, 600, 1000),
    finding: str | None = None,
    bias_value: str = "M",
    mimic_chexpert: str | Path | None = None,
    mimic_metadata: str | Path | None = None,
    nih_prefix: str = "images/",
    mimic_prefix: str = "MIMIC/",
    seed: int = 0,
) -> list[Path]:
    """Candidates from the metadata, biased patient-disjoint splits, manifests written.

    ``sizes`` = (train, valid, test), each at least 4. ``finding`` defaults to
    Pneumothorax (gbp) / Pneumonia (sbp). Returns the written manifest paths.
    """
    for flag, n in zip(("--n-train", "--n-valid", "--n-test"), sizes):
        if n < 4:
            raise InputError(flag, "must be at least 4")
    nih_csv = Path(nih_csv)
    if kind == "gbp":
        cands = nih_candidates(nih_csv, finding or "Pneumothorax", "gender", bias_value, nih_prefix)
    else:
        if mimic_chexpert is None or mimic_metadata is None:
            raise InputError("--mimic-chexpert", "sbp needs --mimic-chexpert and --mimic-metadata")
        finding = finding or "Pneumonia"
        cands = nih_candidates(nih_csv, finding, "source", prefix=nih_prefix)
        cands += mimic_candidates(Path(mimic_chexpert), Path(mimic_metadata), finding, mimic_prefix)
    splits = sample_biased_splits(cands, sizes, bias_ratio, seed)
    return write_splits(Path(out_dir), splits, kind)
