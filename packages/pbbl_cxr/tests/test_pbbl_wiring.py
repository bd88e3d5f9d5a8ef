"""PBBL's wiring, pinned by independent recomputation (issue 10, item 8).

Every stage PBBL trains is recorded (a wrapper around ``run_stage``); the test then
recomputes, from the recorded models and without the package's helpers, what each stage
should have been given: round 1 fits the labels, round 2 fits round 1's Youden pseudo
labels, stage 1 is GCE, stage 2's loss is ``CE(z + log(P + eps)[b_hat], y)`` with the
logged prior counted from ``b_hat``, and the valid pseudo labels use the train threshold.
Each of these one-line breaks fails here: stage 2 on the true bias, a sign flip on the
log-prior, stage 2 as plain CE, argmax pseudo labels, round 1 fitted to the bias, a
non-GCE stage 1.
"""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score, roc_curve

import pbbl_cxr.methods.pbbl as pbbl_mod
from pbbl_cxr.config import RunConfig, resolve_select_metric, run_preset
from pbbl_cxr.data import DataOptions, XrayDataset, load_split
from pbbl_cxr.methods import RunContext, run_method
from pbbl_cxr.pseudo import (
    apply_threshold,
    fold_ids,
    log_prior,
    marginal_prior,
    prior_check,
    pseudo_balanced_auc,
)

Q = 0.7


def _cfg(**changes) -> RunConfig:
    kw = {"steps": 2, "bias_steps": 3, "rounds": 2, "eval_every": 1, "gce_q": Q}
    return replace(run_preset("tiny"), **{**kw, **changes})


@pytest.fixture(scope="module")
def splits(gbp_tiny: Path):
    opts = DataOptions(image_size=24)
    return load_split(gbp_tiny, "train", opts), load_split(gbp_tiny, "valid", opts)


