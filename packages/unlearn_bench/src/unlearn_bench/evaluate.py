"""Evaluation per subset: MCQ accuracy, ROUGE-L, cloze accuracy, truth ratio; MIA; PrivLeak; UES.

Tasks (MLLMU-Bench): multiple choice scores the first generated letter (asked zero-shot,
or few-shot as MLLMU-Bench's eval.py with ``mcq_prompt="mllmu_few_shot"``,
:func:`mllmu_mcq_items`); generation
scores ROUGE-L F (Porter stemmer, as MLLMU-Bench's ``use_stemmer=True``) of the greedy
answer against the reference, and ROUGE-L recall with the stemmer (open-unlearning's
``rougeL_recall``); cloze counts the reference as a substring of the greedy answer. Each
also per modality, with the suffixes ``_image_text`` and ``_text_only``. ``mcq_lik_acc``
reads multiple choice by option likelihood (issue #23).

Truth ratio as TOFU (Maini et al. 2024) and open-unlearning define it, for an MCQ item
with stem q, stored answer a and distractors d_j (length-normalised probabilities of the
option texts as free answers to the stem): ``R = (prod_j p~(d_j))^(1/J) / p~(a)``, the
geometric mean. ``truth_ratio_tofu`` aggregates it "closer to 1" on the forget side and
"true better" elsewhere; ``forget_quality_tofu`` is the KS-test p-value
(``scipy.stats.ks_2samp``) of the forget items' R under the model against the retrained
model (TOFU's forget quality; 1 = indistinguishable from retrain). ``truth_ratio`` and
``forget_quality`` are the former, arithmetic-mean ratio, kept for comparison.

Membership inference (forget = members, general = non-members of the same fields; three
pools, :data:`MIA_POOLS`: every probe, generation and cloze probes only, and the verbatim
training QA against held-out questions in the same template), open-unlearning's attacks,
each a per-item score where higher means "member" (:mod:`medcommon.metrics.privacy`):
``loss`` (negative mean answer NLL), ``mink`` (Min-K% Prob, k =
``EvalConfig.mink_fraction``, 0.4 as MUSE's PrivLeak), ``minkpp`` (Min-K%++) and
``zlib``. ``mia_auc[_mink|_minkpp|_zlib]`` are their ROC AUCs and
``privleak[...]`` MUSE's PrivLeak against the retrained model:
``(AUC'_model - AUC'_retrain) / AUC'_retrain * 100`` with ``AUC' = 1 - AUC``; ideal 0,
negative when the model still leaks (under-unlearning), positive when over-unlearned.

Every result carries ``eval_key``, a hash of every setting the numbers depend on
(:func:`eval_key`); a cached evaluation is reused only under the same key.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
from tqdm.auto import tqdm

from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.metrics import (
    mia_auc,
    min_k_plus_plus_score,
    min_k_score,
    privleak,
    rouge_l,
    substring_match,
    zlib_score,
)
from medcommon.run import load_run
from medcommon.train.accelerator import resolve_device
from unlearn_bench import PACKAGE
from unlearn_bench.config import EvalConfig
from unlearn_bench.data import Encoder, check_dataset, collate
from unlearn_bench.losses import token_logprobs
from unlearn_bench.model import check_llava_dir, load_llava
from unlearn_bench.scale import resolve_dtype, torch_dtype
from unlearn_bench.synth import LETTERS, SPLITS
from unlearn_bench.ues import ues as ues_score
from unlearn_bench.ues import ues_undefined, ues_vanilla

TASK_METRICS = {"mcq": "mcq_acc", "gen": "rougeL", "cloze": "cloze_acc"}
# Subsets whose TOFU truth ratio is aggregated "closer to 1 is better" (open-unlearning's
# forget_Truth_Ratio); every other subset "true better" (its retain_Truth_Ratio).
FORGET_SIDE = ("forget", "test", "forget_val")
MODALITY_SUFFIXES = (("", None), ("_image_text", "image_text"), ("_text_only", "text_only"))
# attack -> the suffix of its mia_auc / privleak keys
MIA_ATTACKS = {"loss": "", "mink": "_mink", "minkpp": "_minkpp", "zlib": "_zlib"}
# The membership pools (issue #23), each keyed mia<pool>_auc<attack> / privleak<pool><attack>:
# "" = every forget probe against every general probe (the former pools, MCQ included);
# "_kn" = knowledge-level: generation and cloze probes only (a single-letter MCQ answer is
# at chance); "_vb" = verbatim, as MUSE: the forget training QA in its first wording
# against the held-out entities' questions in the same template (general_train).
MIA_POOLS = ("", "_kn", "_vb")
# Bump when a metric's definition changes: old cached evaluations then no longer match.
# 3: mcq_lik_acc (option likelihood, issue #23); 4: rougeL_recall, truth_ratio_tofu,
# forget_quality_tofu, the knowledge-level and verbatim MIA pools, UES undefined (null)
# where vanilla has nothing to forget (issue #23).
METRICS_VERSION = 4


@torch.no_grad()
def generate_answers(
    model,
    enc: Encoder,
    items: Sequence[dict],
    max_new_tokens: int,
    batch_size: int,
    quiet: bool = True,
) -> list[str]:
    """Batched greedy decoding with a KV cache (left padding, explicit position ids)."""
    tok = enc.tokenizer
    pad, eos = tok.pad_token_id, tok.eos_token_id
    device = next(model.parameters()).device
    prompts = [enc.prompt(it) for it in items]
    order = sorted(range(len(items)), key=lambda i: len(prompts[i][0]))
    answers = [""] * len(items)
    starts = range(0, len(order), batch_size)
    for start in tqdm(starts, desc="generate", disable=quiet, leave=False):
        idx = order[start : start + batch_size]
        n = max(len(prompts[i][0]) for i in idx)
        ids = torch.full((len(idx), n), pad, dtype=torch.long)
        mask = torch.zeros((len(idx), n), dtype=torch.long)
        for row, i in enumerate(idx):
            p = prompts[i][0]
            ids[row, n - len(p) :] = torch.tensor(p)
            mask[row, n - len(p) :] = 1
        pix = [prompts[i][1] for i in idx if prompts[i][1] is not None]
        ids, mask = ids.to(device), mask.to(device)
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=pos,
            pixel_values=torch.cat(pix).to(device) if pix else None,
            use_cache=True,
            logits_to_keep=1,
        )
        nxt = out.logits[:, -1].argmax(-1)
        done = nxt == eos
        tokens, last = [nxt], pos[:, -1]
        for _ in range(max_new_tokens - 1):
            if bool(done.all()):
                break
            mask = torch.cat([mask, mask.new_ones((len(idx), 1))], dim=1)
            last = last + 1
            out = model(
                input_ids=nxt[:, None],
                attention_mask=mask,
                position_ids=last[:, None],
                past_key_values=out.past_key_values,
                use_cache=True,
            )
            nxt = torch.where(done, torch.full_like(nxt, pad), out.logits[:, -1].argmax(-1))
            tokens.append(nxt)
            done = done | (nxt == eos)
        seqs = torch.stack(tokens, dim=1).tolist()
        for row, i in enumerate(idx):
            seq = seqs[row]
            if eos in seq:
                seq = seq[: seq.index(eos)]
            answers[i] = tok.decode(seq, skip_special_tokens=True).strip()
    return answers


def token_stats(
    logits: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per answer token: ``log p(y_t)``, and mean / variance of ``log p`` under ``p`` itself.

    Args:
        logits: ``(B, T, V)``; labels: ``(B, T)`` with -100 outside the answer.

    Returns:
        ``(logp, mu, var, mask)``, each ``(B, T-1)`` (shifted for next-token prediction);
        ``mu_t = sum_z p(z) log p(z)`` and ``var_t = sum_z p(z) log p(z)^2 - mu_t^2``
        (Min-K%++'s normalisers).
    """
    logp, mask = token_logprobs(logits, labels)
    lsm = torch.log_softmax(logits[:, :-1].float(), dim=-1)
    p = lsm.exp()
    mu = (p * lsm).sum(-1)
    var = (p * lsm.square()).sum(-1) - mu.square()
    return logp, mu, var, mask


