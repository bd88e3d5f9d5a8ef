"""MLLMU-Bench's few-shot multiple choice (issue #24, item 6): the prompt their eval.py
builds, written out by hand here, the demonstration profile left out of the score, and
an evaluation on the tiny model through the option and the CLI flag."""

from __future__ import annotations

import json

import pytest
import torch

from medcommon.cli import run_main
from unlearn_bench.cli import main
from unlearn_bench.config import EvalConfig
from unlearn_bench.evaluate import evaluate_model, mllmu_mcq_items

OPTS = ["cook", "pilot", "nurse", "judge"]
BLOCK = "A: cook\nB: pilot\nC: nurse\nD: judge"
RULE = "Just give ONE letter representing the answer directly."


def _mcq(pid, modality, k=0, letter="B"):
    stem = f"What is {pid}'s job?" if modality == "image_text" else f"Which job does {pid} do?"
    return {
        "id": f"{pid}-{modality}-{k}",
        "entity": pid,
        "type": "mcq",
        "modality": modality,
        "image": f"images/{pid}.png" if modality == "image_text" else None,
        "question": stem + "".join(f"\n{x}. {o}" for x, o in zip("ABCD", OPTS)),
        "answer": letter,
        "options": OPTS,
        "answer_text": OPTS["ABCD".index(letter)],
    }


def _gen(pid):
    return {"id": f"{pid}-gen", "entity": pid, "type": "gen", "modality": "text_only",
            "image": None, "question": f"Who is {pid}?", "answer": pid}  # fmt: skip


def test_the_prompt_eval_py_builds_by_hand():
    ann = [_mcq("ann", "image_text"), _mcq("ann", "text_only", letter="C")]
    bob = [_mcq("bob", "image_text", letter="A"), _mcq("bob", "text_only"), _gen("bob")]
    # a source holding one profile fixes the draw: ann's questions are the demonstrations
    items, scored, profile, demos = mllmu_mcq_items(ann + bob, "forget", source=ann)
    assert profile == "ann" and demos == [ann[0]["id"], ann[1]["id"]]
    assert scored == [False, False, True, True, True]  # ann's own questions are not scored
    image_q, text_q, gen = items[2:]
    assert image_q["prompt_text"] == (
        f"USER: <image>\nQuestion: What is ann's job?\n{BLOCK}\nCorrect Answer: B\n"
        f"USER: <image>\nWhat is bob's job?\n{BLOCK}\n{RULE}\nASSISTANT:"
    )
    assert image_q["images"] == ["images/ann.png", "images/bob.png"]  # demos' images first
    assert text_q["prompt_text"] == (
        f"USER:\nQuestion: Which job does ann do?\n{BLOCK}\nCorrect Answer: C\n"
        f"USER:\nWhich job does bob do?\n{BLOCK}\n{RULE}\nASSISTANT:"
    )
    assert text_q["images"] == []
    assert gen == bob[2]  # generation and cloze are asked as before
    # the celebrities (eval.py's retain_celebrity mode): the format, no demonstrations
    items, scored, profile, demos = mllmu_mcq_items(bob, "general", source=ann)
    assert profile is None and all(scored) and demos == []
    assert (
        items[0]["prompt_text"] == f"USER: <image>\nWhat is bob's job?\n{BLOCK}\n{RULE}\nASSISTANT:"
    )
    assert items[0]["images"] == ["images/bob.png"]


def test_test_split_takes_its_demonstrations_from_the_forget_probes():
    forget = [_mcq("ann", "image_text"), _mcq("ann", "image_text", 1, "D")]
    # ann's paraphrased test probes: one image question (index 0) is skipped, as eval.py
    # skips the indices its demonstrations took; bob's are scored
    test = [
        _mcq("ann", "image_text", 7, "A"),
        _mcq("ann", "text_only", 7),
        _mcq("bob", "text_only"),
    ]
    items, scored, profile, _ = mllmu_mcq_items(test, "test", source=forget)
    assert profile == "ann" and scored == [False, True, True]
    assert items[1]["prompt_text"].startswith("USER:\nWhich job does ann do?")  # no text demos
    assert items[2]["prompt_text"].count("Correct Answer:") == 0


