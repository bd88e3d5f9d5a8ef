"""The generator: deterministic per seed, disjoint splits, question formats, validation."""

from __future__ import annotations

import hashlib
import json

import pytest

from medcommon.errors import InputError
from unlearn_bench.config import SynthConfig
from unlearn_bench.synth import LETTERS, SPLITS, WRONG_FIELDS, generate

CFG = SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=0.2)


def _digest(folder):
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode())
            h.update(p.read_bytes())
    return h.hexdigest()


def _read(folder, split):
    return [json.loads(x) for x in (folder / f"{split}.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("scenario", ["privacy", "incorrectness"])
def test_deterministic_per_seed(tmp_path, scenario):
    generate(tmp_path / "a", scenario, CFG, seed=3)
    generate(tmp_path / "b", scenario, CFG, seed=3)
    generate(tmp_path / "c", scenario, CFG, seed=4)
    assert _digest(tmp_path / "a") == _digest(tmp_path / "b")
    assert _digest(tmp_path / "a") != _digest(tmp_path / "c")


def test_privacy_splits_are_disjoint_by_entity(tmp_path):
    meta = generate(tmp_path / "d", "privacy", CFG, seed=0)
    ent = {s: {it["entity"] for it in _read(tmp_path / "d", s)} for s in SPLITS}
    assert len(ent["forget"]) == 2 and len(ent["general"]) == 2 and len(ent["retain"]) == 8
    assert not ent["forget"] & ent["retain"]
    assert not ent["general"] & (ent["forget"] | ent["retain"])
    assert ent["test"] == ent["forget"]
    # test uses the *other* image and paraphrased questions
    f, t = _read(tmp_path / "d", "forget"), _read(tmp_path / "d", "test")
    f_images = {it["image"] for it in f if it["image"]}
    t_images = {it["image"] for it in t if it["image"]}
    assert f_images and t_images and not f_images & t_images
    assert not {it["question"] for it in f} & {it["question"] for it in t}
    assert meta["counts"] == {s: len(_read(tmp_path / "d", s)) for s in SPLITS}
    card = (tmp_path / "d" / "README.md").read_text()
    assert "seed 0" in card and f"| forget | {meta['counts']['forget']} |" in card


def test_question_formats(tmp_path):
    generate(tmp_path / "d", "privacy", CFG, seed=1)
    items = _read(tmp_path / "d", "retain")
    assert {it["type"] for it in items} == {"mcq", "gen", "cloze"}
    for qtype in ("mcq", "gen", "cloze"):
        mods = {it["modality"] for it in items if it["type"] == qtype}
        assert mods == {"image_text", "text_only"}
    for it in items:
        if it["type"] == "mcq":
            assert len(it["options"]) == 4 and len(set(it["options"])) == 4
            assert it["options"][LETTERS.index(it["answer"])] == it["answer_text"]
        if it["type"] == "cloze":
            assert "____" in it["question"]
        assert (it["image"] is None) == (it["modality"] == "text_only")
        if it["image"]:
            assert (tmp_path / "d" / it["image"]).is_file()


def test_incorrectness_injects_wrong_facts_into_forget_only(tmp_path):
    generate(tmp_path / "d", "incorrectness", CFG, seed=0)
    forget = _read(tmp_path / "d", "forget")
    assert forget and {it["field"] for it in forget} == set(WRONG_FIELDS)
    for it in forget:
        assert it["true_answer"] != it["answer_text"]
        if it["type"] == "mcq":  # the truth is offered as a distractor
            assert it["true_answer"] in it["options"]
    for split in ("retain", "general"):
        assert all("true_answer" not in it for it in _read(tmp_path / "d", split))
    ents = [json.loads(x) for x in (tmp_path / "d" / "entities.jsonl").read_text().splitlines()]
    wrong = [e for e in ents if "injected_wrong" in e]
    assert len(wrong) == 2 and all(e["role"] == "forget" for e in wrong)


@pytest.mark.parametrize("ratio", [0.0, 1.0, -0.1, 1.5, 0.01])
def test_forget_ratio_out_of_range(tmp_path, ratio):
    with pytest.raises(InputError, match="forget-ratio"):
        generate(
            tmp_path / "d",
            "privacy",
            SynthConfig(n_entities=10, n_general=2, forget_ratio=ratio),
            seed=0,
        )
    assert not (tmp_path / "d").exists()


def test_user_image_folder(tmp_path):
    import numpy as np
    from PIL import Image

    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i in range(24):
        Image.fromarray(rng.integers(0, 255, (40, 50), dtype=np.uint8)).save(src / f"x{i:02d}.png")
    meta = generate(tmp_path / "d", "privacy", CFG, seed=0, images=src)
    assert meta["images"] == "user folder"
    assert Image.open(tmp_path / "d" / "images" / "p0000_0.png").size == (32, 32)
    with pytest.raises(InputError, match="need 48"):
        generate(
            tmp_path / "e",
            "privacy",
            SynthConfig(n_entities=20, n_general=4, image_size=32),
            images=src,
        )


def test_the_tiny_preset_dataset_size():
    from unlearn_bench import config

    assert config.synth_preset("tiny") == SynthConfig(n_entities=10, n_general=2, image_size=32)


@pytest.mark.parametrize("scenario", ["privacy", "incorrectness"])
@pytest.mark.parametrize("seed,ratio", [(0, 0.2), (1, 0.5), (2, 0.3)])
def test_forget_values_are_never_distractors_outside_forget(tmp_path, scenario, seed, ratio):
    """Scan the written files: no retain/general MCQ offers a value only forget entities hold."""
    cfg = SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=ratio)
    generate(tmp_path / "d", scenario, cfg, seed=seed)
    ents = [json.loads(x) for x in (tmp_path / "d" / "entities.jsonl").read_text().splitlines()]
    forget = [e for e in ents if e["role"] == "forget"]
    kept = [e for e in ents if e["role"] != "forget"]
    checked = 0
    for split in ("retain", "general"):
        for it in _read(tmp_path / "d", split):
            if it["type"] != "mcq":
                continue
            field = it["field"]
            only_forget = {str(e[field]) for e in forget} - {str(e[field]) for e in kept}
            distractors = set(it["options"]) - {it["answer_text"]}
            assert not distractors & only_forget, (split, it["id"], distractors & only_forget)
            assert len(it["options"]) >= 3
            checked += 1
    assert checked > 0
    # the forget questions still offer them (the pools of forget items are unchanged)
    if scenario == "privacy":
        names = {e["name"] for e in forget}
        offered = {
            o
            for it in _read(tmp_path / "d", "forget")
            if it["type"] == "mcq"
            for o in it["options"]
        }
        assert names <= offered


def test_forget_count_rounds_half_up():
    from unlearn_bench.config import forget_count

    # (ratio, entities) -> ratio * entities rounded half up (the README's rule)
    cases = {(0.10, 500): 50, (0.05, 500): 25, (0.25, 10): 3, (0.35, 10): 4, (0.14, 10): 1}
    cases[(0.145, 100)] = 15  # 0.145 * 100 = 14.499999999999998 in floats
    cases[(0.15, 10)] = 2
    for (ratio, n), want in cases.items():
        assert forget_count(ratio, n) == want, (ratio, n)


@pytest.mark.parametrize("ratio,n_forget", [(0.25, 3), (0.35, 4), (0.2, 2), (0.14, 1)])
def test_generated_forget_entities_match_the_stated_rounding(tmp_path, ratio, n_forget):
    cfg = SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=ratio)
    meta = generate(tmp_path / "d", "privacy", cfg, seed=0)
    assert meta["entities"]["forget"] == n_forget
    assert len({it["entity"] for it in _read(tmp_path / "d", "forget")}) == n_forget
    assert len({it["entity"] for it in _read(tmp_path / "d", "retain")}) == 10 - n_forget