def _teacher_forced(model, enc: Encoder, items: Sequence[dict], batch_size: int):
    """Per batch of ``items``: ``(chunk, logits (B, T, V), labels (B, T))``, answers teacher-forced."""
    device = next(model.parameters()).device
    pad = enc.tokenizer.pad_token_id
    for start in range(0, len(items), batch_size):
        chunk = items[start : start + batch_size]
        batch = collate([enc.encode(it) for it in chunk], pad)
        batch = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            use_cache=False,
        ).logits
        yield chunk, logits, batch["labels"]


@torch.no_grad()
def answer_scores(
    model, enc: Encoder, items: Sequence[dict], batch_size: int, mink_fraction: float
) -> dict[str, np.ndarray]:
    """Per item (teacher forcing on the answer and EOS): ``nll`` and the MIA attack scores.

    Returns ``{"nll", "loss", "mink", "minkpp", "zlib"}``, each ``(N,)``; every attack
    score is higher for "member" (``loss = -nll``; see the module docstring).
    """
    out: dict[str, list[float]] = {k: [] for k in ("nll", "mink", "minkpp", "zlib")}
    for chunk, logits, labels in _teacher_forced(model, enc, items, batch_size):
        logp, mu, var, m = token_stats(logits, labels)
        for row, it in enumerate(chunk):
            keep = m[row]
            lp = logp[row][keep].double().cpu().numpy()
            nll = float(-lp.mean())
            out["nll"].append(nll)
            out["mink"].append(min_k_score(lp, mink_fraction))
            out["minkpp"].append(
                min_k_plus_plus_score(
                    lp,
                    mu[row][keep].double().cpu().numpy(),
                    var[row][keep].double().cpu().numpy(),
                    mink_fraction,
                )
            )
            out["zlib"].append(zlib_score(nll, it["answer"]))
    res = {k: np.asarray(v, dtype=np.float64) for k, v in out.items()}
    res["loss"] = -res["nll"]
    return res


