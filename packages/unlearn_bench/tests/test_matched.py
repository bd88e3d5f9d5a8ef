"""The matched-forgetting protocol (issue #23): the dose grid, the choice of dose on
validation probes only, relearning, and one end-to-end run on the tiny preset."""

from __future__ import annotations

import json

import pytest

from unlearn_bench import matched
from unlearn_bench.matched import Dose, choose_dose, declared_claims, grid, relearn_split


def _pt(lr, ep, forget_val, retain_val):
    return {"dose": Dose(lr, ep), "val": {"forget_val": forget_val, "retain_val": retain_val}}


def test_grid_is_every_lr_and_epochs_weakest_first():
    doses = grid()
    assert len(doses) == len(matched.GRID_LR) * len(matched.GRID_EPOCHS)
    assert {(d.lr, d.epochs) for d in doses} == {
        (lr, ep) for lr in matched.GRID_LR for ep in matched.GRID_EPOCHS
    }
    strengths = [d.strength for d in doses]
    assert strengths == sorted(strengths)


@pytest.mark.parametrize("wordings,expected", [(1, 2), (2, 2), (4, 4)])
def test_the_protocol_data_have_at_least_two_wordings_and_the_preset_may_add(
    monkeypatch, wordings, expected
):
    from unlearn_bench.config import SynthConfig

    monkeypatch.setattr(matched, "synth_preset", lambda _: SynthConfig(train_wordings=wordings))
    cfg = matched.knowledge_data("any")
    assert (cfg.train_wordings, cfg.validation_probes, cfg.holdout_clean) == (expected, True, True)


@pytest.mark.parametrize("preset", ["knowledge", "knowledge-w4", "tiny"])
def test_each_setting_runs_the_seeds_fixed_for_it(tmp_path, monkeypatch, preset):
    from unlearn_bench.config import PRESETS

    assert set(matched.PRESET_SEEDS) <= set(PRESETS.names())
    seen = []

    def stop(fn, jobs, **_):
        seen.extend(j.seed for j in jobs)
        raise SystemExit

    monkeypatch.setattr(matched, "pinned_map", stop)
    with pytest.raises(SystemExit):
        matched.run_matched(tmp_path / "o", preset=preset, quiet=True, device="cpu")
    assert seen == list(matched.PRESET_SEEDS.get(preset, matched.DEFAULT_SEEDS))
    assert matched.PRESET_SEEDS["knowledge-w4"] == (0, 1, 2, 3)


def test_a_later_setting_fixes_its_seeds_and_methods_in_its_own_preset(tmp_path, monkeypatch):
    """knowledge-w4-f8 (the third setting) names seeds 0-11 and no unlearning methods in its
    preset's matched section; the command uses them, its flags win, and the first two
    settings keep matched.py's PRESET_SEEDS and METHODS_RUN."""
    from medcommon.cli import run_main
    from unlearn_bench.cli import main
    from unlearn_bench.config import MatchedConfig, matched_preset

    assert matched_preset("knowledge-w4-f8") == MatchedConfig(seeds=tuple(range(12)), methods=())
    for preset in matched.PRESET_SEEDS:
        assert matched_preset(preset) == MatchedConfig()
    seen = []
    monkeypatch.setattr(matched, "run_matched", lambda out, **kw: seen.append(kw))
    base = ["matched", "--out", str(tmp_path / "o"), "--quiet"]
    for extra in (
        ["--preset", "knowledge-w4-f8"],
        ["--preset", "knowledge-w4-f8", "--seeds", "5", "--methods", "npo"],
        ["--preset", "knowledge-w4"],
        ["--preset", "knowledge", "--methods"],
    ):
        assert run_main(main, [*base, *extra]) == 0
    got = [(kw["seeds"], tuple(kw["methods"])) for kw in seen]
    assert got == [
        (tuple(range(12)), ()), ([5], ("npo",)), (None, matched.METHODS_RUN), (None, ()),
    ]  # fmt: skip