def _general_only_values(folder):
    """Each held-out entity's values that no training entity holds (privacy fields)."""
    import json

    from unlearn_bench.synth import PRIVACY_FIELDS

    ents = [json.loads(x) for x in (folder / "entities.jsonl").read_text().splitlines()]
    names = [f.name for f in PRIVACY_FIELDS]
    trained = {str(e[n]) for e in ents if e["role"] != "general" for n in names}
    return {str(e[n]) for e in ents if e["role"] == "general" for n in names} - trained


def _training_strings(folder):
    from unlearn_bench.data import check_dataset
    from unlearn_bench.synth import TRAIN_SPLITS

    data = check_dataset(folder, TRAIN_SPLITS)
    for split in TRAIN_SPLITS:
        for it in data[split]:
            yield it["question"]
            yield from (it["answer"], it.get("answer_text") or "", *(it.get("options") or ()))


@pytest.mark.parametrize("clean,knowledge", [(False, False), (True, False), (True, True)])
def test_holdout_values_never_reach_training_when_clean(tmp_path, clean, knowledge):
    """Issue #23, item 3: with ``holdout_clean`` no value that only a held-out (general)
    patient holds appears in any training string, distractors included. Without it (the
    committed datasets' setting) such values leak in as distractors: the check can fail."""
    from unlearn_bench.config import SynthConfig
    from unlearn_bench.synth import generate

    cfg = SynthConfig(n_entities=12, n_general=4, image_size=32, forget_ratio=0.25,
                      holdout_clean=clean, train_wordings=1 + knowledge,
                      validation_probes=knowledge)  # fmt: skip
    generate(tmp_path / "d", "privacy", cfg, seed=0)
    values = _general_only_values(tmp_path / "d")
    assert len(values) > 10
    leaked = {v for s in _training_strings(tmp_path / "d") for v in values if v in s}
    assert (leaked == set()) if clean else len(leaked) > 0