def mcq_stem(item: dict) -> str:
    """The question of an MCQ item without its appended ``\nA. ...`` option lines."""
    q = item["question"]
    cut = q.find("\nA. ")
    return q if cut < 0 else q[:cut]


def _mcq_with_options(items: Sequence[dict]) -> list[dict]:
    """The MCQ items that store their option texts (truth ratio, option likelihood)."""
    return [it for it in items if it["type"] == "mcq" and it.get("options")]


@torch.no_grad()
def option_logprobs(
    model, enc: Encoder, items: Sequence[dict], batch_size: int
) -> list[np.ndarray]:
    """Per MCQ item with stored ``options`` (in order): ``(K,)`` the mean token log p of
    each option text as a free answer to the stem (the EOS token included), i.e.
    ``log p~(o_k | stem)``, length-normalised."""
    mcq = _mcq_with_options(items)
    rows: list[tuple[int, dict]] = []  # (item index, item with the option as its answer)
    for i, it in enumerate(mcq):
        stem = {**it, "question": mcq_stem(it)}
        rows += [(i, {**stem, "answer": opt}) for opt in it["options"]]
    mean_lp: list[float] = []
    for _, logits, labels in _teacher_forced(model, enc, [r[1] for r in rows], batch_size):
        logp, mask = token_logprobs(logits, labels)
        mean_lp += (logp.sum(-1) / mask.sum(-1).clamp(min=1)).double().cpu().tolist()
    out: list[list[float]] = [[] for _ in mcq]
    for (i, _), lp in zip(rows, mean_lp):
        out[i].append(lp)
    return [np.asarray(v) for v in out]


def truth_ratios_from(items: Sequence[dict], option_lp: Sequence[np.ndarray]) -> np.ndarray:
    """TOFU's truth ratio per MCQ item with options: ``mean_j p~(d_j) / p~(a)`` from
    :func:`option_logprobs` (``p~ = exp`` of the length-normalised log-probability)."""
    ratios = []
    for it, lp in zip(_mcq_with_options(items), option_lp):
        true = [k for k, o in enumerate(it["options"]) if o == it["answer_text"]]
        p = np.exp(lp)
        ratios.append(np.mean(np.delete(p, true)) / p[true[0]])
    return np.asarray(ratios)


def tofu_truth_ratios_from(items: Sequence[dict], option_lp: Sequence[np.ndarray]) -> np.ndarray:
    """TOFU's truth ratio as TOFU and open-unlearning define it, per MCQ item with options:
    the *geometric* mean of the distractors' length-normalised probabilities over the
    answer's, ``R = exp(mean_j log p~(d_j) - log p~(a))`` (open-unlearning averages the
    wrong answers' mean token losses, then exponentiates: ``wrong_prob / correct_prob``)."""
    ratios = []
    for it, lp in zip(_mcq_with_options(items), option_lp):
        true = [k for k, o in enumerate(it["options"]) if o == it["answer_text"]]
        ratios.append(float(np.exp(np.mean(np.delete(lp, true)) - lp[true[0]])))
    return np.asarray(ratios)


def tofu_truth_ratio_score(ratios: np.ndarray, forget_side: bool) -> float | None:
    """open-unlearning's aggregates of TOFU ratios: ``closer_to_1_better``
    ``mean min(R, 1/(R + 1e-10))`` on the forget side (1 = the model cannot tell the
    answer from the distractors), ``true_better`` ``mean max(0, 1 - R)`` elsewhere."""
    if not len(ratios):
        return None
    if forget_side:
        return float(np.mean(np.minimum(ratios, 1.0 / (ratios + 1e-10))))
    return float(np.mean(np.maximum(0.0, 1.0 - ratios)))


@torch.no_grad()
def truth_ratios(model, enc: Encoder, items: Sequence[dict], batch_size: int) -> np.ndarray:
    """TOFU's truth ratio of every MCQ item with stored ``options`` (see module docstring).

    Returns ``(M,)`` for the M such items, in order: ``mean_j p~(d_j) / p~(a)`` with
    ``p~(y) = exp(mean token log p(y | stem))`` (the EOS token included).
    """
    return truth_ratios_from(items, option_logprobs(model, enc, items, batch_size))


