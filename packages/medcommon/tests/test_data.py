"""Manifests in the wild, patient-level splits, and the decoded-array cache."""

from __future__ import annotations

import os
import time
from collections import Counter

import numpy as np
import pytest

from medcommon.data import (
    ArrayCache,
    check_disjoint,
    patient_kfold,
    patient_split,
    read_csv_rows,
    read_jsonl,
)
from medcommon.errors import InputError


def test_csv_with_bom_crlf_and_unnamed_index(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(
        "\ufeff,path,pneumonia,MIMIC\r\n5000,/a/x.jpg,1,0\r\n5001,/a/y.jpg,0,1\r\n".encode()
    )
    cols, rows = read_csv_rows(path)
    assert cols == ["path", "pneumonia", "MIMIC"]
    assert rows[0] == {"path": "/a/x.jpg", "pneumonia": "1", "MIMIC": "0", "_line": 2}
    assert rows[1]["_line"] == 3


def test_csv_errors_name_file_and_line(tmp_path):
    path = tmp_path / "m.csv"
    path.write_text("path,label\na.png,1\nb.png\n")
    with pytest.raises(InputError, match=r"m.csv:3: expected 2 fields, got 1"):
        read_csv_rows(path)
    empty = tmp_path / "e.csv"
    empty.write_text("")
    with pytest.raises(InputError, match="e.csv: manifest is empty"):
        read_csv_rows(empty)


def test_jsonl_malformed_line_is_named(tmp_path):
    path = tmp_path / "forget.jsonl"
    path.write_text('{"q": 1}\n\n{"q": 2\n')
    with pytest.raises(InputError, match=r"forget.jsonl:3: malformed JSON"):
        read_jsonl(path)
    path.write_text('{"q": 1}\n{"q": 2}\n')
    assert read_jsonl(path) == [{"q": 1}, {"q": 2}]


def test_patient_split_keeps_patients_whole_and_stratifies():
    rng = np.random.default_rng(0)
    patients = [f"p{i // 3}" for i in range(600)]  # 200 patients, 3 images each
    label_of = {f"p{i}": int(rng.random() < 0.25) for i in range(200)}
    labels = [label_of[p] for p in patients]
    train, val, test = patient_split(patients, [0.7, 0.1, 0.2], seed=1, labels=labels)
    assert len(train) + len(val) + len(test) == 600
    sets = [{patients[i] for i in part} for part in (train, val, test)]
    assert not (sets[0] & sets[1] or sets[0] & sets[2] or sets[1] & sets[2])
    for part in (train, test):
        share = np.mean([labels[i] for i in part])
        assert abs(share - np.mean(labels)) < 0.05
    assert [list(x) for x in patient_split(patients, [0.7, 0.1, 0.2], seed=1, labels=labels)] == [
        list(x) for x in (train, val, test)
    ]


def test_kfold_test_folds_partition_the_patients():
    patients = [f"p{i % 50}" for i in range(150)]
    labels = [int(i % 50 < 12) for i in range(150)]
    folds = patient_kfold(patients, 5, seed=0, labels=labels)
    tested = Counter(i for _, test in folds for i in test)
    assert sorted(tested) == list(range(150)) and set(tested.values()) == {1}
    for train, test in folds:
        assert not {patients[i] for i in train} & {patients[i] for i in test}
        assert sum(labels[i] for i in test) // 3 in (2, 3)  # 12 positive patients over 5 folds
    with pytest.raises(InputError, match="--folds"):
        patient_kfold(patients, 51)


def test_check_disjoint():
    check_disjoint({"train": ["a", "b"], "test": ["c"]})
    with pytest.raises(InputError, match="patient 'b' is in both train and test"):
        check_disjoint({"train": ["a", "b"], "test": ["b"]})


def test_array_cache_memory_and_disk_tiers(tmp_path):
    calls = []

    def loader(p):
        calls.append(p)
        return np.load(p)

    src = tmp_path / "a.npy"
    np.save(src, np.arange(10))
    cache = ArrayCache(loader, max_items=4, cache_dir=tmp_path / "cache")
    np.testing.assert_array_equal(cache(src), np.arange(10))
    cache(src)
    assert len(calls) == 1 and cache.hits == 1
    fresh = ArrayCache(loader, max_items=0, cache_dir=tmp_path / "cache")
    fresh(src)
    assert len(calls) == 1 and fresh.hits == 1  # served from disk
    time.sleep(0.01)
    np.save(src, np.arange(5))
    os.utime(src, None)
    np.testing.assert_array_equal(cache(src), np.arange(5))  # an edited file is re-read
    assert len(calls) == 2


def test_jsonl_line_numbers_for_field_checks(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"q": 1}\n\n{"q": 2}\n')
    assert read_jsonl(path, line_numbers=True) == [{"q": 1, "_line": 1}, {"q": 2, "_line": 3}]


def test_csv_with_a_comma_at_every_line_end_and_gzipped(tmp_path):
    import gzip

    from medcommon.data.manifest import read_csv_rows

    text = "Image Index,Finding Labels,\r\na.png,Mass,\r\nb.png,No Finding,\r\n"  # as NIH ships it
    plain = tmp_path / "entry.csv"
    plain.write_text(text, encoding="utf-8")
    packed = tmp_path / "entry.csv.gz"
    packed.write_bytes(gzip.compress(text.encode()))
    for path in (plain, packed):
        columns, rows = read_csv_rows(path)
        assert columns == ["Image Index", "Finding Labels"]
        assert [(r["Image Index"], r["_line"]) for r in rows] == [("a.png", 2), ("b.png", 3)]
    plain.write_text(text.replace("b.png,No Finding,", "b.png,No Finding,oops"))
    with pytest.raises(InputError, match=r"entry.csv:3: a value under the header's unnamed"):
        read_csv_rows(plain)
