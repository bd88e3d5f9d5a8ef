"""NPO step time and peak memory: ours against open-unlearning's, one run (issue #24 item 7).

From the repository root, with a checkout of locuslab/open-unlearning at PATH::

    python packages/unlearn_bench/benchmarks/open-unlearning/compare.py \
        --open-unlearning PATH --out DIR [--steps 20] [--hidden 512]

One widened tiny Llava (the package's, ``--hidden`` wide, 4 decoder layers) and one
batch (8 forget + 8 retain items of the tiny privacy data, with their images) are shared
by three variants, each in a fresh process (one thread, float32, CPU):

- ``open-unlearning``: their NPO step as their trainer runs it: ``compute_dpo_loss``
  (imported from ``PATH/src/trainer/utils.py``, not copied) with a deep-copied frozen
  reference, plus the retain NLL (``model(**retain).loss``, their GradDiff ``NLL``), AdamW;
- ``ours-held``: our NPO with ``reference_logprobs=model`` (the reference held);
- ``ours-once``: our NPO with ``reference_logprobs=once`` (its one pass timed apart).

Each variant runs 2 warm-up steps, then ``--steps`` timed steps; ``results.json`` holds
the median step seconds, the process's peak RSS, the first step's loss (the three
compute the same objective: NPO with beta 0.1 plus 1 x retain NLL) and the ratios.
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import importlib.util
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

VARIANTS = ("open-unlearning", "ours-held", "ours-once")
BETA, ALPHA, BATCH = 0.1, 1.0, 8


def _their_utils(root: Path):
    spec = importlib.util.spec_from_file_location("ou_trainer_utils", root / "src/trainer/utils.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def worker(variant: str, model_dir: Path, data_dir: Path, root: Path, steps: int) -> dict:
    from medcommon.train import fix_threads, seed_everything
    from unlearn_bench.data import FILES, Encoder, check_dataset, collate
    from unlearn_bench.methods import METHODS
    from unlearn_bench.model import load_llava
    from unlearn_bench.train import attach_reference_logprobs

    fix_threads(1)
    seed_everything(0)
    model, processor = load_llava(model_dir)
    data = check_dataset(data_dir, FILES)
    enc = Encoder(processor, data_dir)
    pad = processor.tokenizer.pad_token_id
    forget_items = [enc.encode(it) for it in data["forget_train"][:BATCH]]
    retain = collate([enc.encode(it) for it in data["retain_train"][:BATCH]], pad)
    extra_seconds = 0.0
    if variant == "open-unlearning":
        utils = _their_utils(root)
        ref = copy.deepcopy(model).eval().requires_grad_(False)  # their _prepare_ref_model
        forget = collate(forget_items, pad)

        def loss_fn():
            f_loss, _ = utils.compute_dpo_loss(model, ref, None, forget, beta=BETA)
            return f_loss + ALPHA * model(**retain).loss
    else:
        cls = METHODS.get("npo")
        cfg = cls.config_class(beta=BETA, alpha=ALPHA,
                               reference_logprobs="once" if variant == "ours-once" else "model")  # fmt: skip
        ref = None
        if variant == "ours-once":
            t0 = time.perf_counter()
            attach_reference_logprobs(forget_items, model, pad, BATCH, "cpu", "float32")
            extra_seconds = time.perf_counter() - t0
        else:
            ref = copy.deepcopy(model).eval().requires_grad_(False)
        method = cls(cfg, ref=ref, seed=0)
        forget = collate(forget_items, pad)

        def loss_fn():
            return method.loss(model, {"forget": forget, "retain": retain}, None)["loss"]

    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    times, first = [], None
    for i in range(steps + 2):
        t0 = time.perf_counter()
        loss = loss_fn()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i == 0:
            first = float(loss)
        if i >= 2:
            times.append(time.perf_counter() - t0)
    return {
        "median_step_seconds": statistics.median(times),
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "first_loss": first,
        "one_off_seconds": extra_seconds,
        "parameters": sum(p.numel() for p in model.parameters()),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--open-unlearning", type=Path, required=True)
    p.add_argument("--out", type=Path)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--worker", choices=VARIANTS)
    p.add_argument("--model", type=Path)
    p.add_argument("--data", type=Path)
    args = p.parse_args(argv)
    if args.worker:
        res = worker(args.worker, args.model, args.data, args.open_unlearning, args.steps)
        print(json.dumps(res))
        return 0
    from medcommon.fs import write_json_atomic
    from medcommon.provenance import provenance
    from unlearn_bench.config import TinyModelConfig, synth_preset
    from unlearn_bench.data import check_dataset, corpus_texts
    from unlearn_bench.model import build_tiny, save_llava
    from unlearn_bench.synth import generate

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "data", "privacy", synth_preset("tiny"), seed=0)
        h = args.hidden
        cfg = TinyModelConfig(hidden_size=h, intermediate_size=4 * h, num_layers=4, num_heads=8)
        torch.manual_seed(0)
        model, processor = build_tiny(cfg, corpus_texts(check_dataset(tmp / "data")))
        save_llava(model, processor, tmp / "model")
        rows = {}
        for variant in VARIANTS:
            cmd = [sys.executable, __file__, "--open-unlearning", str(args.open_unlearning),
                   "--worker", variant, "--model", str(tmp / "model"), "--data",
                   str(tmp / "data"), "--steps", str(args.steps)]  # fmt: skip
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                raise SystemExit(f"{variant}: {out.stderr[-3000:]}")
            rows[variant] = json.loads(out.stdout.strip().splitlines()[-1])
    theirs = rows["open-unlearning"]
    result = {
        "variants": rows,
        "step_time_ratio_vs_open_unlearning": {
            v: rows[v]["median_step_seconds"] / theirs["median_step_seconds"] for v in rows
        },
        "peak_rss_ratio_vs_open_unlearning": {
            v: rows[v]["peak_rss_mb"] / theirs["peak_rss_mb"] for v in rows
        },
        # which code of theirs ran: the file's hash (a checkout or an exported file)
        "open_unlearning_utils_sha256": hashlib.sha256(
            (args.open_unlearning / "src/trainer/utils.py").read_bytes()
        ).hexdigest(),
        "steps": args.steps,
        "provenance": provenance(),
    }
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(args.out / "results.json", result)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
