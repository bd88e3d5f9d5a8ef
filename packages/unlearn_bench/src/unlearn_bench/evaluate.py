"""Evaluation per subset: MCQ accuracy, ROUGE-L, cloze accuracy; MIA; PrivLeak; UES.

Tasks (MLLMU-Bench): multiple choice scores the first generated letter; generation
scores ROUGE-L F of the greedy answer against the reference; cloze counts the
reference as a substring of the greedy answer. Each also per modality, with the
suffixes ``_image_text`` and ``_text_only``.

Membership inference (forget = members, general = non-members, same fields): the
score is the negative mean answer loss, or the Min-K% Prob (mean of the lowest 20%
answer-token log-probs, Shi et al. 2024); ``mia_auc`` / ``mia_auc_mink`` are their
AUCs. ``privleak = (AUC - AUC_ref) / AUC_ref * 100`` against a reference (retrained)
model (MUSE), ideal near 0.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.metrics import mia_auc, rouge_l, substring_match
from medcommon.run import load_run
from medcommon.train.accelerator import resolve_device
from unlearn_bench import PACKAGE
from unlearn_bench.config import EvalConfig
from unlearn_bench.data import Encoder, check_dataset, collate
from unlearn_bench.losses import token_logprobs
from unlearn_bench.model import check_llava_dir, load_llava
from unlearn_bench.synth import SPLITS
from unlearn_bench.ues import ues as ues_score

TASK_METRICS = {"mcq": "mcq_acc", "gen": "rougeL", "cloze": "cloze_acc"}


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


@torch.no_grad()
def answer_scores(
    model, enc: Encoder, items: Sequence[dict], batch_size: int, mink_fraction: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per item: mean answer NLL and Min-K% mean log-prob (teacher forcing)."""
    device = next(model.parameters()).device
    pad = enc.tokenizer.pad_token_id
    losses, mink = [], []
    for start in range(0, len(items), batch_size):
        batch = collate([enc.encode(it) for it in items[start : start + batch_size]], pad)
        batch = {k: (v.to(device) if v is not None else None) for k, v in batch.items()}
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            use_cache=False,
        ).logits
        logp, m = token_logprobs(logits, batch["labels"])
        for row in range(logp.shape[0]):
            lp = logp[row][m[row]]
            losses.append(float(-lp.mean()))
            k = max(1, round(mink_fraction * lp.numel()))
            mink.append(float(lp.sort().values[:k].mean()))
    return np.asarray(losses), np.asarray(mink)


def _mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def task_metrics(items: Sequence[dict], preds: Sequence[str]) -> dict[str, float | None]:
    """``mcq_acc``, ``rougeL``, ``cloze_acc`` overall and per modality (None if no such question)."""
    out: dict[str, float | None] = {}
    for suffix, keep in (("", None), ("_image_text", "image_text"), ("_text_only", "text_only")):
        scores: dict[str, list[float]] = {v: [] for v in TASK_METRICS.values()}
        for it, pred in zip(items, preds):
            if keep is not None and it["modality"] != keep:
                continue
            if it["type"] == "mcq":
                scores["mcq_acc"].append(
                    float(pred.strip()[:1].upper() == it["answer"].strip().upper())
                )
            elif it["type"] == "gen":
                scores["rougeL"].append(rouge_l(pred, it["answer"]))
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
    result: dict[str, Any] = {"subsets": {}}
    scores: dict[str, tuple[list[dict], np.ndarray, np.ndarray]] = {}
    t0 = time.perf_counter()
    n = 0
    for name, all_items in data.items():
        items = subsample(all_items, cfg.max_items)
        preds = generate_answers(model, enc, items, cfg.max_new_tokens, cfg.batch_size, quiet)
        loss, mink = answer_scores(model, enc, items, cfg.batch_size, cfg.mink_fraction)
        scores[name] = (items, loss, mink)
        result["subsets"][name] = {
            **task_metrics(items, preds),
            "nll": float(loss.mean()),
            "n": len(items),
        }
        result.setdefault("examples", {})[name] = [
            {"question": it["question"], "answer": it["answer"], "prediction": p}
            for it, p in list(zip(items, preds))[:3]
        ]
        n += len(items)
    seconds = time.perf_counter() - t0
    result.update(
        {"n_questions": n, "eval_seconds": seconds, "questions_per_second": n / max(seconds, 1e-9)}
    )
    if "forget" in scores and "general" in scores:
        f_items, f_loss, f_mink = scores["forget"]
        g_items, g_loss, g_mink = scores["general"]
        fields = {it.get("field") for it in f_items}
        same = np.array([it.get("field") in fields for it in g_items])
        if same.sum() == 0:
            same[:] = True
        result["mia_auc"] = mia_auc(-f_loss, -g_loss[same])
        result["mia_auc_mink"] = mia_auc(f_mink, g_mink[same])
    return result


def _cached_eval(path: Path, data_dir: Path, split: str) -> dict[str, Any] | None:
    """A run's earlier ``eval-<split>.json`` on the same dataset, if any."""
    run = path.parent if path.name == "model" else path
    f = run / f"eval-{split}.json"
    if not f.is_file():
        return None
    try:
        res = json.loads(f.read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        return None
    return res if res.get("data") == str(data_dir.resolve()) else None


def _metrics_of(path: Path, data_dir: Path, data, cfg: EvalConfig, device: str, quiet: bool):
    cached = _cached_eval(path, data_dir, "all")
    if cached is not None:
        return cached
    model, processor = load_llava(path, device=device)
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
    # A run folder (this or the earlier layout) says what it is; a bare Llava folder does not.
    command = None
    if model_dir != run and (run / "config.json").is_file():
        info = load_run(run, package=PACKAGE).info
        command = info.command
        if vanilla is None and command == "unlearn":
            vanilla = info.extra.get("vanilla_model")
    vanilla_dir = check_llava_dir(vanilla) if vanilla is not None else None
    reference_dir = check_llava_dir(reference) if reference is not None else None
    device = resolve_device(device)

    model, processor = load_llava(model_dir, device=device)
    result = evaluate_model(model, processor, data_dir, data, cfg, quiet)
    result = {"data": str(data_dir.resolve()), "split": split, **result}
    if split == "all":
        if vanilla_dir is not None:
            van = _metrics_of(vanilla_dir, data_dir, data, cfg, device, quiet)
            result["ues"] = ues_score(result["subsets"], van["subsets"])
        elif command == "finetune":
            result["ues"] = ues_score(result["subsets"], result["subsets"])  # 0 by definition
        if reference_dir is not None:
            ref = _metrics_of(reference_dir, data_dir, data, cfg, device, quiet)
            for key, out in (("mia_auc", "privleak"), ("mia_auc_mink", "privleak_mink")):
                result[out] = (result[key] - ref[key]) / ref[key] * 100.0
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
        "mia_auc",
        "mia_auc_mink",
        "privleak",
        "privleak_mink",
        "questions_per_second",
    ):
        if isinstance(result.get(k), (int, float)):
            flat[k] = float(result[k])
    return flat


def summary_lines(result: dict[str, Any]) -> list[str]:
    """``name value`` lines of the overall metrics (the per-modality ones are in the JSON)."""
    return [
        f"{k:28s} {v:.4f}"
        for k, v in flatten(result).items()
        if not k.endswith(("_image_text", "_text_only"))
    ]