def test_a_preset_with_bad_matched_seeds_is_refused(tmp_path, monkeypatch):
    from medcommon.errors import InputError
    from medcommon.presets import Presets
    from unlearn_bench import config

    (tmp_path / "bad.yaml").write_text("matched:\n  seeds: [0, 1, 1]\n")
    (tmp_path / "neg.yaml").write_text("matched:\n  seeds: [-1]\n")
    monkeypatch.setattr(config, "PRESETS", Presets("unlearn_bench", folder=tmp_path))
    for name in ("bad", "neg"):
        with pytest.raises(InputError, match="matched.seeds: need distinct seeds >= 0"):
            config.matched_preset(name)


def test_vanilla_and_retrain_only_report_the_sanity_claim(tmp_path):
    """The third setting's run (no unlearning methods), end to end on the tiny preset."""
    res = matched.run_matched(
        tmp_path / "s", preset="tiny", seeds=(0,), methods=(), quiet=True, device="cpu"
    )
    assert [r["method"] for r in res["rows"]] == ["vanilla", "retrain"] and res["grid"] == []
    assert [c["claim"] for c in res["claims"]] == [declared_claims()[0].claim]
    assert declared_claims()[0].claim.startswith("sanity")
    rows = {r["method"]: r["metrics"] for r in res["rows"]}
    for name in ("vanilla", "retrain"):
        for key in ("forget_mcq_lik_acc", "relearn_forget_mcq_lik_acc", "privleak_vb_mink"):
            assert key in rows[name], (name, key)
    assert (tmp_path / "s" / "tradeoff.png").stat().st_size > 0


def test_the_matched_dose_is_within_the_margin_with_the_best_retain_score():
    retrain = 0.10
    points = [
        _pt(1e-4, 1, 0.80, 0.90),  # forgets too little
        _pt(1e-4, 3, 0.21, 0.70),  # just outside the margin
        _pt(3e-4, 3, 0.15, 0.60),  # matched
        _pt(1e-3, 3, 0.05, 0.65),  # matched, keeps more: chosen
        _pt(1e-3, 10, 0.00, 0.65),  # matched, same retain, stronger dose
        _pt(1e-2, 10, 0.00, 0.95),  # more than the margin *below* retrain's? no: |0.0-0.1| ok
    ]
    assert choose_dose(points[:5], retrain)["dose"] == Dose(1e-3, 3)
    assert choose_dose(points, retrain)["dose"] == Dose(1e-2, 10)
    # over-forgetting beyond the margin does not count as matched
    assert choose_dose([_pt(1e-3, 3, 0.0, 0.9)], 0.5) is None
    assert choose_dose(points[:2], retrain) is None


def test_the_dose_choice_never_reads_the_test_probes():
    """Only ``val`` is read: points whose test-probe scores differ choose the same dose."""
    a = [{**p, "test": {"forget": 0.0}} for p in (_pt(1e-4, 1, 0.1, 0.5), _pt(1e-3, 1, 0.1, 0.6))]
    b = [{**p, "test": {"forget": 1.0}} for p in a]
    assert choose_dose(a, 0.1)["dose"] == choose_dose(b, 0.1)["dose"] == Dose(1e-3, 1)


def test_relearning_splits_the_forget_facts_by_field(knowledge_data):
    from unlearn_bench.data import check_dataset

    data = check_dataset(knowledge_data, ("forget_train", "forget", "test"))
    train, held_out = relearn_split(data["forget_train"], data["forget"] + data["test"])
    assert train and held_out
    assert {it["field"] for it in train} == set(matched.RELEARN_FIELDS)
    assert not {it["field"] for it in held_out} & set(matched.RELEARN_FIELDS)
    assert sum(it["type"] == "mcq" for it in held_out) > 0