def _record(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    real = pbbl_mod.run_stage

    def spy(ctx, model, train_set, step, **kw):
        res = real(ctx, model, train_set, step, **kw)
        calls.append({"train": train_set, "step": step, "model": res.model, "res": res, **kw})
        return res

    monkeypatch.setattr(pbbl_mod, "run_stage", spy)
    return calls


@torch.no_grad()
def _p1(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
    model.eval()
    return torch.softmax(model(images.float()), 1)[:, 1].double().numpy()


def _youden_labels(y: np.ndarray, score: np.ndarray) -> np.ndarray:
    """Reference: sklearn's ROC sweep, ``b = 1[score >= thr*]`` at ``argmax TPR - FPR``."""
    fpr, tpr, thr = roc_curve(y, score)
    return (score >= thr[np.argmax(tpr - fpr)]).astype(np.int64)


def _j(y: np.ndarray, b: np.ndarray) -> float:
    return b[y == 1].mean() - b[y == 0].mean()


def _fixed_batch(size: int) -> dict:
    g = torch.Generator().manual_seed(1)
    y = torch.tensor([0, 1, 1, 0, 1, 0])
    b_hat = torch.tensor([0, 1, 0, 1, 1, 0])
    return {
        "image": torch.rand(6, 1, size, size, generator=g),
        "label": y,
        "bias_hat": b_hat,
        "bias": 1 - b_hat,  # the true bias differs everywhere: reading it is caught
        "index": torch.arange(6),
    }


def _ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample CE written out: logsumexp(z) - z_y."""
    return torch.logsumexp(logits, 1) - logits.gather(1, y[:, None]).squeeze(1)


def test_cross_fit_batch_guard_is_the_fold_models_training_size(splits):
    """A batch of exactly the images a fold model trains on runs; one more is bad input."""
    from medcommon.errors import InputError

    train, valid = splits
    n_fit = len(train) - int(torch.bincount(fold_ids(train.labels, 3, 0)).max())
    ok = _cfg(pseudo_labels="cross-fit", folds=3, rounds=1, bias_steps=1, steps=1,
              batch_size=n_fit, degenerate_response="none")  # fmt: skip
    run_method("pbbl", RunContext(ok, train, valid, seed=0))
    with pytest.raises(InputError, match=f"exceeds the {n_fit} images"):
        run_method("pbbl", RunContext(replace(ok, batch_size=n_fit + 1), train, valid, seed=0))


@pytest.mark.parametrize("mode", ["in-sample", "cross-fit"])
def test_pbbl_stages_are_wired_as_described(mode, splits, monkeypatch):
    train, valid = splits
    calls = _record(monkeypatch)
    cfg = _cfg(pseudo_labels=mode, folds=3, degenerate_response="none")
    t0 = time.perf_counter()
    out = run_method("pbbl", RunContext(cfg, train, valid, seed=0))
    assert 0 < out.train_seconds <= time.perf_counter() - t0
    y = train.labels.numpy()
    stage1 = [c for c in calls if c["stage"].startswith("bias-r")]
    assert len(stage1) == cfg.rounds * (cfg.folds if mode == "cross-fit" else 1)
    path_index = {p: i for i, p in enumerate(train.paths)}

    # Stage 1 keeps the final weights (no selection: it must not see valid bias labels).
    assert all(c["select"] is False for c in stage1)
    # Stage 1 is GCE on the dataset's bias_hat: the step equals -log p_t * q * p_t^q.
    batch = _fixed_batch(24)
    for c in stage1:
        net = copy.deepcopy(c["model"])  # a train-mode call would move BN running stats
        logits = net(batch["image"])
        p_t = torch.softmax(logits, 1).gather(1, batch["bias_hat"][:, None]).squeeze(1)
        want = (-torch.log(p_t) * Q * p_t**Q).mean()
        assert c["step"](net, batch, None).item() == pytest.approx(want.item(), rel=1e-5)

    # Round by round: the target is the labels (round 1) or the previous round's pseudo
    # labels, and the pseudo labels are Youden-thresholded held-out (or in-sample) scores.
    target = y.copy()
    valid_score = np.zeros(len(valid))
    for r in range(1, cfg.rounds + 1):
        models = [c for c in stage1 if c["stage"].startswith(f"bias-r{r}")]
        score = np.full(len(train), np.nan)
        valid_score[:] = 0
        for c in models:
            idx = np.array([path_index[p] for p in c["train"].paths])
            assert c["train"].bias_hat.numpy().tolist() == target[idx].tolist(), r
            assert c["train"].labels.numpy().tolist() == y[idx].tolist()
            held = np.setdiff1d(np.arange(len(train)), idx) if mode == "cross-fit" else idx
            if mode == "cross-fit":
                assert len(held) > 0 and np.isnan(score[held]).all()  # disjoint folds
            score[held] = _p1(c["model"], train.images[held])
            valid_score += _p1(c["model"], valid.images) / len(models)
        assert not np.isnan(score).any()  # every image scored
        b_ref = _youden_labels(y, score)
        b_run = out.info["b_hat"].numpy() if r == cfg.rounds else None
        fact = out.info["rounds"][r - 1]
        t = fact["threshold"]
        b_t = (score > t).astype(np.int64)
        assert _j(y, b_t) == pytest.approx(_j(y, b_ref), abs=1e-9)  # a Youden point
        assert fact["pseudo_bias_accuracy"] == pytest.approx((b_t == train.bias.numpy()).mean())
        assert fact["agreement_with_label"] == pytest.approx((b_t == y).mean())
        target = b_t
        if b_run is not None:
            assert b_run.tolist() == b_t.tolist()

    # Stage 2: trained on b_hat with the prior counted from (b_hat, y), loss by hand.
    assert out.info["stage1_seconds_per_step"] == stage1[-1]["res"].seconds_per_step
    (s2,) = [c for c in calls if c["stage"] == "debias"]
    assert s2["select"] is True  # stage 2 keeps its best valid checkpoint
    b_hat = out.info["b_hat"]
    assert torch.equal(s2["train"].bias_hat, b_hat)
    counts = np.zeros((2, 2))
    for b, yy in zip(b_hat.tolist(), y.tolist()):
        counts[b, yy] += 1
    want_prior = counts / counts.sum(1, keepdims=True)
    prior = torch.tensor(out.info["prior"], dtype=torch.float64)
    assert prior.numpy() == pytest.approx(want_prior, abs=1e-6)
    assert not torch.allclose(prior[0], prior[1])  # non-degenerate: the prior matters
    net = copy.deepcopy(s2["model"])
    logits = net(batch["image"])
    adj = logits + torch.log(prior.float() + cfg.prior_eps)[batch["bias_hat"]]
    want = _ce(adj, batch["label"]).mean()
    assert s2["step"](net, batch, None).item() == pytest.approx(want.item(), rel=1e-5)

    # Selection: valid pseudo labels from the last round's model(s) and the train threshold.
    v_hat = (valid_score > out.info["rounds"][-1]["threshold"]).astype(np.int64)
    assert s2["valid_bias_hat"].numpy().tolist() == v_hat.tolist()
    assert out.info["select_metric"] == "pseudo_balanced_auc"
    assert "pseudo_balanced_auc" in out.valid_metrics


@pytest.mark.parametrize(
    "method,mode",
    [("pbbl", "cross-fit"), ("pbbl", "in-sample"), ("gce", ""), ("erm", ""), ("lff", "")],
)
def test_methods_without_bias_never_read_the_train_or_valid_bias_column(method, mode, splits):
    train, valid = splits
    cfg = _cfg(pseudo_labels=mode or "cross-fit", folds=2, degenerate_response="none")
    if method != "pbbl":  # the others select on true-bias AUC by default: select on AUC
        cfg = replace(cfg, select_metric="auc")
    runs = []
    for keep_bias in (True, False):
        tr, va = train, valid
        if not keep_bias:
            tr = XrayDataset(
                train.images, train.labels, torch.full_like(train.bias, -1), train.paths
            )
            va = XrayDataset(
                valid.images, valid.labels, torch.full_like(valid.bias, -1), valid.paths
            )
        t0 = time.perf_counter()
        runs.append(run_method(method, RunContext(cfg, tr, va, seed=0)))
        assert 0 < runs[-1].train_seconds <= time.perf_counter() - t0
    a, b = (r.model.state_dict() for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    if method == "pbbl":
        assert torch.equal(runs[0].info["b_hat"], runs[1].info["b_hat"])
        assert runs[0].info["prior"] == runs[1].info["prior"]


def test_degenerate_prior_is_detected_logged_warned_and_replaced(splits, tmp_path, capsys):
    train, _ = splits
    ctx = RunContext(_cfg(), train, None, run_dir=tmp_path)
    prior, check = pbbl_mod.stage2_prior(ctx, train.labels.clone())  # b_hat == y
    assert check["degenerate"] and check["agreement"] == 1.0
    assert sorted(check["empty_cells"]) == [[0, 1], [1, 0]]
    p1 = train.labels.float().mean().item()
    assert prior.flatten().tolist() == pytest.approx([1 - p1, p1, 1 - p1, p1])
    err = capsys.readouterr().err
    assert "degenerate prior" in err and "label marginal" in err
    rec = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert rec[-1]["prior_check"]["response"] == "marginal"
    # the authors' behaviour on request: the identity prior, still warned about
    ctx = RunContext(_cfg(degenerate_response="none"), train, None)
    prior, check = pbbl_mod.stage2_prior(ctx, train.labels.clone())
    assert prior.tolist() == [[1.0, 0.0], [0.0, 1.0]] and check["response"] == "none"
    err = capsys.readouterr().err
    assert "degenerate prior" in err and "kept as is" in err


def test_prior_check_flags_empty_and_near_empty_cells():
    y = torch.tensor([0] * 500 + [1] * 500)
    b = y.clone()
    b[:2] = 1  # two conflicting samples in row b=1 (2 of 502); cell (b=0, y=1) empty
    c = prior_check(b, y, 2, 0.002)
    assert c["empty_cells"] == [[0, 1]] and c["near_empty_cells"] == [[0, 1]]
    assert c["degenerate"] and c["counts"] == [[498, 0], [2, 500]]
    b[500] = 0  # (0, 1) now holds 1 of 499 = 0.002004 of its row: not below 0.002
    c = prior_check(b, y, 2, 0.002)
    assert not c["degenerate"] and c["min_share"] == pytest.approx(1 / 499)
    assert prior_check(b, y, 2, 0.0021)["near_empty_cells"] == [[0, 1]]  # 1/499 < 0.0021
    assert prior_check(b, y, 2, 0.0041)["near_empty_cells"] == [[0, 1], [1, 0]]
    assert not prior_check(b, y, 2, 0.0)["degenerate"]  # 0: empty cells only
    assert c["agreement"] == pytest.approx(0.997)  # logged, not used: 0.997 > 0.99 passes
    # b_hat constant: a whole row empty
    c = prior_check(torch.zeros(10, dtype=torch.long), torch.tensor([0, 1] * 5), 2, 0.0)
    assert c["degenerate"] and c["empty_cells"] == [[1, 0], [1, 1]] and c["min_share"] == 0.0


PUBLIC_ROOTS = (  # the committed copy; the shared reference copy where this machine has it
    Path(__file__).parent / "data" / "pbbl-public-csv",
    Path("/work/shared/data/pbbl-public-csv"),
)
PUBLIC = ("GbP-case1", "GbP-case2", "SbP-bias90", "SbP-bias95", "SbP-bias99")


def _published_train(folder: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """(labels, bias) of a published split's train manifest(s), images not needed."""
    from pbbl_cxr.data import read_manifest, split_files

    rows = [r for f in split_files(folder, "train") for r in read_manifest(f, DataOptions())]
    return torch.tensor([r.label for r in rows]), torch.tensor([r.bias for r in rows])


def _guard(labels: torch.Tensor, b_hat: torch.Tensor, capsys) -> dict:
    """The prior check ``stage2_prior`` makes with the default config (no run folder)."""
    cfg = RunConfig()  # the default threshold and response (gbp-robust/sbp-robust too)
    ctx = RunContext(cfg, XrayDataset(torch.zeros(len(labels), 1, 1, 1), labels, labels), None)
    capsys.readouterr()
    prior, check = pbbl_mod.stage2_prior(ctx, b_hat)
    check["prior"], check["stderr"] = prior, capsys.readouterr().err
    return check


@pytest.mark.parametrize("copy", [0, 1], ids=["tests-data", "shared-data"])
@pytest.mark.parametrize("name", PUBLIC)
def test_a_perfect_stage1_keeps_its_prior_on_every_published_split(name, copy, capsys):
    """Issue #20: with b_hat = the true bias (a perfect stage 1) no published split trips
    the guard, SbP-bias99 included (cells 5000/50/50/5000; the old agreement cut-off
    fired there: 10000/10100 = 0.9901 > 0.99), so PBBL keeps the counted prior."""
    folder = PUBLIC_ROOTS[copy] / name
    if copy and not folder.is_dir():
        pytest.skip(f"{folder} not here")
    y, b = _published_train(folder)
    check = _guard(y, b, capsys)
    assert not check["degenerate"] and check["response"] == "none", check
    assert "degenerate" not in check["stderr"]
    # (aligned, conflicting) per class, as the authors state them
    a, c = {"GbP-case1": (800, 100), "GbP-case2": (800, 100), "SbP-bias90": (5000, 500),
            "SbP-bias95": (5000, 250), "SbP-bias99": (5000, 50)}[name]  # fmt: skip
    assert check["counts"] == [[a, c], [c, a]]
    assert check["min_share"] == pytest.approx(c / (a + c)) and c / (a + c) >= 0.0099
    if name == "SbP-bias99":
        assert check["agreement"] == pytest.approx(10000 / 10100) and check["agreement"] > 0.99
        # the prior stage 2 uses is the counted one, not the label marginal
        want = [5000 / 5050, 50 / 5050, 50 / 5050, 5000 / 5050]
        assert check["prior"].flatten().tolist() == pytest.approx(want)


@pytest.mark.parametrize("preset", ["demo", "small", "tiny"])
def test_the_guard_fires_in_the_no_shortcut_setting(preset, capsys):
    """The benchmark's no-shortcut setting (GbP, 90 % aligned, an easy lesion): a stage 1
    that learned the label (b_hat = y, as measured there: agreement 1.000) leaves the
    conflicting cells empty, one that errs on 1 image per class leaves them near-empty;
    both are flagged and replaced by the label marginal. A perfect bias proxy there is
    not."""
    from pbbl_cxr.benchmark import NO_SHORTCUT
    from pbbl_cxr.synth import group_counts

    n = NO_SHORTCUT.synth_config(preset).n_train
    groups = group_counts(n, NO_SHORTCUT.bias_ratio)
    y = torch.tensor([g[0] for g, k in groups.items() for _ in range(k)])
    b = torch.tensor([g[1] for g, k in groups.items() for _ in range(k)])
    check = _guard(y, y.clone(), capsys)
    assert check["degenerate"] and check["response"] == "marginal"
    assert sorted(check["near_empty_cells"]) == [[0, 1], [1, 0]]
    assert "degenerate prior" in check["stderr"] and "learned the label" in check["stderr"]
    p1 = float(y.float().mean())
    assert check["prior"].flatten().tolist() == pytest.approx([1 - p1, p1, 1 - p1, p1])
    if n >= 1000:  # one mistake per class: near-empty (1 of n/2 < 0.002 of the row)
        b_hat = y.clone()
        b_hat[torch.nonzero(y == 0)[0]] = 1
        b_hat[torch.nonzero(y == 1)[0]] = 0
        check = _guard(y, b_hat, capsys)
        assert check["degenerate"] and not check["empty_cells"]
    assert not _guard(y, b, capsys)["degenerate"]  # a bias proxy would keep its prior


def test_marginal_prior_rows_are_the_label_share():
    y = torch.tensor([0, 1, 1, 1])
    assert marginal_prior(y, 2, 2).tolist() == [[0.25, 0.75], [0.25, 0.75]]


def test_fold_ids_are_stratified_and_seeded():
    y = torch.tensor([0] * 10 + [1] * 7 + [2] * 5)
    f = fold_ids(y, 3, seed=4)
    for c in (0, 1, 2):
        n = torch.bincount(f[y == c], minlength=3)
        assert n.max() - n.min() <= 1
    assert torch.equal(f, fold_ids(y, 3, seed=4))
    assert not torch.equal(f, fold_ids(y, 3, seed=5))


def test_apply_threshold_uses_the_given_threshold_or_argmax():
    p1 = torch.tensor([0.2, 0.5, 0.7])
    probs = torch.stack([1 - p1, p1], 1)
    assert apply_threshold(probs, 0.5).tolist() == [0, 0, 1]  # strictly above, as on train
    assert apply_threshold(probs, 0.1).tolist() == [1, 1, 1]
    three = torch.tensor([[0.2, 0.5, 0.3], [0.6, 0.3, 0.1]])
    assert apply_threshold(three, None).tolist() == [1, 0]


def test_log_prior_keeps_empty_cells_finite():
    lp = log_prior(torch.tensor([[1.0, 0.0]]), 1e-9)
    assert lp[0].tolist() == pytest.approx([0.0, math.log(1e-9)], abs=1e-5)


def test_pseudo_balanced_auc_by_hand():
    y = torch.tensor([0, 0, 1, 1, 0, 0, 1, 1])
    s = torch.tensor([0.1, 0.85, 0.4, 0.9, 0.2, 0.7, 0.95, 0.8])
    b = torch.tensor([0, 0, 1, 1, 1, 1, 0, 0])
    aligned = [0, 1, 2, 3]
    conflicting = [4, 5, 6, 7]
    want = (
        roc_auc_score(y[aligned], s[aligned]) + roc_auc_score(y[conflicting], s[conflicting])
    ) / 2
    assert roc_auc_score(y[aligned], s[aligned]) == 0.75  # the groups differ, and from
    assert roc_auc_score(y[conflicting], s[conflicting]) == 1.0  # the overall AUC
    assert roc_auc_score(y, s) not in (0.75, 1.0, want)
    assert pseudo_balanced_auc(y, s, b) == pytest.approx(want)
    # degenerate groups (b == y): the empty group counts as the overall AUC
    assert pseudo_balanced_auc(y, s, y) == pytest.approx(roc_auc_score(y, s))
    assert not math.isnan(pseudo_balanced_auc(y, s, y))


def test_select_metric_auto_is_pseudo_for_pbbl_and_oracle_otherwise():
    assert resolve_select_metric("auto", True) == "pseudo_balanced_auc"
    assert resolve_select_metric("auto", False) == "auc_balanced"
    assert resolve_select_metric("balanced_auc", True) == "auc_balanced"
    assert resolve_select_metric("auc", True) == "auc"
    assert RunConfig().select_metric == "auto"


def test_registration_keeps_the_decorated_functions():
    from pbbl_cxr.methods import METHODS, run_erm, run_pbbl

    assert METHODS.get("pbbl").run is run_pbbl and METHODS.get("erm").run is run_erm
    assert not METHODS.get("pbbl").needs_bias and METHODS.get("groupdro").needs_bias


def test_bbs_oracle_prior_is_counted_from_the_true_bias(splits):
    train, valid = splits
    out = run_method("bbs-oracle", RunContext(_cfg(steps=1), train, valid, seed=0))
    counts = np.zeros((2, 2))
    for b, yy in zip(train.bias.tolist(), train.labels.tolist()):
        counts[b, yy] += 1
    want = counts / counts.sum(1, keepdims=True)
    assert np.array(out.info["prior"]) == pytest.approx(want, abs=1e-6)