def test_issue_23_settings_leave_the_other_questions_unchanged(tmp_path):
    """Two training wordings and the extra splits draw from their own generator: every file
    of the default dataset is the same with them, the training files less the second
    wording's items."""
    import dataclasses

    from unlearn_bench.synth import EXTRA_SPLITS, TRAIN_ALT, TRAIN_SPLITS

    generate(tmp_path / "a", "privacy", CFG, seed=2)
    more = dataclasses.replace(CFG, train_wordings=2, validation_probes=True)
    meta = generate(tmp_path / "b", "privacy", more, seed=2)
    for s in SPLITS:
        assert (tmp_path / "a" / f"{s}.jsonl").read_bytes() == (
            tmp_path / "b" / f"{s}.jsonl"
        ).read_bytes()
    for s in TRAIN_SPLITS:
        a, b = _read(tmp_path / "a", s), _read(tmp_path / "b", s)
        first = [it for it in b if not it["id"].endswith(TRAIN_ALT)]
        second = [it for it in b if it["id"].endswith(TRAIN_ALT)]
        assert first == a and len(second) == len(a)
        # the same facts, each under a second wording
        key = {(it["entity"], it["field"], it["type"]): it for it in a}
        for it in second:
            twin = key[(it["entity"], it["field"], it["type"])]
            assert it["answer_text"] == twin["answer_text"]
            assert it["question"].split("\n")[0] != twin["question"].split("\n")[0]
    assert not any((tmp_path / "a" / f"{s}.jsonl").exists() for s in EXTRA_SPLITS)
    assert meta["extra_counts"] == {s: len(_read(tmp_path / "b", s)) for s in EXTRA_SPLITS}
    # the card says what the extra files are, and only when they are there
    card_a = (tmp_path / "a" / "README.md").read_text()
    card_b = (tmp_path / "b" / "README.md").read_text()
    assert card_a.endswith("`dataset.json`.\n") and "general_train.jsonl" not in card_a
    assert f"`forget_val.jsonl` ({meta['extra_counts']['forget_val']})" in card_b
    assert "`-w2`" in card_b


