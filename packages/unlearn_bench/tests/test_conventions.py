"""Issue #23: each metric convention against the reference's own formula on a worked example
(TOFU / open-unlearning truth ratio, open-unlearning ROUGE-L recall, MUSE's verbatim
membership pools, the knowledge-level pools, UES undefined), and the matched-forgetting
protocol's pieces (dose choice, relearning)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp

from unlearn_bench.evaluate import (
    _not_mcq,
    against_reference,
    knowledge_metrics,
    mia_metrics,
    task_metrics,
    tofu_truth_ratio_score,
    tofu_truth_ratios_from,
    truth_ratios_from,
    verbatim_pools,
)


def _mcq(options, answer, modality="text_only"):
    return {"type": "mcq", "modality": modality, "options": options, "answer_text": answer,
            "question": "Q?\nA. x", "answer": "A"}  # fmt: skip


# ------------------------------------------------------------------ TOFU's truth ratio
def test_tofu_truth_ratio_is_the_geometric_mean_as_open_unlearning_computes_it():
    """open-unlearning's truth_ratio: wrong_prob = exp(-mean of the wrong answers' mean token
    losses), correct_prob = exp(-the answer's), R = wrong_prob / (correct_prob + 1e-10)."""
    p = np.array([0.5, 0.2, 0.1, 0.05])  # length-normalised probabilities, answer is option 1
    items = [_mcq(["a", "b", "c", "d"], "b")]
    lp = [np.log(p)]
    losses = -np.log(p)
    wrong_prob = math.exp(-np.mean(losses[[0, 2, 3]]))
    reference = wrong_prob / (math.exp(-losses[1]) + 1e-10)
    got = tofu_truth_ratios_from(items, lp)
    assert got == pytest.approx([reference], rel=1e-8)
    # by hand: the cube root of 0.5 * 0.1 * 0.05, over 0.2
    assert got[0] == pytest.approx((0.5 * 0.1 * 0.05) ** (1 / 3) / 0.2)
    # the former (arithmetic) ratio differs: (0.5 + 0.1 + 0.05) / 3 / 0.2
    assert truth_ratios_from(items, lp)[0] == pytest.approx(0.65 / 3 / 0.2)
    assert truth_ratios_from(items, lp)[0] != pytest.approx(got[0], rel=1e-3)


def test_tofu_aggregates_closer_to_one_on_the_forget_side_true_better_elsewhere():
    r = np.array([0.25, 1.0, 4.0])
    # open-unlearning: closer_to_1_better = mean(min(tr, 1/(tr + 1e-10)))
    assert tofu_truth_ratio_score(r, forget_side=True) == pytest.approx(
        np.mean(np.minimum(r, 1 / (r + 1e-10)))
    )
    assert tofu_truth_ratio_score(r, forget_side=True) == pytest.approx((0.25 + 1 + 0.25) / 3)
    # true_better = mean(max(0, 1 - tr))
    assert tofu_truth_ratio_score(r, forget_side=False) == pytest.approx(0.75 / 3)
    assert tofu_truth_ratio_score(np.array([]), True) is None


def test_forget_quality_tofu_is_the_ks_p_value_of_the_tofu_ratios():
    rng = np.random.default_rng(0)
    a, b = rng.lognormal(0, 1, 32).tolist(), rng.lognormal(1, 1, 32).tolist()
    model = {"truth_ratios_tofu": {"forget": a}, "truth_ratios": {"forget": b}, "subsets": {}}
    ref = {"truth_ratios_tofu": {"forget": b}, "truth_ratios": {"forget": b}, "subsets": {}}
    out = against_reference(model, ref)
    assert out["forget_quality_tofu"] == pytest.approx(ks_2samp(a, b).pvalue)
    assert out["forget_quality"] == pytest.approx(1.0)  # the arithmetic ratios are equal here


# ----------------------------------------------------------------------------- ROUGE-L
def test_rouge_l_both_ways_as_mllmu_bench_and_open_unlearning():
    items = [{"type": "gen", "modality": "text_only", "answer": "lung nodules"}]
    pred = ["the patient has small lung nodule findings"]
    m = task_metrics(items, pred)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)
    ref = scorer.score(items[0]["answer"], pred[0])["rougeL"]
    assert m["rougeL"] == pytest.approx(ref.fmeasure)  # MLLMU-Bench
    assert m["rougeL_recall"] == pytest.approx(ref.recall)  # open-unlearning
    # by hand, stemmed: LCS "lung nodul" = 2 tokens of the 2-token reference and 7-token answer
    assert m["rougeL_recall"] == pytest.approx(1.0)
    assert m["rougeL"] == pytest.approx(2 * (2 / 7) * 1.0 / (2 / 7 + 1.0))