def option_likelihood_metrics(
    items: Sequence[dict], option_lp: Sequence[np.ndarray]
) -> dict[str, float | None]:
    """``mcq_lik_acc`` overall and per modality (issue #23): an MCQ item counts as right
    when its stored answer's option has the highest length-normalised log-probability
    (:func:`option_logprobs`; ties go to the first option). Reads what the model knows
    without asking it to produce a letter."""
    hits: dict[str, list[float]] = {suffix: [] for suffix, _ in MODALITY_SUFFIXES}
    for it, lp in zip(_mcq_with_options(items), option_lp):
        right = float(it["options"][int(np.argmax(lp))] == it["answer_text"])
        for suffix, keep in MODALITY_SUFFIXES:
            if keep is None or it["modality"] == keep:
                hits[suffix].append(right)
    return {f"mcq_lik_acc{suffix}": _mean(v) for suffix, v in hits.items()}


@torch.no_grad()
def knowledge_metrics(
    model, processor, data_dir: str | Path, data: dict[str, list[dict]], batch_size: int
) -> dict[str, dict[str, float | None]]:
    """Per subset, what the model knows without generating (issue #23): ``mcq_lik_acc``
    (overall and per modality), TOFU's ``truth_ratio_tofu`` and ``n_mcq``.

    Teacher-forced scoring only (:func:`option_logprobs`), so a dose grid can afford it
    at every point; the full :func:`evaluate_model` adds generation and membership.
    """
    model.eval()
    enc = Encoder(processor, data_dir)
    out: dict[str, dict[str, float | None]] = {}
    for name, items in data.items():
        option_lp = option_logprobs(model, enc, items, batch_size)
        tofu = tofu_truth_ratios_from(items, option_lp)
        out[name] = {
            **option_likelihood_metrics(items, option_lp),
            "truth_ratio_tofu": tofu_truth_ratio_score(tofu, name in FORGET_SIDE),
            "n_mcq": float(len(option_lp)),
        }
    return out


# MLLMU-Bench's eval.py (evaluate_classification): the line after the options, and the
# subsets whose questions get demonstrations (its modes forget, retain_shared, test); the
# celebrities (retain_celebrity, our "general") get the same question format without them.
MLLMU_LETTER_RULE = "Just give ONE letter representing the answer directly."
FEW_SHOT_SUBSETS = ("forget", "retain", "test")


def _mllmu_question(item: dict) -> str:
    """``{stem}\nA: ...\nB: ...`` (their ``formulate_prompt_with_options``)."""
    if not item.get("options"):
        return item["question"]  # no stored options: the question as the file has it
    opts = "\n".join(f"{LETTERS[j]}: {o}" for j, o in enumerate(item["options"]))
    return f"{mcq_stem(item)}\n{opts}"


class FewShot(NamedTuple):
    """:func:`mllmu_mcq_items`' result: the items to ask (MCQ ones with ``prompt_text``
    and ``images``), whether each is scored, the drawn profile (None for ``general``)
    and the ids of its questions shown as demonstrations."""

    items: list[dict]
    scored: list[bool]
    profile: str | None
    demos: list[str]


