"""Patient-level splits: no patient ever appears in two splits or two folds."""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

from medcommon.errors import InputError


def _patient_labels(
    patients: Sequence[Hashable], labels: Sequence[Hashable] | None
) -> dict[Hashable, Hashable]:
    """One label per patient (the most frequent among its samples), for stratification."""
    out: dict[Hashable, dict[Hashable, int]] = {}
    for i, p in enumerate(patients):
        lab = labels[i] if labels is not None else 0
        out.setdefault(p, {}).setdefault(lab, 0)
        out[p][lab] += 1
    return {p: max(c.items(), key=lambda kv: (kv[1], str(kv[0])))[0] for p, c in out.items()}


def patient_split(
    patients: Sequence[Hashable],
    fractions: Sequence[float],
    seed: int = 0,
    labels: Sequence[Hashable] | None = None,
) -> list[np.ndarray]:
    """Split sample indices into parts by patient, stratified by label when given.

    Args:
        patients: the patient id of each sample.
        fractions: the share of patients in each part (normalised to sum 1).
        seed: shuffling seed.
        labels: per-sample labels; each part then gets about the same share of
            every label's patients.

    Returns:
        One sorted index array per part; every patient's samples land in one part.
    """
    if len(patients) == 0:
        raise InputError("patients", "nothing to split")
    frac = np.asarray(fractions, dtype=float)
    if frac.ndim != 1 or (frac < 0).any() or frac.sum() <= 0:
        raise InputError("fractions", f"invalid fractions {list(fractions)}")
    frac = frac / frac.sum()
    rng = np.random.default_rng(seed)
    per_patient = _patient_labels(patients, labels)
    part_of: dict[Hashable, int] = {}
    for lab in sorted(set(per_patient.values()), key=str):
        group = sorted((p for p, v in per_patient.items() if v == lab), key=str)
        group = [group[i] for i in rng.permutation(len(group))]
        bounds = np.round(np.cumsum(frac) * len(group)).astype(int)
        start = 0
        for part, end in enumerate(bounds):
            for p in group[start:end]:
                part_of[p] = part
            start = end
    parts: list[list[int]] = [[] for _ in frac]
    for i, p in enumerate(patients):
        parts[part_of[p]].append(i)
    return [np.asarray(sorted(x), dtype=np.int64) for x in parts]


def patient_kfold(
    patients: Sequence[Hashable], k: int, seed: int = 0, labels: Sequence[Hashable] | None = None
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold by patient: ``[(train_idx, test_idx)] * k``, test folds disjoint."""
    n_patients = len(set(patients))
    if k < 2 or k > n_patients:
        raise InputError("--folds", f"need 2 <= k <= {n_patients} patients, got {k}")
    parts = patient_split(patients, [1.0] * k, seed=seed, labels=labels)
    everything = np.arange(len(patients))
    return [(np.setdiff1d(everything, test), test) for test in parts]


def check_disjoint(split_patients: dict[str, Sequence[Hashable]]) -> None:
    """Raise :class:`InputError` if any patient id is in two of the named splits."""
    seen: dict[Hashable, str] = {}
    for name, ids in split_patients.items():
        for p in set(ids):
            if p in seen and seen[p] != name:
                raise InputError("splits", f"patient {p!r} is in both {seen[p]} and {name}")
            seen[p] = name