def test_relearning_fits_the_relearning_items(knowledge_data, tmp_path, monkeypatch):
    """relearn trains on its items: their NLL falls, and the model on disk is untouched."""
    import torch

    from medcommon.train import seed_everything
    from unlearn_bench.config import EvalConfig, TinyModelConfig
    from unlearn_bench.data import Encoder, check_dataset, corpus_texts
    from unlearn_bench.evaluate import answer_scores
    from unlearn_bench.model import build_tiny, load_llava

    seed_everything(0)
    data = check_dataset(knowledge_data, ("forget_train", "retain_train", "forget", "test"))
    model, processor = build_tiny(TinyModelConfig(), corpus_texts(data))
    model.save_pretrained(tmp_path / "m")
    processor.save_pretrained(tmp_path / "m")
    train, held_out = relearn_split(data["forget_train"], data["forget"] + data["test"])

    def train_nll(m, p):
        enc = Encoder(p, knowledge_data)
        return float(
            answer_scores(m.eval(), enc, train, 16, EvalConfig().mink_fraction)["nll"].mean()
        )

    trained = {}
    real_knowledge = matched.knowledge_metrics

    def spy(model, processor, data_dir, sets, batch_size):
        trained["nll"] = train_nll(model, processor)
        return real_knowledge(model, processor, data_dir, sets, batch_size)

    monkeypatch.setattr(matched, "knowledge_metrics", spy)
    before = train_nll(*load_llava(tmp_path / "m"))
    out = matched.relearn(tmp_path / "m", knowledge_data, train, held_out, seed=0, batch_size=16)
    assert trained["nll"] < before - 0.5  # the last call scores the relearned model
    assert out["relearn_items"] == sum(it["type"] == "mcq" for it in held_out)
    with torch.no_grad():
        assert train_nll(*load_llava(tmp_path / "m")) == pytest.approx(before, rel=1e-6)


def test_claims_name_metrics_that_the_rows_carry(tmp_path, monkeypatch):
    """End to end on the tiny preset (one seed, two doses, NPO): rows, the grid, the figure,
    and every declared claim about NPO finds its metric in the method and baseline rows;
    the dose is matched to the retrained model's validation forget score."""
    targets = []
    real_choose = matched.choose_dose

    def spy(points, reference):
        targets.append(reference)
        return real_choose(points, reference)

    monkeypatch.setattr(matched, "choose_dose", spy)
    real_knowledge = matched._knowledge

    def knows(model_dir, *args):  # the tiny vanilla model knows nothing: pretend it does
        k = real_knowledge(model_dir, *args)
        return {**k, "forget_val": 0.9} if "vanilla" in str(model_dir) else k

    monkeypatch.setattr(matched, "_knowledge", knows)
    res = matched.run_matched(
        tmp_path / "b", preset="tiny", seeds=(0,), methods=("npo",),
        doses=[Dose(1e-3, 1.0), Dose(1e-2, 1.0)], quiet=True, device="cpu",
    )  # fmt: skip
    assert [r["method"] for r in res["rows"]] == ["vanilla", "retrain", "npo"]
    assert len(res["grid"]) == 2 and {g["method"] for g in res["grid"]} == {"npo"}
    assert (tmp_path / "b" / "tradeoff.png").stat().st_size > 0
    saved = json.loads((tmp_path / "b" / "results.json").read_text())
    assert saved["protocol"]["match_margin"] == matched.MATCH_MARGIN
    rows = {r["method"]: r["metrics"] for r in res["rows"]}
    claims = [c for c in declared_claims() if "ga" not in (c.method, c.baseline)]
    assert {c["claim"] for c in res["claims"]} == {c.claim for c in claims}
    assert rows["npo"]["matched"] == 1.0
    # matched against the retrained model's validation forget score, on validation probes
    val = "forget_val_mcq_lik_acc"
    assert abs(rows["npo"][val] - rows["retrain"][val]) <= matched.MATCH_MARGIN
    assert targets == [rows["retrain"][val]] and rows["vanilla"][val] == 0.9
    for c in claims:
        assert c.metric in rows[c.method] and c.metric in rows[c.baseline], c.claim
    for name in ("vanilla", "retrain"):
        for key in ("forget_mcq_lik_acc", "relearn_forget_mcq_lik_acc", "forget_val_mcq_lik_acc",
                    "privleak_vb_mink", "privleak_kn_mink", "forget_rougeL_recall"):  # fmt: skip
            assert key in rows[name], (name, key)