# ----------------------------------------------------------------- membership pools
def test_knowledge_level_pool_drops_mcq_and_names_its_keys():
    f_items = [{"type": t, "field": "phone"} for t in ("mcq", "gen", "cloze", "mcq")]
    g_items = [{"type": t, "field": "phone"} for t in ("gen", "mcq", "cloze")]
    f_scores = {a: np.array([9.0, 1.0, 2.0, 9.0]) for a in ("loss", "mink", "minkpp", "zlib")}
    g_scores = {a: np.array([1.5, -9.0, 2.5]) for a in ("loss", "mink", "minkpp", "zlib")}
    kf, kg = _not_mcq(f_items, f_scores), _not_mcq(g_items, g_scores)
    assert [it["type"] for it in kf[0]] == ["gen", "cloze"]
    assert kf[1]["loss"].tolist() == [1.0, 2.0] and kg[1]["loss"].tolist() == [1.5, 2.5]
    kn = mia_metrics(*kf, *kg, pool="_kn")
    # members 1, 2 against non-members 1.5, 2.5: one of four pairs ranks the member higher
    assert kn["mia_kn_auc"] == pytest.approx(0.25)
    assert set(kn) == {"mia_kn_auc", "mia_kn_auc_mink", "mia_kn_auc_minkpp", "mia_kn_auc_zlib"}
    # with the MCQ items the single-letter answers decide it
    assert mia_metrics(f_items, f_scores, g_items, g_scores)["mia_auc"] > 0.5


def test_against_reference_gives_privleak_for_every_pool():
    model = {"mia_auc_mink": 0.9, "mia_kn_auc_mink": 0.8, "mia_vb_auc_mink": 0.7, "subsets": {}}
    ref = {"mia_auc_mink": 0.5, "mia_kn_auc_mink": 0.6, "mia_vb_auc_mink": 0.4, "subsets": {}}
    out = against_reference(model, ref)
    assert out["privleak_mink"] == pytest.approx((0.1 - 0.5) / 0.5 * 100)
    assert out["privleak_kn_mink"] == pytest.approx((0.2 - 0.4) / 0.4 * 100)
    assert out["privleak_vb_mink"] == pytest.approx((0.3 - 0.6) / 0.6 * 100)


def test_verbatim_pools_are_training_text_against_unseen_text_of_one_template(knowledge_data):
    members, held_out = verbatim_pools(knowledge_data)
    assert members and held_out
    assert {it["type"] for it in members + held_out} == {"gen", "cloze"}
    ents = [json.loads(x) for x in (knowledge_data / "entities.jsonl").read_text().splitlines()]
    role = {e["id"]: e["role"] for e in ents}
    assert {role[it["entity"]] for it in members} == {"forget"}
    assert {role[it["entity"]] for it in held_out} == {"general"}
    assert not any(it["id"].endswith("-w2") for it in members)  # the first wording only

    def template(it):  # the question with the entity's subject blanked
        q = it["question"]
        return q.split(" of ")[0] if " of " in q else q

    assert {template(it) for it in members} == {template(it) for it in held_out}
    assert verbatim_pools(knowledge_data.parent / "nowhere") is None


def test_verbatim_members_keep_the_first_wording_with_four_wordings(tmp_path):
    import dataclasses

    from unlearn_bench.config import SynthConfig
    from unlearn_bench.synth import generate

    tiny = SynthConfig(n_entities=10, n_general=2, image_size=32, forget_ratio=0.2)
    cfg = dataclasses.replace(tiny, train_wordings=4, validation_probes=True, holdout_clean=True)
    generate(tmp_path / "d", "privacy", cfg, seed=0)
    members, held_out = verbatim_pools(tmp_path / "d")
    firsts = [it for it in members if it["question"].startswith(("Tell me", "Fill in: the"))]
    assert members == firsts and len(members) == len(held_out) > 0  # 2 forget, 2 held out


# ------------------------------------------------------------- knowledge_metrics
def test_knowledge_metrics_read_the_option_likelihoods(tiny):
    model, enc, data = tiny
    sets = {"forget": data["forget"], "retain": data["retain"][:24]}
    got = knowledge_metrics(model, enc.processor, enc.data_dir, sets, batch_size=8)
    from unlearn_bench.evaluate import option_likelihood_metrics, option_logprobs

    for name, items in sets.items():
        lp = option_logprobs(model, enc, items, 8)
        want = option_likelihood_metrics(items, lp)
        assert got[name]["mcq_lik_acc"] == pytest.approx(want["mcq_lik_acc"])
        assert got[name]["n_mcq"] == sum(it["type"] == "mcq" for it in items)
        tofu = tofu_truth_ratios_from(items, lp)
        assert got[name]["truth_ratio_tofu"] == pytest.approx(
            tofu_truth_ratio_score(tofu, name == "forget")
        )
