"""The BraTS 2018, 2019 and 2020 training folders as released (replicas, see replicas.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from replicas import PATIENTS, grade_of, names_2020, patient_groups, write_release

from brats_grading import PACKAGE, __version__
from brats_grading.cli import main
from brats_grading.data import discover, make_split
from brats_grading.train import train_run
from medcommon.cli import run_main
from medcommon.run import RunSpec

YEARS = ("2018", "2019", "2020")
FAST = ["steps=2", "primary_steps=2", "batch_size=2"]


@pytest.fixture(scope="module")
def releases(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("releases")
    for i, year in enumerate(YEARS):
        write_release(root, year, seed=i)
    return root


@pytest.mark.parametrize("year", YEARS)
def test_each_release_is_read_as_released(releases, year):
    layout, cases = discover(releases / year)
    assert layout == ("2020" if year == "2020" else "2019")  # 2019 has a mapping too
    truth = set().union(*patient_groups(year))
    assert {c.name for c in cases} == truth
    for c in cases:
        assert c.label == (1 if grade_of(c.name) == "HGG" else 0)
        suffix = ".nii" if year == "2020" else ".nii.gz"
        assert all(str(p).endswith(f"{c.name}_{m}{suffix}") for m, p in c.files.items())


@pytest.mark.parametrize("year", YEARS)
def test_patients_are_the_people_not_the_names(releases, year):
    """Grouping the cases by ``Case.patient`` gives exactly the true people."""
    _, cases = discover(releases / year)
    groups: dict[str, set[str]] = {}
    for c in cases:
        groups.setdefault(c.patient, set()).add(c.name)
    assert sorted(map(sorted, groups.values())) == sorted(map(sorted, patient_groups(year)))


def test_one_patient_has_one_id_across_2019_and_2020(releases):
    p19 = {c.name: c.patient for c in discover(releases / "2019")[1]}
    p20 = {c.name: c.patient for c in discover(releases / "2020")[1]}
    for p in PATIENTS:
        assert {p20[n] for n in names_2020(p)} == {p19[p.ids["2019"]]}
    assert len(set(p19.values())) == len(PATIENTS)


def test_folds_keep_the_two_2020_scans_of_one_patient_together(releases):
    _, cases = discover(releases / "2020")
    (pair,) = [set(names_2020(p)) for p in PATIENTS if p.extra_2020]
    for fold in range(2):
        split = make_split(cases, 2, fold, seed=0)
        assert pair <= set(split["train"]) or pair <= set(split["test"])


def _run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_a_2019_release_trains_and_its_patients_are_recognised_in_2020(releases, tmp_path, capsys):
    """Train on the 2019 folder (side files and all); evaluate and predict on 2020's."""
    run = tmp_path / "run"
    spec = RunSpec(PACKAGE, __version__, "train", run, releases / "2019", method="cmg",
                   preset="tiny", overrides=(*FAST, "folds=2", "fold=0"), quiet=True)  # fmt: skip
    metrics = train_run(spec)
    assert set(metrics["test"]) >= {"auc", "accuracy"}
    split = json.loads((run / "split.json").read_text())
    trained = set(split["train"])
    by_2019 = {p.ids["2019"]: p for p in PATIENTS}
    expected = {
        n: p.ids["2019"] for p in PATIENTS for n in names_2020(p) if p.ids["2019"] in trained
    }
    assert expected  # the overlap is real: 2019 is within 2020

    code, _, err = _run(
        ["evaluate", "--run", run, "--data", releases / "2020", "--split", "all"], capsys
    )
    assert code == 0, err
    warning = [line for line in err.splitlines() if line.startswith("warning:")]
    assert len(warning) == 1 and f"{len(expected)} case(s)" in warning[0]
    for new, old in expected.items():
        assert f"{new} (= {old})" in warning[0]
    result = json.loads((run / "eval-all.json").read_text())
    assert result["trained_under_another_name"] == expected

    # the run's test split, named in 2019 IDs, is found in the 2020 folder: no warning
    code, _, err = _run(["evaluate", "--run", run, "--data", releases / "2020"], capsys)
    assert code == 0 and "warning" not in err, err
    result = json.loads((run / "eval-test.json").read_text())
    assert set(result["cases"]) == {by_2019[n].ids["2020"] for n in split["test"]}
    assert result["trained_under_another_name"] == {}

    new, old = next(iter(expected.items()))
    code, _, err = _run(["predict", "--run", run, releases / "2020" / new], capsys)
    assert code == 0 and f"{new} (= {old})" in err, err
    unseen = by_2019[split["test"][0]].ids["2020"]
    code, _, err = _run(["predict", "--run", run, releases / "2020" / unseen], capsys)
    assert code == 0 and "warning" not in err, err