def mllmu_mcq_items(
    items: Sequence[dict], subset: str, source: Sequence[dict], seed: int = 0
) -> FewShot:
    """MLLMU-Bench's few-shot multiple choice (their eval.py), for one subset.

    For ``forget`` / ``retain`` / ``test``, one profile is drawn (seeded) from ``source``:
    the subset's own probes, or for ``test`` the forget probes (eval.py draws from the
    forget IDs and takes the demonstrations from Full_Set, whose rows are those probes).
    All of that profile's MCQ items become demonstrations, per modality::

        USER: <image>\nQuestion: {stem}\nA: {a}\n...\nCorrect Answer: {X}\n     (image+text)
        USER:\nQuestion: {stem}\nA: {a}\n...\nCorrect Answer: {X}\n            (text-only)

    and each MCQ item of the subset is asked after the demonstrations of its modality as
    ``USER: <image>\n{stem}\nA: {a}\n...\n{MLLMU_LETTER_RULE}\nASSISTANT:`` (text-only:
    ``USER:\n``), with the demonstrations' images before its own. As in eval.py, the
    items of the drawn profile at the demonstrations' per-modality indices are not scored.

    Args:
        items: the subset's items (MCQ ones are rewritten; others returned unchanged).
        subset: its name; ``general`` gets the format without demonstrations.
        source: the probes the demonstration profile and its items come from.

    Returns:
        :class:`FewShot`.
    """
    demos: dict[str, list[dict]] = {"image_text": [], "text_only": []}
    profile = None
    skip: set[str] = set()
    if subset in FEW_SHOT_SUBSETS:
        ids = list(dict.fromkeys(it["entity"] for it in source if it["type"] == "mcq"))
        if ids:
            rng = np.random.default_rng([seed, FEW_SHOT_SUBSETS.index(subset)])
            profile = ids[int(rng.integers(len(ids)))]
            for it in source:
                if it["type"] == "mcq" and it["entity"] == profile:
                    demos[it["modality"]].append(it)
            own = [it for it in items if it["type"] == "mcq" and it["entity"] == profile]
            for modality, shown in demos.items():
                same = [it["id"] for it in own if it["modality"] == modality]
                skip |= set(same[: len(shown)])
    prefix = {}
    for modality, shown in demos.items():
        user = "USER: <image>\n" if modality == "image_text" else "USER:\n"
        prefix[modality] = "".join(
            f"{user}Question: {_mllmu_question(d)}\nCorrect Answer: {d['answer']}\n" for d in shown
        )
    out = []
    for it in items:
        if it["type"] != "mcq":
            out.append(it)
            continue
        image = it["modality"] == "image_text"
        user = "USER: <image>\n" if image else "USER:\n"
        text = (
            f"{prefix[it['modality']]}{user}{_mllmu_question(it)}\n{MLLMU_LETTER_RULE}\nASSISTANT:"
        )
        shown_images = [d["image"] for d in demos[it["modality"]]] if image else []
        images = [*shown_images, it["image"]] if image else []
        out.append({**it, "prompt_text": text, "images": images})
    shown = [d["id"] for ds in demos.values() for d in ds]
    return FewShot(out, [it["id"] not in skip for it in items], profile, shown)


def truth_ratio_score(ratios: np.ndarray) -> float | None:
    """open-unlearning's ``true_better`` aggregate ``mean max(0, 1 - R)`` (None if empty)."""
    return float(np.mean(np.maximum(0.0, 1.0 - ratios))) if len(ratios) else None


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def task_metrics(items: Sequence[dict], preds: Sequence[str]) -> dict[str, float | None]:
    """``mcq_acc``, ``rougeL`` (F, stemmer: MLLMU-Bench), ``rougeL_recall`` (stemmer,
    recall: open-unlearning), ``cloze_acc``, overall and per modality (None if no such
    question)."""
    out: dict[str, float | None] = {}
    for suffix, keep in MODALITY_SUFFIXES:
        scores: dict[str, list[float]] = {v: [] for v in (*TASK_METRICS.values(), "rougeL_recall")}
        for it, pred in zip(items, preds):
            if keep is not None and it["modality"] != keep:
                continue
            if it["type"] == "mcq":
                scores["mcq_acc"].append(
                    float(pred.strip()[:1].upper() == it["answer"].strip().upper())
                )
            elif it["type"] == "gen":
                # F with the Porter stemmer as MLLMU-Bench; recall as open-unlearning
                scores["rougeL"].append(rouge_l(pred, it["answer"], stemmer=True))
                scores["rougeL_recall"].append(
                    rouge_l(pred, it["answer"], stemmer=True, measure="recall")
                )
            else:
                scores["cloze_acc"].append(substring_match(pred, it["answer"]))
        out.update({name + suffix: _mean(vals) for name, vals in scores.items()})
    return out


def subsample(items: list[dict], max_items: int) -> list[dict]:
    """A fixed subsample (seed 0) keeping the file order; all items if ``max_items`` is 0."""
    if not max_items or len(items) <= max_items:
        return items
    keep = sorted(np.random.default_rng(0).permutation(len(items))[:max_items].tolist())
    return [items[i] for i in keep]


