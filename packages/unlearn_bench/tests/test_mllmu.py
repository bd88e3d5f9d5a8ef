"""MLLMU-Bench interop (issue #13, item 3): its parquet format read and written, training QA
kept apart from the evaluation probes, and every command taking an MLLMU-Bench folder."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from medcommon.cli import run_main
from medcommon.errors import InputError
from unlearn_bench.cli import main
from unlearn_bench.config import SynthConfig
from unlearn_bench.data import FILES, check_dataset
from unlearn_bench.mllmu import is_mllmu, load_folder, read_mllmu, write_mllmu
from unlearn_bench.synth import SPLITS, TRAIN_SPLITS, generate

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_BENCH_CACHE", str(tmp_path / "cache"))


def _by_id(items):
    return sorted(items, key=lambda it: it["id"])


# ------------------------------------------------------------- training QA vs probes
def test_probes_are_disjoint_from_the_training_qa(tiny_data):
    data = check_dataset(tiny_data, FILES)
    trained = {it["question"] for s in TRAIN_SPLITS for it in data[s]}
    probed = {it["question"] for s in SPLITS for it in data[s]}
    assert trained and probed and not trained & probed
    # ... yet they ask about the same facts: every forget / retain probe has a training
    # item of the same entity, fact and task with the same answer
    facts = {
        (it["entity"], it["field"], it["type"]): it["answer_text"]
        for s in TRAIN_SPLITS
        for it in data[s]
    }
    for split in ("forget", "retain"):
        for it in data[split]:
            assert facts[(it["entity"], it["field"], it["type"])] == it["answer_text"]
    assert {it["entity"] for it in data["forget_train"]} == {it["entity"] for it in data["forget"]}


def test_finetune_trains_on_the_training_qa_only(tiny_run, tiny_data):
    data = check_dataset(tiny_data, FILES)
    n = json.loads((tiny_run / "metrics.json").read_text())["n_train"]
    assert n == len(data["forget_train"]) + len(data["retain_train"])


# ------------------------------------------------------------------------ round trip
@pytest.mark.parametrize("scenario", ["privacy", "incorrectness"])
def test_round_trip_keeps_items_entities_and_image_bytes(tmp_path, scenario):
    generate(
        tmp_path / "d",
        scenario,
        SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=0.2),
    )
    ours = load_folder(tmp_path / "d")
    write_mllmu(ours, tmp_path / "m")
    names = sorted(p.parent.name for p in (tmp_path / "m").rglob("*.parquet"))
    assert names == ["Full_Set", "Retain_Set", "Test_Set", "forget_20", "ft_Data", "retain_80"]
    assert is_mllmu(tmp_path / "m") and not is_mllmu(tmp_path / "d")
    back = read_mllmu(tmp_path / "m")
    assert set(back.splits) == set(ours.splits) == set(FILES)
    for name in FILES:  # row order groups by profile and task; the items are the same
        assert _by_id(back.splits[name]) == _by_id(ours.splits[name]), name
    assert back.images == ours.images and len(ours.images) == 24
    assert sorted(back.entities, key=lambda e: e["id"]) == sorted(
        ours.entities, key=lambda e: e["id"]
    )


# ------------------------------------------------- a folder in their schema, by hand
def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), color, dtype=np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def _probe_row(pid, img, letter="B", many=False):
    mcq = {
        "Question": f"What is {pid}'s job?",
        "Options": {"A": "cook", "B": "pilot", "C": "nurse", "D": "judge"},
        "Correct_Answer": letter,
    }
    return {
        "ID": pid,
        ("images" if many else "image"): [img] if many else img,
        "biography": json.dumps({"Name": pid.title(), "Job": "pilot"}),
        "Classification_Task": {
            "Image_Textual_Questions": [mcq],
            "Pure_Text_Questions": [{**mcq, "Question": f"Which job does {pid} do?"}],
        },
        "Generation_Task": [
            {"Type": "Image_Textual", "Question": "Who is this?", "Ground_Truth": pid.title()}
        ],
        "Mask_Task": [
            {"Type": "Pure_Text", "Question": f"{pid} works as a ____.", "Ground_Truth": "pilot"}
        ],
    }


def _their_folder(root, drop=None):
    """An MLLMU-Bench folder written with pyarrow alone, in the schema their scripts read."""
    imgs = {
        p: {"bytes": _png(c), "path": f"{p}.png"}
        for p, c in (("ann", 10), ("bob", 120), ("cy", 240))
    }
    ft = [
        {
            "ID": p,
            "image": imgs[p],
            "metadata": json.dumps(
                [
                    {"Question": f"What does {p} do?", "Answer": "pilot"},
                    {"Question": f"Where was {p} born?", "Answer": "Oslo"},
                ]
            ),
        }
        for p in imgs
    ]
    tables = {
        "ft_Data": ft,
        "forget_5": [_probe_row("ann", imgs["ann"])],
        "retain_95": [_probe_row("bob", imgs["bob"], "A"), _probe_row("cy", imgs["cy"], "C")],
        "Test_Set": [
            _probe_row(p, {"bytes": _png(200), "path": f"{p}_pose1.png"}, many=True) for p in imgs
        ],
    }
    for sub, rows in tables.items():
        if drop:
            rows = [{k: v for k, v in r.items() if k != drop} for r in rows]
        (root / sub).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / sub / "train-00000-of-00001.parquet")
    return root, imgs


def test_reads_a_folder_written_in_their_schema(tmp_path):
    root, imgs = _their_folder(tmp_path / "mllmu")
    ds = read_mllmu(root)
    assert [it["question"] for it in ds.splits["forget_train"]] == [
        "What does ann do?",
        "Where was ann born?",
    ]
    assert {it["entity"] for it in ds.splits["retain_train"]} == {"bob", "cy"}
    assert all(
        it["modality"] == "image_text" for it in ds.splits["retain_train"]
    )  # their finetune attaches the image
    forget = {(it["type"], it["modality"]): it for it in ds.splits["forget"]}
    mcq = forget[("mcq", "image_text")]
    assert mcq["question"] == "What is ann's job?\nA. cook\nB. pilot\nC. nurse\nD. judge"
    assert (mcq["answer"], mcq["answer_text"], mcq["options"]) == (
        "B",
        "pilot",
        ["cook", "pilot", "nurse", "judge"],
    )
    assert forget[("mcq", "text_only")]["image"] is None
    assert forget[("gen", "image_text")]["answer"] == "Ann"
    assert forget[("cloze", "text_only")]["answer"] == "pilot"
    assert ds.images[mcq["image"]] == imgs["ann"]["bytes"]  # the PNG bytes, unchanged
    # the test probes are the forget profile's (as their eval.py filters), on its test image
    assert {it["entity"] for it in ds.splits["test"]} == {"ann"}
    assert ds.images[ds.splits["test"][0]["image"]] == _png(200)
    assert "general" not in ds.splits  # no Retain_Set in this folder
    assert {e["id"]: e["role"] for e in ds.entities} == {
        "ann": "forget",
        "bob": "retain",
        "cy": "retain",
    }


def test_their_loader_opens_our_files(tmp_path, tiny_data):
    datasets = pytest.importorskip("datasets")
    write_mllmu(load_folder(tiny_data), tmp_path / "m")
    forget = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "m/forget_20/*.parquet"), split="train"
    )
    row = forget[0]
    assert isinstance(row["image"], Image.Image)  # decoded as their Image feature
    ours = check_dataset(tiny_data)["forget"]
    first = next(it for it in ours if it["entity"] == row["ID"] and it["image"])
    assert np.array_equal(
        np.asarray(row["image"]), np.asarray(Image.open(tiny_data / first["image"]))
    )
    q = row["Classification_Task"]["Image_Textual_Questions"][0]
    assert set(q) >= {"Question", "Options", "Correct_Answer"} and set(q["Options"]) == set("ABCD")
    assert {g["Type"] for g in row["Generation_Task"]} <= {"Image_Textual", "Pure_Text"}
    ft = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "m/ft_Data/*.parquet"), split="train"
    )
    qa = json.loads(ft[0]["metadata"])
    assert all({"Question", "Answer"} <= set(x) for x in qa)
    test = datasets.load_dataset(
        "parquet", data_files=str(tmp_path / "m/Test_Set/*.parquet"), split="train"
    )
    assert isinstance(test[0]["images"][0], Image.Image)


def test_missing_column_is_a_one_line_error(tmp_path, capsys):
    root, _ = _their_folder(tmp_path / "mllmu", drop="Mask_Task")
    with pytest.raises(InputError, match="missing column"):
        read_mllmu(root)
    code = run_main(
        main,
        [
            "finetune",
            "--data",
            str(root),
            "--out",
            str(tmp_path / "run"),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in err
    assert (
        err
        == f"error: {root / 'forget_5' / 'train-00000-of-00001.parquet'}: missing column(s) Mask_Task"
    )
    assert not (tmp_path / "run").exists()


def test_several_forget_splits_need_a_choice(tmp_path):
    root, _ = _their_folder(tmp_path / "mllmu")
    (root / "forget_10").mkdir()
    pq.write_table(
        pa.Table.from_pylist([_probe_row("ann", {"bytes": _png(1), "path": "a.png"})]),
        root / "forget_10" / "x.parquet",
    )
    with pytest.raises(InputError, match="several forget splits"):
        read_mllmu(root)
    assert {it["entity"] for it in read_mllmu(root / "forget_5").splits["forget"]} == {"ann"}


def test_unlearn_and_evaluate_on_an_mllmu_folder(tmp_path, tiny_data, tiny_run, capsys):
    m = tmp_path / "m"
    assert (
        run_main(main, ["export-mllmu", "--data", str(tiny_data), "--out", str(m), "--quiet"]) == 0
    )
    out = tmp_path / "ga"
    argv = ["unlearn", "--model", tiny_run, "--data", m, "--out", out, "--method", "ga",
            "--quiet", "--device", "cpu", "--set", "batch_size=48"]  # fmt: skip
    assert run_main(main, [str(a) for a in argv]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n_forget"] == len(check_dataset(tiny_data, FILES)["forget_train"]) == 48
    ev = ["evaluate", "--run", out, "--data", m, "--split", "forget", "--quiet", "--device", "cpu",
          "--set", "max_new_tokens=2", "--set", "max_items=0"]  # fmt: skip
    assert run_main(main, [str(a) for a in ev]) == 0
    res = json.loads((out / "eval-forget.json").read_text())
    assert res["subsets"]["forget"]["n"] == 48
    # the same numbers as on the folder it came from (the same items, in another order)
    assert (
        run_main(main, [str(a) for a in ev[:4]] + [str(tiny_data)] + [str(a) for a in ev[5:]]) == 0
    )
    again = json.loads((out / "eval-forget.json").read_text())
    assert again["subsets"]["forget"]["nll"] == pytest.approx(
        res["subsets"]["forget"]["nll"], rel=1e-6
    )


# ------------------------------------- the whole published folder set, as the card lists it
TASKS = ["Classification_Task", "Generation_Task", "Mask_Task"]
PROBE = ["biography", "question", "answer", *TASKS]
# The dataset card's features per config (HF MLLMMU/MLLMU-Bench README, dataset_info), in
# their order. Test_Set's are not in the card's text we could read: as eval.py reads it.
CARD = {
    "ft_Data": ["image", "ID", "metadata"],
    "forget": ["image", "ID", *PROBE],
    "retain": ["image", "ID", *PROBE],
    "Full_Set": ["image", "ID", "Directory", *PROBE],
    "Retain_Set": ["image", "ID", "Directory", *PROBE],
    "Test_Set": ["images", "ID", *PROBE],
}


def _published_folder(root, with_metadata: bool):
    """MLLMU-Bench's ten folders in the card's schema, at 1/25 scale: 20 fictitious profiles
    (forget_5/10/15 nested: 1, 2, 3 of them; retain_95/90/85 the rest), 3 celebrities.

    ``with_metadata``: forget_N / retain_M also carry ``metadata`` (the profiles' training
    QA), which their baselines (GA.py, NPO.py) read from those folders."""
    fict = [f"p{i:02d}" for i in range(20)]
    celeb = ["c0", "c1", "c2"]
    img = {p: {"bytes": _png(10 * i), "path": f"{p}.png"} for i, p in enumerate(fict + celeb)}

    def qa(p):
        return json.dumps(
            [
                {"Question": f"What does {p} do?", "Answer": "pilot"},
                {"Question": f"Where was {p} born?", "Answer": "Oslo"},
            ]
        )

    def row(p, directory=False, test=False):
        r = _probe_row(p, img[p])
        out = (
            {"images": [{"bytes": _png(255), "path": f"{p}_t.png"}]} if test else {"image": img[p]}
        )
        out["ID"] = p
        if directory:
            out["Directory"] = f"profiles/{p}"
        out.update(biography=r["biography"], question=f"Who is {p}?", answer=p.title())
        out.update({t: r[t] for t in TASKS})
        return out

    tables = {
        "ft_Data": [{"image": img[p], "ID": p, "metadata": qa(p)} for p in fict],
        "Full_Set": [row(p, directory=True) for p in fict],
        "Test_Set": [row(p, test=True) for p in fict],
        "Retain_Set": [row(p, directory=True) for p in celeb],
    }
    for pct in (5, 10, 15):
        n = pct * len(fict) // 100
        for name, ids in ((f"forget_{pct}", fict[:n]), (f"retain_{100 - pct}", fict[n:])):
            tables[name] = [
                {**row(p), **({"metadata": qa(p)} if with_metadata else {})} for p in ids
            ]
    for sub, rows in tables.items():
        (root / sub).mkdir(parents=True)
        pq.write_table(pa.Table.from_pylist(rows), root / sub / "train-00000-of-00001.parquet")
    return root, fict, celeb


@pytest.mark.parametrize("with_metadata", [False, True])
def test_reads_every_split_of_the_published_folder_set(tmp_path, with_metadata):
    root, fict, celeb = _published_folder(tmp_path / "MLLMU-Bench", with_metadata)
    assert len(list(root.glob("*/*.parquet"))) == 10
    with pytest.raises(InputError, match="several forget splits"):
        read_mllmu(root)
    for pct, n in ((5, 1), (10, 2), (15, 3)):
        ds = read_mllmu(root / f"forget_{pct}")
        roles = {e["id"]: e["role"] for e in ds.entities}
        assert [p for p in fict if roles[p] == "forget"] == fict[:n]
        assert [p for p in fict if roles[p] == "retain"] == fict[n:]
        assert {p for p in celeb if roles[p] == "general"} == set(celeb)
        # training QA from ft_Data (2 pairs a profile), probes from the task columns (4 a row)
        assert len(ds.splits["forget_train"]) == 2 * n
        assert len(ds.splits["retain_train"]) == 2 * (20 - n)
        assert {it["entity"] for it in ds.splits["test"]} == set(fict[:n])  # as eval.py filters
        counts = {s: len(ds.splits[s]) for s in ("forget", "retain", "test", "general")}
        assert counts == {"forget": 4 * n, "retain": 4 * (20 - n), "test": 4 * n, "general": 12}
        assert ds.meta["forget_percent"] == pct


def test_export_has_the_card_columns_in_every_folder(tmp_path, tiny_data):
    m = write_mllmu(load_folder(tiny_data), tmp_path / "m")
    for folder in sorted(m.iterdir()):
        kind = folder.name.split("_")[0] if folder.name[:6] in ("forget", "retain") else folder.name
        assert pq.read_schema(folder / "train-00000-of-00001.parquet").names == CARD[kind], kind
    ours = load_folder(tiny_data)
    full = pq.read_table(m / "Full_Set").to_pylist()
    trained = {it["entity"] for s in ("forget", "retain") for it in ours.splits[s]}
    assert {r["ID"] for r in full} == trained  # every fictitious profile, once
    first = next(it for it in ours.splits["forget_train"] if it["entity"] == full[0]["ID"])
    assert (full[0]["question"], full[0]["answer"]) == (first["question"], first["answer"])