def test_the_draw_is_seeded_and_covers_the_profiles():
    source = [_mcq(f"p{i}", "text_only") for i in range(6)]
    drawn = {mllmu_mcq_items(source, "retain", source, seed=s)[2] for s in range(40)}
    assert drawn == {f"p{i}" for i in range(6)}
    assert (
        mllmu_mcq_items(source, "retain", source, seed=3)[2]
        == (mllmu_mcq_items(source, "retain", source, seed=3)[2])
    )


@torch.no_grad()
def test_several_images_in_one_prompt_reach_the_model(tiny):
    model, enc, data = tiny
    items, scored, _, _ = mllmu_mcq_items(data["forget"], "forget", data["forget"])
    image_q = next(
        it for it, s in zip(items, scored) if s and it["type"] == "mcq" and len(it["images"]) > 1
    )
    ids, pixels = enc.prompt(image_q)
    one = {**image_q, "prompt_text": "USER: <image>\nx", "images": image_q["images"][:1]}
    image_id = model.config.image_token_id
    n_per = enc.prompt(one)[0].count(image_id)
    assert n_per > 0 and ids.count(image_id) == n_per * len(image_q["images"])
    assert pixels.shape[0] == len(image_q["images"])
    model(input_ids=torch.tensor([ids]), pixel_values=pixels)  # the model takes them


@torch.no_grad()
def test_evaluate_model_scores_all_but_the_demonstration_profile(tiny):
    model, enc, data = tiny
    sub = {"forget": data["forget"], "test": data["test"], "general": data["general"]}
    few = EvalConfig(max_new_tokens=2, batch_size=8, mcq_prompt="mllmu_few_shot")
    res = evaluate_model(model, enc.processor, enc.data_dir, sub, few)
    zero = evaluate_model(
        model, enc.processor, enc.data_dir, sub, EvalConfig(max_new_tokens=2, batch_size=8)
    )
    demos = res["mcq_demos"]
    profile = demos["forget"]["profile"]
    own = [it for it in data["forget"] if it["type"] == "mcq" and it["entity"] == profile]
    assert own and demos["forget"]["not_scored"] == len(own)
    assert demos["general"] == {"profile": None, "demos": [], "not_scored": 0}
    # the test subset's demonstrations are forget probes (their Full_Set rows), not test ones
    forget_ids = {it["id"] for it in data["forget"]}
    assert demos["test"]["demos"] and set(demos["test"]["demos"]) <= forget_ids
    assert sorted(demos["forget"]["demos"]) == sorted(it["id"] for it in own)
    # only multiple choice changes; likelihood metrics are the same items, same numbers
    for name in sub:
        assert res["subsets"][name]["nll"] == pytest.approx(zero["subsets"][name]["nll"])
        assert res["subsets"][name]["rougeL"] == zero["subsets"][name]["rougeL"]
    assert "mcq_demos" not in zero


def test_the_cli_flag(tiny_run, tiny_data, tmp_path):
    import shutil

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    argv = ["evaluate", "--run", run, "--data", tiny_data, "--split", "retain", "--quiet",
            "--device", "cpu", "--mcq-prompt", "mllmu_few_shot", "--set", "max_new_tokens=2"]  # fmt: skip
    assert run_main(main, [str(a) for a in argv]) == 0
    res = json.loads((run / "eval-retain.json").read_text())
    assert res["mcq_demos"]["retain"]["not_scored"] > 0


@torch.no_grad()
def test_each_prediction_is_scored_against_its_own_item(tiny, monkeypatch):
    """A generator that answers every question right: the few-shot scores must be 1, so
    no prediction is paired with another item's reference."""
    import unlearn_bench.evaluate as ev

    model, enc, data = tiny
    answered = []

    def oracle(model, enc, items, *args, **kwargs):
        answered.extend(items)
        return [it["answer"] for it in items]

    monkeypatch.setattr(ev, "generate_answers", oracle)
    sub = {"forget": data["forget"]}
    res = evaluate_model(model, enc.processor, enc.data_dir, sub, EvalConfig(
        max_new_tokens=2, batch_size=8, mcq_prompt="mllmu_few_shot"))  # fmt: skip
    m = res["subsets"]["forget"]
    assert m["mcq_acc"] == 1.0 and m["rougeL"] == pytest.approx(1.0)
    skipped = res["mcq_demos"]["forget"]["not_scored"]
    assert skipped > 0 and len(answered) == len(data["forget"]) - skipped  # not asked