def evaluate_model(
    model,
    processor,
    data_dir: str | Path,
    data: dict[str, list[dict]],
    cfg: EvalConfig,
    quiet: bool = True,
) -> dict[str, Any]:
    """Metrics of every subset in ``data``, plus MIA when forget and general are both there."""
    model.eval()
    enc = Encoder(processor, data_dir)
    result: dict[str, Any] = {"subsets": {}, "truth_ratios": {}}
    scores: dict[str, tuple[list[dict], dict[str, np.ndarray]]] = {}
    t0 = time.perf_counter()
    n = 0
    for name, all_items in data.items():
        items = subsample(all_items, cfg.max_items)
        asked, scored = items, [True] * len(items)
        if cfg.mcq_prompt == "mllmu_few_shot":
            source = _demo_source(name, all_items, data, data_dir)
            few = mllmu_mcq_items(items, name, source)
            scored = few.scored
            asked = [a for a, keep in zip(few.items, scored) if keep]
            result.setdefault("mcq_demos", {})[name] = {
                "profile": few.profile,
                "demos": few.demos,
                "not_scored": scored.count(False),
            }
        preds = generate_answers(model, enc, asked, cfg.max_new_tokens, cfg.batch_size, quiet)
        per_item = answer_scores(model, enc, items, cfg.batch_size, cfg.mink_fraction)
        option_lp = option_logprobs(model, enc, items, cfg.batch_size)
        ratios = truth_ratios_from(items, option_lp)
        tofu = tofu_truth_ratios_from(items, option_lp)
        scores[name] = (items, per_item)
        result["truth_ratios"][name] = ratios.tolist()
        result.setdefault("truth_ratios_tofu", {})[name] = tofu.tolist()
        result["subsets"][name] = {
            **task_metrics([it for it, keep in zip(items, scored) if keep], preds),
            **option_likelihood_metrics(items, option_lp),
            "truth_ratio": truth_ratio_score(ratios),
            "truth_ratio_tofu": tofu_truth_ratio_score(tofu, name in FORGET_SIDE),
            "nll": float(per_item["nll"].mean()),
            "n": len(items),
        }
        result.setdefault("examples", {})[name] = [
            {"question": it["question"], "answer": it["answer"], "prediction": p}
            for it, p in list(zip(asked, preds))[:3]
        ]
        n += len(items)
    seconds = time.perf_counter() - t0
    result.update(
        {"n_questions": n, "eval_seconds": seconds, "questions_per_second": n / max(seconds, 1e-9)}
    )
    if "forget" in scores and "general" in scores:
        result.update(mia_metrics(*scores["forget"], *scores["general"]))
        kn_f, kn_g = (_not_mcq(*scores[s]) for s in ("forget", "general"))
        if kn_f[0] and kn_g[0]:
            result.update(mia_metrics(*kn_f, *kn_g, pool="_kn"))
        result.update(_verbatim_mia(model, enc, data_dir, cfg))
    return result


def _not_mcq(
    items: Sequence[dict], scores: dict[str, np.ndarray]
) -> tuple[list[dict], dict[str, np.ndarray]]:
    """The generation and cloze items of a pool and their scores (MCQ answers dropped)."""
    keep = np.array([it["type"] != "mcq" for it in items], dtype=bool)
    return [it for it, k in zip(items, keep) if k], {a: v[keep] for a, v in scores.items()}


def verbatim_pools(data_dir: str | Path) -> tuple[list[dict], list[dict]] | None:
    """MUSE-style verbatim membership pools, when the folder has ``general_train``:
    ``(members, non-members)`` = the forget training QA in its first wording and the
    held-out entities' questions in the same template, generation and cloze only."""
    from unlearn_bench.synth import HOLDOUT_TRAIN, WORDING_SUFFIXES

    if not (Path(data_dir) / f"{HOLDOUT_TRAIN}.jsonl").is_file():
        return None
    data = check_dataset(data_dir, ("forget_train", HOLDOUT_TRAIN))
    members = [
        it
        for it in data["forget_train"]
        if it["type"] != "mcq" and not it["id"].endswith(WORDING_SUFFIXES)
    ]
    held_out = [it for it in data[HOLDOUT_TRAIN] if it["type"] != "mcq"]
    return members, held_out


def _verbatim_mia(model, enc: Encoder, data_dir: str | Path, cfg: EvalConfig) -> dict[str, float]:
    pools = verbatim_pools(data_dir)
    if pools is None:
        return {}
    members, held_out = pools
    return mia_metrics(
        members,
        answer_scores(model, enc, members, cfg.batch_size, cfg.mink_fraction),
        held_out,
        answer_scores(model, enc, held_out, cfg.batch_size, cfg.mink_fraction),
        pool="_vb",
    )


def _demo_source(
    name: str, items: list[dict], data: dict[str, list[dict]], data_dir: str | Path
) -> list[dict]:
    """Where a subset's few-shot demonstrations come from: its own probes, or for ``test``
    the forget probes (read from ``data_dir`` when only ``test`` is evaluated)."""
    if name != "test":
        return items
    if "forget" in data:
        return data["forget"]
    return check_dataset(data_dir, ("forget",))["forget"]


def mia_metrics(
    f_items: Sequence[dict],
    f_scores: dict[str, np.ndarray],
    g_items: Sequence[dict],
    g_scores: dict[str, np.ndarray],
    pool: str = "",
) -> dict[str, float]:
    """``mia<pool>_auc[_mink|_minkpp|_zlib]``: forget (members) against general
    (non-members); ``pool`` is one of :data:`MIA_POOLS`.

    Only general items of the fields that the forget items ask about are compared (all
    of them if none share a field), so the AUC is not a difference between fields.
    """
    fields = {it.get("field") for it in f_items}
    same = np.array([it.get("field") in fields for it in g_items])
    if same.sum() == 0:
        same[:] = True
    return {
        f"mia{pool}_auc{suffix}": mia_auc(f_scores[attack], g_scores[attack][same])
        for attack, suffix in MIA_ATTACKS.items()
    }


