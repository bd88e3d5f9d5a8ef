"""``predict``: greedy answers of a run's Llava to new questions, with or without an image."""

from __future__ import annotations

import json
import os

import pytest

from medcommon.cli import run_main
from unlearn_bench.cli import main


def run(argv, capsys):
    code = run_main(main, [str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _questions(tiny_data, n=4):
    """The first ``n`` image questions the model trains on (the forget split's training QA),
    and the same questions text-only."""
    lines = (tiny_data / "forget_train.jsonl").read_text().splitlines()
    items = [it for it in map(json.loads, lines)]
    with_image = [it for it in items if it["modality"] == "image_text"][:n]
    return with_image, [{**it, "modality": "text_only", "image": None} for it in with_image]


@pytest.fixture(scope="module")
def epoch_run(tmp_path_factory, tiny_data):
    """One epoch of fine-tuning (30 steps): enough for answers that are not all empty."""
    out = tmp_path_factory.mktemp("epoch") / "vanilla"
    argv = ["finetune", "--data", tiny_data, "--out", out, "--quiet", "--device", "cpu",
            "--set", "epochs=1"]  # fmt: skip
    assert main([str(a) for a in argv]) == 0
    return out


def test_predict_answers_as_the_evaluation_decodes(
    tmp_path, tiny_data, epoch_run, capsys, monkeypatch
):
    from unlearn_bench import predict
    from unlearn_bench.data import Encoder
    from unlearn_bench.evaluate import generate_answers
    from unlearn_bench.model import load_llava

    asked = []  # what predict hands the decoder: the image must reach the prompt

    def spy(model, enc, items, *args, **kw):
        asked.extend(items)
        return generate_answers(model, enc, items, *args, **kw)

    monkeypatch.setattr(predict, "generate_answers", spy)

    with_image, text_only = _questions(tiny_data)
    rows = [{"id": it["id"], "question": it["question"],
             "image": os.path.relpath(tiny_data / it["image"], tmp_path)} for it in with_image]  # fmt: skip
    rows += [{"question": it["question"]} for it in text_only]
    qfile = tmp_path / "q.jsonl"
    qfile.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "answers.jsonl"
    argv = ["predict", "--model", epoch_run, "--questions", qfile, "--out", out,
            "--max-new-tokens", 6, "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    got = [json.loads(line) for line in out.read_text().splitlines()]
    assert [g["question"] for g in got] == [r["question"] for r in rows]
    assert got[0]["id"] == with_image[0]["id"]  # other fields of a row come back
    assert all(isinstance(g["answer"], str) for g in got)
    # independent reference: the evaluation's decoding of the dataset items themselves
    model, processor = load_llava(epoch_run)
    ref = generate_answers(
        model.eval(), Encoder(processor, tiny_data), with_image + text_only, 6, 16
    )
    assert [g["answer"] for g in got] == ref
    # the image is part of the prompt (a seed-free check: with the separated training QA the
    # one-epoch model answers these with and without the image alike)
    n = len(with_image)
    assert [a["modality"] for a in asked] == ["image_text"] * n + ["text_only"] * n
    assert [
        os.path.samefile(a["image"], tiny_data / it["image"]) for a, it in zip(asked, with_image)
    ] == [True] * n
    # a question on the command line: the answer on stdout, the same on every call
    one = generate_answers(model, Encoder(processor, tiny_data), with_image[:1], 6, 16)
    argv = ["predict", "--model", epoch_run / "model", "--image", tiny_data / with_image[0]["image"],
            with_image[0]["question"], "--max-new-tokens", 6, "--device", "cpu"]  # fmt: skip
    for _ in range(2):
        code, stdout, _ = run(argv, capsys)
        assert code == 0 and stdout.splitlines() == [" ".join(one[0].split())]


def test_predict_reads_the_image(tmp_path, tiny_run, capsys):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not a png" * 10)
    argv = ["predict", "--model", tiny_run, "--image", bad, "what is shown?",
            "--out", tmp_path / "a.jsonl", "--device", "cpu", "--quiet"]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 2 and f"error: {bad}: cannot read image" in err
    assert not (tmp_path / "a.jsonl").exists()