def test_five_wordings_are_disjoint(tmp_path):
    """Train, second train, probe, validation and test paraphrase: for every fact and
    question type, five different questions (issue #23: trained under two, probed in a
    third, the dose chosen on a fourth)."""
    import dataclasses

    more = dataclasses.replace(CFG, train_wordings=2, validation_probes=True)
    generate(tmp_path / "d", "privacy", more, seed=0)
    by_fact: dict = {}
    for s in ("forget_train", "forget", "forget_val", "test"):
        for it in _read(tmp_path / "d", s):
            stem = it["question"].split("\n")[0]
            by_fact.setdefault((it["entity"], it["field"], it["type"]), []).append(stem)
    assert by_fact
    for stems in by_fact.values():
        assert len(stems) == 5 and len(set(stems)) == 5


def test_four_wordings_add_two_more_to_the_two_wording_dataset(tmp_path):
    """train_wordings = 4 writes the two-wording dataset unchanged (so the committed
    knowledge results' data stay what they were) plus every training question in a third
    and a fourth wording: seven disjoint wordings per fact and question type."""
    import dataclasses

    from unlearn_bench.synth import EXTRA_SPLITS, SPLITS, TRAIN_SPLITS

    two = dataclasses.replace(CFG, train_wordings=2, validation_probes=True)
    generate(tmp_path / "a", "privacy", two, seed=3)
    generate(tmp_path / "b", "privacy", dataclasses.replace(two, train_wordings=4), seed=3)
    for s in (*SPLITS, *EXTRA_SPLITS):
        assert _read(tmp_path / "a", s) == _read(tmp_path / "b", s)
    by_fact: dict = {}
    for s in TRAIN_SPLITS:
        a, b = _read(tmp_path / "a", s), _read(tmp_path / "b", s)
        assert [it for it in b if not it["id"].endswith(("-w3", "-w4"))] == a
        for suffix in ("-w3", "-w4"):
            new = [it for it in b if it["id"].endswith(suffix)]
            assert len(new) == len(a) // 2  # a holds the first and second wordings
        for it in b:
            stem = it["question"].split("\n")[0]
            by_fact.setdefault((it["entity"], it["field"], it["type"]), []).append(
                (stem, it["answer_text"])
            )
    for s in ("forget", "forget_val", "test", "retain", "retain_val"):
        for it in _read(tmp_path / "b", s):
            stem = it["question"].split("\n")[0]
            by_fact[(it["entity"], it["field"], it["type"])].append((stem, it["answer_text"]))
    forget_ents = {it["entity"] for it in _read(tmp_path / "b", "forget")}
    for (ent, _, _), pairs in by_fact.items():
        stems = [q for q, _ in pairs]
        assert len({a for _, a in pairs}) == 1  # one fact, one answer, in every wording
        assert len(set(stems)) == len(stems) == (7 if ent in forget_ents else 6)
    card = (tmp_path / "b" / "README.md").read_text()
    assert "3 more wordings (ids ending in `-w2`, `-w3`, `-w4`)" in card


def test_validation_probes_and_verbatim_holdout_cover_their_entities(tmp_path):
    import dataclasses

    more = dataclasses.replace(CFG, train_wordings=2, validation_probes=True)
    generate(tmp_path / "d", "privacy", more, seed=0)
    for probe, val in (("forget", "forget_val"), ("retain", "retain_val")):
        a, b = _read(tmp_path / "d", probe), _read(tmp_path / "d", val)
        facts = {(it["entity"], it["field"], it["type"], it["answer_text"]) for it in a}
        assert {(it["entity"], it["field"], it["type"], it["answer_text"]) for it in b} == facts
    general = _read(tmp_path / "d", "general")
    held = _read(tmp_path / "d", "general_train")
    assert {it["entity"] for it in held} == {it["entity"] for it in general}
    assert all(it["question"].startswith(("Tell me", "Fill in: the")) for it in held)


@pytest.mark.parametrize("wordings", [0, 5])
def test_train_wordings_must_be_one_to_four(tmp_path, wordings):
    import dataclasses

    bad = dataclasses.replace(CFG, train_wordings=wordings)
    with pytest.raises(InputError, match="train_wordings: must be 1 to 4"):
        generate(tmp_path / "d", "privacy", bad, seed=0)
    assert not (tmp_path / "d").exists()