def against_reference(
    result: dict[str, Any],
    reference: dict[str, Any] | None = None,
    vanilla: dict[str, Any] | None = None,
) -> dict[str, float]:
    """The metrics of ``result`` relative to the retrained (``reference``) / vanilla models.

    ``privleak[_mink|_minkpp|_zlib]`` (MUSE), ``forget_quality`` (KS p-value of the forget
    truth ratios) and ``ues`` (anchored on the retrained model; needs both) from the
    reference; ``ues_vanilla`` (the former score, anchored on the vanilla model) from
    the vanilla model. Missing inputs leave their keys out.
    """
    from scipy.stats import ks_2samp

    out: dict[str, Any] = {}
    if reference is not None:
        for pool in MIA_POOLS:
            for suffix in MIA_ATTACKS.values():
                key = f"mia{pool}_auc{suffix}"
                if key in result and key in reference:
                    out[f"privleak{pool}{suffix}"] = privleak(result[key], reference[key])
        for ratios, key in (("truth_ratios", "forget_quality"),
                            ("truth_ratios_tofu", "forget_quality_tofu")):  # fmt: skip
            tr = result.get(ratios, {}).get("forget")
            tr_ref = reference.get(ratios, {}).get("forget")
            if tr and tr_ref:
                out[key] = float(ks_2samp(tr, tr_ref).pvalue)
        if vanilla is not None:
            out["ues"] = ues_score(result["subsets"], reference["subsets"], vanilla["subsets"])
            why = ues_undefined(reference["subsets"], vanilla["subsets"])
            if why is not None:
                out["ues_undefined"] = why
    if vanilla is not None:
        out["ues_vanilla"] = ues_vanilla(result["subsets"], vanilla["subsets"])
    return out


def _weights_stat(model_dir: Path) -> list[tuple[str, int, int]]:
    """(name, size, mtime_ns) of a model folder's weight files: changes when it is retrained."""
    files = sorted(
        p for p in Path(model_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".pt")
    )
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in files]


