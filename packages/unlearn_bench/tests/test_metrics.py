"""Metrics against independent references: rouge-score, scikit-learn, scipy, zlib, hand counts."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from rouge_score import rouge_scorer
from scipy.stats import ks_2samp
from sklearn.metrics import roc_auc_score

from medcommon.metrics import (
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    rouge_l,
    zlib_score,
)
from unlearn_bench.config import EvalConfig
from unlearn_bench.data import check_dataset
from unlearn_bench.evaluate import (
    _cached_eval,
    _metrics_of,
    against_reference,
    answer_scores,
    eval_key,
    evaluate_run,
    mcq_stem,
    mia_metrics,
    option_likelihood_metrics,
    option_logprobs,
    resolved,
    task_metrics,
    task_table,
    token_stats,
    truth_ratio_score,
    truth_ratios,
    truth_ratios_from,
)


def test_task_metrics_against_rouge_score_and_hand_counts():
    items = [
        {"type": "mcq", "modality": "image_text", "answer": "B"},
        {"type": "mcq", "modality": "text_only", "answer": "C"},
        {"type": "gen", "modality": "image_text", "answer": "the lung nodules are small"},
        {"type": "gen", "modality": "text_only", "answer": "Dr. Reyes"},
        {"type": "cloze", "modality": "image_text", "answer": "Aetna"},
        {"type": "cloze", "modality": "text_only", "answer": "1980-07-25"},
    ]
    preds = [
        "B. something",
        "a",
        "a small lung nodule",
        "Dr. Reyes",
        "insurer aetna.",
        "1980-07-26",
    ]
    m = task_metrics(items, preds)
    scorer = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)  # as MLLMU-Bench
    r1 = scorer.score(items[2]["answer"], preds[2])["rougeL"].fmeasure
    r2 = scorer.score(items[3]["answer"], preds[3])["rougeL"].fmeasure
    assert m["mcq_acc"] == 0.5 and m["mcq_acc_image_text"] == 1.0 and m["mcq_acc_text_only"] == 0.0
    assert m["rougeL"] == pytest.approx((r1 + r2) / 2)
    assert m["rougeL_image_text"] == pytest.approx(r1)
    # stemmed LCS of "the lung nodul are small" / "a small lung nodul" = "lung nodul" (2 of 5 / 4)
    p, r = 2 / 4, 2 / 5
    assert r1 == pytest.approx(2 * p * r / (p + r))
    # without the stemmer "nodules" != "nodule": only "lung" matches
    assert rouge_l(preds[2], items[2]["answer"]) == pytest.approx(2 * (1 / 4) * (1 / 5) / (9 / 20))
    assert (
        m["cloze_acc"] == 0.5
        and m["cloze_acc_image_text"] == 1.0
        and m["cloze_acc_text_only"] == 0.0
    )


def test_mia_auc_matches_sklearn():
    rng = np.random.default_rng(0)
    members, non = rng.normal(1, 1, 40), rng.normal(0, 1, 30)
    expected = roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[members, non])
    assert mia_auc(members, non) == pytest.approx(expected)


# ------------------------------------------------------------------------- PrivLeak (MUSE)
def test_privleak_follows_muse():
    # MUSE reports AUC' = 1 - AUC (AUC: members high). A model that still separates forget
    # from holdout (AUC 0.757 against retrain's 0.585) leaks: PrivLeak is negative,
    # (0.243 - 0.415) / 0.415 * 100 = -41.45 (the vanilla, incorrectness).
    assert privleak(0.757, 0.585) == pytest.approx((0.243 - 0.415) / 0.415 * 100)
    assert privleak(0.757, 0.585) == pytest.approx(-41.45, abs=0.01)
    assert privleak(0.3, 0.5) == pytest.approx((0.7 - 0.5) / 0.5 * 100)  # over-unlearned: +40
    assert privleak(0.6, 0.6) == 0.0
    assert math.isnan(privleak(0.5, 1.0))


def test_against_reference_wires_privleak_and_forget_quality():
    rng = np.random.default_rng(3)
    tr_model, tr_ref = rng.lognormal(0, 1, 30).tolist(), rng.lognormal(0.5, 1, 25).tolist()
    model = {
        "mia_auc": 0.9,
        "mia_auc_mink": 0.8,
        "truth_ratios": {"forget": tr_model, "retain": [1.0] * 5},
        "subsets": {},
    }
    ref = {
        "mia_auc": 0.6,
        "mia_auc_mink": 0.55,
        "truth_ratios": {"forget": tr_ref, "retain": [9.0] * 5},
        "subsets": {},
    }
    out = against_reference(model, ref)
    assert out["privleak"] == pytest.approx((0.1 - 0.4) / 0.4 * 100)
    assert out["privleak_mink"] == pytest.approx((0.2 - 0.45) / 0.45 * 100)
    assert out["forget_quality"] == pytest.approx(ks_2samp(tr_model, tr_ref).pvalue)
    assert against_reference(model, model)["forget_quality"] == pytest.approx(1.0)
    assert "ues" not in out and "ues_vanilla" not in out  # needs the vanilla model


# ---------------------------------------------------------------------- attack scores
def test_min_k_scores_by_hand():
    lp = [-0.1, -2.0, -0.5, -3.0, -0.2]
    assert min_k_score(lp, 0.4) == pytest.approx((-3.0 - 2.0) / 2)  # int(5 * 0.4) = 2 lowest
    assert min_k_score(lp, 0.1) == pytest.approx(-3.0)  # at least one token
    mu, var = [-1.0, -1.0, -0.5, -1.0, -1.0], [4.0, 1.0, 0.25, 1.0, 0.0]
    z = [(-0.1 + 1) / 2, (-2.0 + 1) / 1, 0.0, (-3.0 + 1) / 1, (-0.2 + 1) / 1e-3]
    assert min_k_plus_plus_score(lp, mu, var, 0.4) == pytest.approx((z[3] + z[1]) / 2)


def test_zlib_score_against_zlib():
    text = "Dr. Reyes"
    assert zlib_score(1.5, text) == pytest.approx(-1.5 / len(zlib.compress(text.encode())))


def test_token_stats_by_hand():
    logits = torch.tensor([[[0.0, math.log(3.0), 0.0], [1.0, 2.0, 3.0], [0.0, 0.0, 0.0]]])
    labels = torch.tensor([[-100, 1, -100]])
    logp, mu, var, mask = token_stats(logits, labels)
    assert mask.tolist() == [[True, False]]
    p = np.array([0.2, 0.6, 0.2])  # softmax of (0, ln 3, 0)
    lp = np.log(p)
    assert logp[0, 0].item() == pytest.approx(math.log(0.6), abs=1e-6)
    assert mu[0, 0].item() == pytest.approx(float((p * lp).sum()), abs=1e-6)
    assert var[0, 0].item() == pytest.approx(
        float((p * (lp - (p * lp).sum()) ** 2).sum()), abs=1e-6
    )


def test_mia_direction_members_with_lower_loss_score_one():
    f_items = [{"field": "name"}] * 3
    g_items = [{"field": "name"}] * 2 + [{"field": "phone"}]
    # members: every attack score higher (the loss score is -NLL)
    f = {k: np.array([1.0, 2.0, 3.0]) for k in ("loss", "mink", "minkpp", "zlib")}
    g = {k: np.array([-1.0, 0.0, 99.0]) for k in ("loss", "mink", "minkpp", "zlib")}
    out = mia_metrics(f_items, f, g_items, g)
    # the "phone" item (99) is another field, left out: every member beats both others
    assert out == {"mia_auc": 1.0, "mia_auc_mink": 1.0, "mia_auc_minkpp": 1.0, "mia_auc_zlib": 1.0}


# ------------------------------------------------------------------ on the tiny model
def _answer_logprobs(model, enc, item, answer):
    """log p of each answer token (EOS included), one unpadded sequence at a time."""
    x = enc.encode(item, answer)
    logits = model(
        input_ids=x["input_ids"][None],
        attention_mask=torch.ones_like(x["input_ids"])[None],
        pixel_values=x["pixel_values"],
    ).logits[0, :-1]
    target = x["input_ids"][1:]
    keep = x["labels"][1:] != -100
    return -F.cross_entropy(logits[keep], target[keep], reduction="none")


@torch.no_grad()
def test_answer_scores_against_unbatched_cross_entropy(tiny):
    model, enc, data = tiny
    items = data["forget"][:5]  # different lengths: padding inside the batch
    got = answer_scores(model, enc, items, batch_size=4, mink_fraction=0.4)
    for i, it in enumerate(items):
        lp = _answer_logprobs(model, enc, it, None).double().numpy()
        assert got["nll"][i] == pytest.approx(-lp.mean(), rel=1e-5)
        assert got["loss"][i] == pytest.approx(lp.mean(), rel=1e-5)
        assert got["mink"][i] == pytest.approx(np.sort(lp)[: max(1, int(0.4 * lp.size))].mean())
        assert got["zlib"][i] == pytest.approx(
            lp.mean() / len(zlib.compress(it["answer"].encode()))
        )


@torch.no_grad()
def test_truth_ratio_against_unbatched_cross_entropy(tiny):
    model, enc, data = tiny
    items = [it for it in data["retain"] if it["type"] == "mcq"][:3] + data["retain"][:2]
    got = truth_ratios(model, enc, items, batch_size=5)
    mcq = [it for it in items if it["type"] == "mcq"]
    assert got.shape == (len(mcq),)
    for r, it in zip(got, mcq):
        stem = {**it, "question": mcq_stem(it)}
        assert "\nA. " not in stem["question"] and stem["question"] in it["question"]
        norm = {o: math.exp(_answer_logprobs(model, enc, stem, o).mean()) for o in it["options"]}
        wrong = [v for o, v in norm.items() if o != it["answer_text"]]
        assert len(wrong) == len(it["options"]) - 1
        assert r == pytest.approx(np.mean(wrong) / norm[it["answer_text"]], rel=1e-4)
    assert truth_ratio_score(np.array([0.5, 2.0])) == pytest.approx(0.25)


@torch.no_grad()
def test_option_likelihood_accuracy_by_hand(tiny):
    """``mcq_lik_acc`` (issue #23): right when the stored answer's option has the highest
    length-normalised log-probability, each option scored one unpadded sequence at a time."""
    model, enc, data = tiny
    items = [it for it in data["forget"] if it["type"] == "mcq"][:6] + data["forget"][:2]
    lp = option_logprobs(model, enc, items, batch_size=4)
    mcq = [it for it in items if it["type"] == "mcq"]
    hits = {"image_text": [], "text_only": []}
    for got, it in zip(lp, mcq):
        stem = {**it, "question": mcq_stem(it)}
        want = [float(_answer_logprobs(model, enc, stem, o).mean()) for o in it["options"]]
        assert got.tolist() == pytest.approx(want, abs=1e-5)
        hits[it["modality"]].append(it["options"][int(np.argmax(want))] == it["answer_text"])
    m = option_likelihood_metrics(items, lp)
    assert m["mcq_lik_acc"] == pytest.approx(np.mean(hits["image_text"] + hits["text_only"]))
    for modality, h in hits.items():
        assert m[f"mcq_lik_acc_{modality}"] == (pytest.approx(np.mean(h)) if h else None)
    # a model that prefers the stored answer scores 1, one that prefers a distractor 0
    right = [np.where(np.array(it["options"]) == it["answer_text"], 0.0, -5.0) for it in mcq]
    assert option_likelihood_metrics(items, right)["mcq_lik_acc"] == 1.0
    assert option_likelihood_metrics(items, [-r for r in right])["mcq_lik_acc"] == 0.0
    # the truth ratio reads the same option log-probabilities
    assert truth_ratios_from(items, lp) == pytest.approx(truth_ratios(model, enc, items, 4))


# ---------------------------------------------------------------------------- the cache
def test_eval_key_covers_every_setting(tiny_run, tiny_data, tmp_path):
    model_dir = tiny_run / "model"
    base = EvalConfig(max_new_tokens=2, batch_size=8, max_items=4)
    key = eval_key(base, tiny_data, "all", model_dir)
    assert key == eval_key(base, tiny_data, "all", model_dir)
    for field, value in (
        ("max_new_tokens", 3),
        ("max_items", 5),
        ("mink_fraction", 0.2),
        ("batch_size", 4),
    ):
        changed = dataclasses.replace(base, **{field: value})
        assert eval_key(changed, tiny_data, "all", model_dir) != key, field
    assert eval_key(base, tiny_data, "forget", model_dir) != key
    other = tmp_path / "data"
    shutil.copytree(tiny_data, other)
    with (other / "forget.jsonl").open("a") as fh:
        fh.write((other / "forget.jsonl").read_text().splitlines()[0] + "\n")
    assert eval_key(base, other, "all", model_dir) != key


def test_cached_evaluation_is_reused_only_under_the_same_settings(tiny_run, tiny_data, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    few = EvalConfig(max_new_tokens=2, batch_size=8, max_items=4)
    more = dataclasses.replace(few, max_items=6, max_new_tokens=3)
    first = evaluate_run(run, tiny_data, few, device="cpu", quiet=True)
    # the key holds the dtype that ran (auto resolved: float32 on the CPU)
    assert first["eval_key"] == eval_key(resolved(few, "cpu"), tiny_data, "all", run / "model")
    assert first["eval_key"] != eval_key(few, tiny_data, "all", run / "model")
    assert first["subsets"]["forget"]["n"] == 4
    data = check_dataset(tiny_data)
    cached = _metrics_of(run / "model", tiny_data, data, few, "cpu", True)
    assert cached["eval_seconds"] == first["eval_seconds"]  # read back, not recomputed
    assert (
        _cached_eval(run, eval_key(resolved(more, "cpu"), tiny_data, "all", run / "model"), "all")
        is None
    )
    fresh = _metrics_of(run / "model", tiny_data, data, more, "cpu", True)
    assert fresh["subsets"]["forget"]["n"] == 6  # recomputed under the new settings
    # a stale file from before the key existed is never reused
    stale = {k: v for k, v in json.loads((run / "eval-all.json").read_text()).items()}
    stale.pop("eval_key")
    (run / "eval-all.json").write_text(json.dumps(stale))
    assert _cached_eval(run, first["eval_key"], "all") is None


def test_a_model_against_itself_as_reference_and_vanilla(tiny_run, tiny_data, tmp_path):
    """The retrained model evaluated against itself: PrivLeak 0, forget quality 1, and UES
    undefined, since it is also the vanilla model (nothing to forget; issue #23)."""
    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    cfg = EvalConfig(max_new_tokens=2, batch_size=8, max_items=4)
    res = evaluate_run(run, tiny_data, cfg, vanilla=run, reference=run, device="cpu", quiet=True)
    assert res["privleak"] == 0.0 and res["privleak_mink"] == 0.0
    assert res["forget_quality"] == pytest.approx(1.0)
    assert res["ues"] is None and "nothing to forget" in res["ues_undefined"]
    assert res["ues_vanilla"] == 0.0
    assert res["privleak_kn_mink"] == 0.0 and res["forget_quality_tofu"] == pytest.approx(1.0)
    assert set(res["truth_ratios"]) == {"forget", "retain", "test", "general"}


# ------------------------------------------------------------------------- report table
def test_task_table_rows_subset_task_modality():
    summary = [
        {
            "method": "ga",
            "setting": "privacy",
            "metrics": {
                "forget_mcq_acc": {"mean": 0.5, "std": 0.1, "n": 2},
                "forget_mcq_acc_text_only": {"mean": 0.25, "std": 0.0, "n": 2},
                "forget_rougeL_image_text": {"mean": float("nan"), "std": float("nan"), "n": 0},
            },
        },
        {"method": "ga", "setting": "other", "metrics": {"forget_mcq_acc": {"mean": 9.0}}},
    ]
    table = task_table(summary, ["vanilla", "ga"], setting="privacy").splitlines()
    assert table[0] == "| subset | task | modality | ga |"
    assert len(table) == 2 + 4 * 3 * 3  # header, rule, subset x task x (all + 2 modalities)
    assert "| forget | mcq | all | 0.500 ± 0.100 |" in table
    assert "| forget | mcq | text_only | 0.250 ± 0.000 |" in table
    assert "| forget | gen | image_text | - |" in table
    assert "| general | cloze | text_only | - |" in table


@torch.no_grad()
def test_evaluate_model_aggregates_the_per_item_scores(tiny):
    import time

    from unlearn_bench.evaluate import evaluate_model, subsample

    model, enc, data = tiny
    cfg = EvalConfig(max_new_tokens=2, batch_size=8, max_items=5)
    sub = {"forget": data["forget"], "general": data["general"]}
    t0 = time.perf_counter()
    res = evaluate_model(model, enc.processor, enc.data_dir, sub, cfg)
    wall = time.perf_counter() - t0
    items = subsample(data["forget"], 5)
    per_item = answer_scores(model, enc, items, 8, cfg.mink_fraction)
    assert res["subsets"]["forget"]["n"] == 5 and res["n_questions"] == 10
    assert res["subsets"]["forget"]["nll"] == pytest.approx(per_item["nll"].mean(), rel=1e-5)
    assert res["truth_ratios"]["forget"] == pytest.approx(
        truth_ratios(model, enc, items, 8).tolist()
    )
    assert 0 < res["eval_seconds"] <= wall
    assert res["questions_per_second"] == pytest.approx(10 / res["eval_seconds"])
