"""Loaders for each BraTS layout, preprocessing, and patient-level folds."""

from __future__ import annotations

import numpy as np
import pytest

from brats_grading.data import (
    Case,
    class_weights,
    discover,
    load_case,
    make_split,
    patient_of,
    preprocess_case,
)
from medcommon.data import check_disjoint


@pytest.mark.parametrize("layout", ["2018", "2019", "2020"])
def test_each_layout_loads_with_grades(data_root, layout):
    found, cases = discover(data_root / layout)
    assert found == ("2020" if layout == "2020" else "2019")
    assert len(cases) == 10
    assert sum(c.label for c in cases) == 6  # 6 HGG, 4 LGG
    if layout != "2020":
        for c in cases:  # the grade is the folder the case sits in
            assert c.files["t1"].parent.parent.name == ("HGG" if c.label else "LGG")
    else:
        text = (data_root / layout / "name_mapping.csv").read_text().splitlines()
        grades = {line.split(",")[-1]: line.split(",")[0] for line in text[1:]}
        for c in cases:
            assert grades[c.name] == ("HGG" if c.label else "LGG")
    arr = load_case(cases[0])
    assert arr.shape == (4, 12, 24, 24) and arr.dtype == np.float32


def test_patient_ids_follow_brats_names():
    assert patient_of("Brats18_TCIA01_131_1", "2018") == "TCIA01_131"
    assert patient_of("BraTS19_2013_10_1", "2019") == "2013_10"
    assert patient_of("BraTS20_Training_001", "2020") == "BraTS20_Training_001"


def test_preprocess_zscore_in_mask_and_crop():
    rng = np.random.default_rng(0)
    vol = np.zeros((4, 10, 20, 30), np.float32)
    vol[:, 2:8, 5:15, 10:25] = rng.uniform(1, 5, size=(4, 6, 10, 15))
    # same size as the brain box: the resize is the identity, only crop + z-score act
    out = preprocess_case(vol, (6, 10, 15))
    for c in range(4):
        brain = vol[c, 2:8, 5:15, 10:25]
        ref = (brain - brain.mean()) / brain.std()
        np.testing.assert_allclose(out[c], ref, rtol=1e-4, atol=1e-4)
    assert preprocess_case(vol, (4, 8, 8)).shape == (4, 4, 8, 8)


def test_kfold_is_by_patient_stratified_and_covers_everyone():
    cases = []
    for i in range(30):  # 15 patients with two cases each; 1/3 of patients LGG
        label = int(i % 3 != 0)
        for t in (1, 2):
            cases.append(Case(f"Brats18_P{i:02d}_{t}", f"P{i:02d}", label, {}))
    tests = []
    for fold in range(3):
        split = make_split(cases, 3, fold, seed=0)
        by_name = {c.name: c for c in cases}
        train_p = {by_name[n].patient for n in split["train"]}
        test_p = {by_name[n].patient for n in split["test"]}
        assert not train_p & test_p, "a patient is in both train and test"
        check_disjoint({"train": list(train_p), "test": list(test_p)})
        lgg = sum(1 for n in split["test"] if by_name[n].label == 0)
        assert lgg in (6, 8)  # 3 or 4 of the 10 LGG patients, two cases each
        tests += split["test"]
    assert sorted(tests) == sorted(c.name for c in cases)


def test_class_weights_inverse_frequency():
    w = class_weights([1, 1, 1, 0])
    assert w.tolist() == pytest.approx([4 / 2, 4 / 6])