def eval_key(cfg: EvalConfig, data_dir: str | Path, split: str, model_dir: str | Path) -> str:
    """A hash of everything an evaluation's numbers depend on.

    Every :class:`EvalConfig` field (new tokens, number of questions, Min-K fraction,
    batch size), the dataset (folder and the bytes of its question files), the split,
    the model's weight files (name, size, mtime) and :data:`METRICS_VERSION`.
    """
    data_dir = Path(data_dir)
    h = hashlib.sha256()
    h.update(
        json.dumps(
            {
                "config": dataclasses.asdict(cfg),
                "data": str(data_dir.resolve()),
                "split": split,
                "model": _weights_stat(Path(model_dir)),
                "metrics_version": METRICS_VERSION,
            },
            sort_keys=True,
        ).encode()
    )
    for f in sorted(data_dir.glob("*.jsonl")):
        h.update(f.name.encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def _cached_eval(path: Path, key: str, split: str) -> dict[str, Any] | None:
    """A run's earlier ``eval-<split>.json`` made under the same :func:`eval_key`, if any."""
    run = path.parent if path.name == "model" else path
    f = run / f"eval-{split}.json"
    if not f.is_file():
        return None
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return res if res.get("eval_key") == key else None


def resolved(cfg: EvalConfig, device: str) -> EvalConfig:
    """``cfg`` with its dtype resolved for ``device`` (``auto`` -> what runs), so a cache
    key and a result say which dtype the numbers came from."""
    return dataclasses.replace(cfg, dtype=resolve_dtype(cfg.dtype, device, field="dtype"))


def _metrics_of(path: Path, data_dir: Path, data, cfg: EvalConfig, device: str, quiet: bool):
    cfg = resolved(cfg, device)
    cached = _cached_eval(path, eval_key(cfg, data_dir, "all", path), "all")
    if cached is not None:
        return cached
    model, processor = load_llava(path, device=device, dtype=torch_dtype(cfg.dtype))
    return evaluate_model(model, processor, data_dir, data, cfg, quiet)


def evaluate_run(
    run: str | Path,
    data_dir: str | Path,
    cfg: EvalConfig,
    *,
    split: str = "all",
    vanilla: str | Path | None = None,
    reference: str | Path | None = None,
    device: str = "auto",
    quiet: bool = False,
) -> dict[str, Any]:
    """Evaluate ``RUN/model`` and write ``RUN/eval-<split>.json``.

    ``split`` is one subset or ``all``. UES needs all four subsets and the vanilla
    model: ``vanilla`` if given, else the model an ``unlearn`` run started from; a
    finetune run is its own vanilla (UES 0). PrivLeak needs ``reference``.
    """
    run, data_dir = Path(run), Path(data_dir)
    subsets = SPLITS if split == "all" else (split,)
    if split != "all" and split not in SPLITS:
        raise InputError(
            "--split", f"unknown split {split!r}; choose from all, {', '.join(SPLITS)}"
        )
    if not run.is_dir():
        raise InputError(run, "run folder not found")
    model_dir = check_llava_dir(run / "model" if (run / "model").is_dir() else run)
    run = model_dir.parent if model_dir.name == "model" else run
    data = check_dataset(data_dir, subsets)
    # A run folder says what it is; a bare Llava folder does not.
    command = None
    if model_dir != run and (run / "config.json").is_file():
        info = load_run(run, package=PACKAGE).info
        command = info.command
        if vanilla is None and command == "unlearn":
            vanilla = info.extra.get("vanilla_model")
    vanilla_dir = check_llava_dir(vanilla) if vanilla is not None else None
    reference_dir = check_llava_dir(reference) if reference is not None else None
    device = resolve_device(device)
    cfg = resolved(cfg, device)  # the cache key and the result say which dtype ran

    model, processor = load_llava(model_dir, device=device, dtype=torch_dtype(cfg.dtype))
    result = evaluate_model(model, processor, data_dir, data, cfg, quiet)
    key = eval_key(cfg, data_dir, split, model_dir)
    result = {"data": str(data_dir.resolve()), "split": split, "eval_key": key,
              "dtype": cfg.dtype, **result}  # fmt: skip
    if split == "all":
        van = ref = None
        if vanilla_dir is not None:
            van = _metrics_of(vanilla_dir, data_dir, data, cfg, device, quiet)
        elif command == "finetune":
            van = result  # a finetune run is its own vanilla model
        if reference_dir is not None:
            same = reference_dir.resolve() == model_dir.resolve()
            ref = result if same else _metrics_of(reference_dir, data_dir, data, cfg, device, quiet)
        result.update(against_reference(result, ref, van))
        if ref is None and command == "finetune":
            result["ues"] = 0.0  # the vanilla model itself: 0 by definition, no retrain needed
    write_json_atomic(run / f"eval-{split}.json", result)
    return result


def flatten(result: dict[str, Any]) -> dict[str, float]:
    """``{"forget_mcq_acc": ..., "ues": ...}``: the numeric metrics of an evaluation."""
    flat = {}
    for name, metrics in result.get("subsets", {}).items():
        for k, v in metrics.items():
            if isinstance(v, (int, float)) and k != "n":
                flat[f"{name}_{k}"] = float(v)
    for k in (
        "ues",
        "ues_vanilla",
        "forget_quality",
        "forget_quality_tofu",
        *(f"mia{p}_auc{s}" for p in MIA_POOLS for s in MIA_ATTACKS.values()),
        *(f"privleak{p}{s}" for p in MIA_POOLS for s in MIA_ATTACKS.values()),
        "questions_per_second",
    ):
        if isinstance(result.get(k), (int, float)):
            flat[k] = float(result[k])
    return flat


def summary_lines(result: dict[str, Any]) -> list[str]:
    """``name value`` lines of the overall metrics (the per-modality ones are in the JSON),
    and why UES has no value where it has none."""
    lines = [
        f"{k:28s} {v:.4f}"
        for k, v in flatten(result).items()
        if not k.endswith(("_image_text", "_text_only"))
    ]
    if result.get("ues_undefined"):
        lines.append(f"{'ues':28s} undefined: {result['ues_undefined']}")
    return lines


def task_table(
    summary: Sequence[dict[str, Any]],
    methods: Sequence[str],
    setting: str | None = None,
    subsets: Sequence[str] = SPLITS,
) -> str:
    """A markdown table: rows subset x task x modality, one column per method (mean +- std).

    ``summary``: the ``results.json`` ``summary`` rows (``{"method", "setting",
    "metrics": {name: {"mean", "std"}}}``); ``setting`` keeps one scenario's rows.
    Cells without the metric (e.g. a subset with no image questions) show ``-``.
    """
    by_method = {
        s["method"]: s["metrics"]
        for s in summary
        if setting is None or s.get("setting", setting) == setting
    }
    cols = [m for m in methods if m in by_method]
    lines = [
        "| subset | task | modality | " + " | ".join(cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for subset in subsets:
        for task, metric in TASK_METRICS.items():
            for suffix, modality in MODALITY_SUFFIXES:
                name = f"{subset}_{metric}{suffix}"
                cells = []
                for m in cols:
                    v = by_method[m].get(name)
                    empty = v is None or not v.get("n", 1)
                    cells.append("-" if empty else f"{v['mean']:.3f} ± {v['std']:.3f}")
                label = modality or "all"
                lines.append(f"| {subset} | {task} | {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
