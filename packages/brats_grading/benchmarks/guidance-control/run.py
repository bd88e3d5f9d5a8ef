"""The positive control of cross-modality guidance (issue #21): runs ``protocol.py``.

From the repository root (about 10 minutes on two CPU cores)::

    python packages/brats_grading/benchmarks/guidance-control/run.py --out DIR
        [--workers N] [--threads N] [--seeds S ...] [--preset small|tiny] [--quiet]

Writes ``DIR/results.json`` (rows per (setting, variant, seed), the checked claims of
``protocol.py``, the case-bootstrap intervals, the provenance), ``DIR/report.md``,
``DIR/predictions.json.gz`` (every test prediction, so the statistics can be recomputed
without training) and two figures. One task per (share, seed), in ``--workers``
processes, each pinned to ``--threads`` CPU threads (default 1) whatever
``OMP_NUM_THREADS`` says. ``--preset tiny`` runs the same code at toy sizes (tests).
"""

from __future__ import annotations

import argparse
import gzip
import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from brats_grading import __version__, losses
from brats_grading.config import SynthConfig
from brats_grading.data import discover, load_cases
from brats_grading.evaluate import linear_cka
from brats_grading.model import GradingNet
from brats_grading.synth import GradeCues, write_synthetic
from brats_grading.train import StageCache, fit_method, method_config
from medcommon import metrics as M
from medcommon.cli import run_main
from medcommon.errors import InputError
from medcommon.fs import atomic_path, write_text_atomic
from medcommon.metrics.bootstrap import bootstrap_aucs, percentile_ci
from medcommon.provenance import load_beside
from medcommon.report import claims_table, make_results, write_results
from medcommon.report.plots import plot_intervals
from medcommon.train import fix_threads, pinned_map, seed_everything

PROTOCOL = "packages/brats_grading/benchmarks/guidance-control/protocol.py"
PREDICTIONS = "predictions.json.gz"
PRIMARY, SECONDARY = "t1ce", "flair"


P = load_beside(__file__, "protocol.py", "brats_guidance_control")


def scale(preset: str) -> dict[str, Any]:
    """Sizes at ``preset``: ``small`` is the protocol's; ``tiny`` a smoke run (tests)."""
    if preset == "small":
        return {"pool": P.POOL, "test": P.TEST, "sizes": P.SIZES, "overrides": ()}
    if preset == "tiny":
        return {
            "pool": 16, "test": 12, "sizes": (6, 12),
            "overrides": ("steps=3", "primary_steps=3", "batch_size=6"),
        }  # fmt: skip
    raise InputError("--preset", "the control runs at 'small' (the protocol) or 'tiny' (tests)")


def make_data(share: float, pool: int, test: int, tmp: Path) -> tuple[np.ndarray, np.ndarray]:
    """The pool then the test cases of one share, ``(pool + test, 4, *SHAPE)`` and labels.

    Written as BraTS 2019 NIfTI and read back by the package's loader, as a user's
    data would be; half HGG, half LGG.
    """
    cues = GradeCues(correlation=0.0, flair_noise=P.FLAIR_NOISE, flair_share=share)
    arrays, labels = [], []
    for name, n, seed in (("pool", pool, P.POOL_SEED), ("test", test, P.TEST_SEED)):
        cfg = SynthConfig(hgg=n // 2, lgg=n - n // 2, shape=P.SHAPE)
        folder = write_synthetic(tmp / f"{name}-{share:g}", cfg, "2019", seed=seed, quiet=True,
                                 cues=cues)  # fmt: skip
        _, cases = discover(folder)
        arrays.append(load_cases(cases, P.SHAPE))
        labels += [c.label for c in cases]
    return np.concatenate(arrays), np.asarray(labels)


def training_subsets(labels: np.ndarray, pool: int, sizes: Sequence[int], seed: int) -> dict:
    """Per size, a class-balanced subset of the pool; nested (the smaller inside the larger),
    and the same at every share (the pools share their labels)."""
    rng = np.random.default_rng(10_000 + seed)
    idx = np.arange(pool)
    per_class = [rng.permutation(idx[labels[:pool] == c]) for c in (1, 0)]
    return {n: np.sort(np.concatenate([c[: n // 2] for c in per_class])) for n in sizes}


@torch.no_grad()
def probe(model: GradingNet, arrays: np.ndarray, batch: int = 50) -> dict[str, np.ndarray]:
    """Both branches' logits ``(N, 2)`` and pooled features ``(N, C)``, eval mode."""
    model.eval()
    out: dict[str, list] = {}
    for i in range(0, len(arrays), batch):
        x = torch.from_numpy(np.asarray(arrays[i : i + batch], dtype=np.float32))
        o = model(x)
        for b in (PRIMARY, SECONDARY):
            out.setdefault(f"{b}_logits", []).append(o["branch_logits"][b])
            out.setdefault(f"{b}_features", []).append(o["features"][b])
    return {k: torch.cat(v).numpy() for k, v in out.items()}


def signal(p: dict[str, np.ndarray], temperature: float) -> dict[str, float]:
    """The mechanism's signal on a probe set: CKA, and the KD and alignment terms
    towards the real teacher (as the loss computes them, whatever their weights)."""
    t_logits = torch.from_numpy(p[f"{PRIMARY}_logits"])
    s_logits = torch.from_numpy(p[f"{SECONDARY}_logits"])
    t_feat = torch.from_numpy(p[f"{PRIMARY}_features"])
    s_feat = torch.from_numpy(p[f"{SECONDARY}_features"])
    return {
        "cka": linear_cka(p[f"{SECONDARY}_features"], p[f"{PRIMARY}_features"]),
        "kd": float(losses.distillation_kl(s_logits, t_logits, temperature)),
        "fa": float(losses.feature_alignment(s_feat, t_feat)),
    }


def _p_hgg(logits: np.ndarray) -> np.ndarray:
    return torch.softmax(torch.from_numpy(logits), dim=1)[:, 1].numpy()


def run_task(share: float, seed: int, preset: str, threads: int) -> dict[str, Any]:
    """Every size and variant of one (share, seed): rows, test predictions, seconds."""
    fix_threads(threads)
    t0 = time.perf_counter()
    sc = scale(preset)
    with tempfile.TemporaryDirectory() as tmp:
        arrays, labels = make_data(share, sc["pool"], sc["test"], Path(tmp))
    test = np.arange(sc["pool"], len(labels))
    y_test = labels[test].tolist()
    rows: list[dict[str, Any]] = []
    preds: dict[str, dict[str, list]] = {}
    for n, train_idx in training_subsets(labels, sc["pool"], sc["sizes"], seed).items():
        setting = P.setting_name(share, n)
        cache = StageCache()  # the primary stage: trained once, shared by the variants
        for variant, extra in P.VARIANTS.items():
            method, cfg = method_config(
                "cmg", "small", overrides=[*P.overrides(), *sc["overrides"], *extra]
            )
            info = fit_method(
                method, cfg, arrays, labels.tolist(), train_idx, seed=seed, device="cpu",
                quiet=True, cache=cache,
            )  # fmt: skip
            p = probe(info.model, arrays[test])
            fused = (_p_hgg(p[f"{PRIMARY}_logits"]) + _p_hgg(p[f"{SECONDARY}_logits"])) / 2
            secondary = _p_hgg(p[f"{SECONDARY}_logits"])
            after = signal(p, cfg.guidance.temperature)
            metrics = {
                "secondary_auc": M.auc(y_test, secondary),
                "fused_auc": M.auc(y_test, fused),
                **after,
                "train_seconds": info.train_seconds,
            }
            rows.append({"setting": setting, "method": variant, "seed": seed, "n": n,
                         "share": share, "metrics": metrics})  # fmt: skip
            preds.setdefault(setting, {})[variant] = [secondary.tolist(), fused.tolist()]
            if variant == "guided":
                teacher = _p_hgg(p[f"{PRIMARY}_logits"])
                # After stage 1: the same teacher beside the FLAIR branch as initialised.
                seed_everything(seed)
                init = GradingNet(cfg.model)
                init.branches[PRIMARY].load_state_dict(info.model.branches[PRIMARY].state_dict())
                before = signal(probe(init, arrays[test]), cfg.guidance.temperature)
                rows.append({"setting": setting, "method": "teacher", "seed": seed, "n": n,
                             "share": share,
                             "metrics": {"secondary_auc": M.auc(y_test, teacher),
                                         **{f"{k}_stage1": v for k, v in before.items()}}})  # fmt: skip
                preds[setting]["teacher"] = [teacher.tolist(), teacher.tolist()]
    return {"share": share, "seed": seed, "rows": rows, "preds": preds, "labels": y_test,
            "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip


def _run_one(args: tuple) -> dict[str, Any]:
    return run_task(*args)


def interaction_rows(rows: Sequence[dict[str, Any]], sizes: Sequence[int]) -> list[dict]:
    """Per (share, variant, seed): each AUC at the smaller size minus at the larger."""
    small, large = sizes
    by = {(r["share"], r["method"], r["seed"], r["n"]): r["metrics"] for r in rows}
    out = []
    for (share, method, seed, n), m in by.items():
        if n != small or method == "teacher" or (share, method, seed, large) not in by:
            continue
        big = by[(share, method, seed, large)]
        out.append({
            "setting": P.interaction_name(share), "method": method, "seed": seed,
            "metrics": {k: m[k] - big[k] for k in ("secondary_auc", "fused_auc", "cka")},
        })  # fmt: skip
    return out


def case_intervals(tasks: Sequence[dict[str, Any]], bootstrap: int) -> dict[str, Any]:
    """Per setting and endpoint: guided − each other variant, seed-averaged AUC, with a
    95 % interval over ``bootstrap`` stratified resamples of the test cases (paired)."""
    labels = tasks[0]["labels"]
    settings = sorted({s for t in tasks for s in t["preds"]})
    out: dict[str, Any] = {}
    for s in settings:
        having = [t for t in tasks if s in t["preds"]]
        variants = list(having[0]["preds"][s])
        out[s] = {}
        for e, endpoint in enumerate(("secondary_auc", "fused_auc")):
            scores = {v: np.array([t["preds"][s][v][e] for t in having]) for v in variants}
            boot = bootstrap_aucs(labels, scores, n=bootstrap, seed=P.TEST_SEED)
            point = {v: float(np.mean([M.auc(labels, r) for r in scores[v]])) for v in variants}
            out[s][endpoint] = {
                v: [point["guided"] - point[v], *percentile_ci(boot["guided"] - boot[v])]
                for v in variants if v != "guided"
            }  # fmt: skip
    return out


def run_control(
    out: str | Path,
    *,
    preset: str = "small",
    seeds: Sequence[int] = P.SEEDS,
    workers: int = 1,
    threads: int = P.THREADS,
    quiet: bool = False,
) -> dict[str, Any]:
    """Run the protocol and write the outputs (module docstring); returns the results."""
    fix_threads(threads)
    sc = scale(preset)
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        raise InputError(out, "output folder exists and is not empty")
    t0 = time.perf_counter()
    jobs = [(share, seed, preset, threads) for share in P.SHARES for seed in seeds]
    done = pinned_map(_run_one, jobs, workers=workers, threads=threads,
                      desc="guidance control", quiet=quiet)  # fmt: skip
    rows = [r for t in done for r in t["rows"]]
    rows += interaction_rows(rows, sc["sizes"])
    claims = P.CLAIMS if preset == "small" else ()
    results = make_results("brats-grading", __version__, preset, list(seeds), rows,
                           claims=claims, sources=[PROTOCOL],
                           figures=["differences.png", "signal.png"])  # fmt: skip
    results |= {
        "kind": "guidance-control",
        "protocol": {"shares": list(P.SHARES), "sizes": list(sc["sizes"]), "pool": sc["pool"],
                     "test": sc["test"], "steps": P.STEPS, "batch": P.BATCH,
                     "shape": list(P.SHAPE), "threads": threads, "bootstrap": P.BOOTSTRAP,
                     "variants": {k: list(v) for k, v in P.VARIANTS.items()}},
        "case_intervals": case_intervals(done, P.BOOTSTRAP),
        "task_seconds": [t["seconds"] for t in done],
        "wall_seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    per_case = {"labels": done[0]["labels"],
                "tasks": [{k: t[k] for k in ("share", "seed", "preds")} for t in done]}  # fmt: skip
    with atomic_path(out / PREDICTIONS) as tmp:
        tmp.write_bytes(gzip.compress(json.dumps(per_case).encode("utf-8"), mtime=0))
    write_results(out, {**results, "predictions": PREDICTIONS})
    write_report(out, results)
    return results


def _mean_sd(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray(values, dtype=float)
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1) if v.size > 1 else 0.0:.{digits}f}"


def write_report(out: Path, results: dict[str, Any]) -> Path:
    """``report.md``: claims first, then per setting the endpoints and the signal, the
    case-bootstrap intervals, and the figures."""
    rows = [r for r in results["rows"] if ":" not in r["setting"]]
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    variants = list(P.VARIANTS)
    prov = results.get("provenance", {})
    lines = [
        "# brats-grading: the positive control of cross-modality guidance (issue #21)",
        "",
        f"`brats-grading` {results['version']}, preset `{results['preset']}`, seeds "
        f"{', '.join(map(str, results['seeds']))}; protocol fixed before the runs in "
        f"`benchmarks/guidance-control/protocol.py`; commit {prov.get('git_commit', '?')[:7]}"
        f"{' (dirty tree)' if prov.get('git_dirty') else ''}, {results['protocol']['threads']} "
        f"thread(s) per process; wall {results['wall_seconds'] / 60:.1f} min.",
        "",
    ]
    if results.get("claims"):
        lines += ["## Claims (paired by seed, 95 % t-interval)", "",
                  claims_table(results["claims"]), ""]  # fmt: skip
    lines += ["## Endpoints and the mechanism's signal (mean ± sd over seeds)", ""]
    head = "| setting | variant | FLAIR-branch AUC | fused AUC | CKA(FLAIR, T1ce) | KD term | FA term |"
    lines += [head, "|---|---|---|---|---|---|---|"]
    for s in settings:
        teacher = [r["metrics"] for r in rows if r["setting"] == s and r["method"] == "teacher"]
        lines.append(
            f"| {s} | teacher (T1ce) / FLAIR at init | "
            f"{_mean_sd([m['secondary_auc'] for m in teacher])} (T1ce) | – | "
            f"{_mean_sd([m['cka_stage1'] for m in teacher])} | "
            f"{_mean_sd([m['kd_stage1'] for m in teacher], 4)} | "
            f"{_mean_sd([m['fa_stage1'] for m in teacher])} |"
        )
        for v in variants:
            ms = [r["metrics"] for r in rows if r["setting"] == s and r["method"] == v]
            cells = [_mean_sd([m[k] for m in ms], 4 if k == "kd" else 3) for k in
                     ("secondary_auc", "fused_auc", "cka", "kd", "fa")]  # fmt: skip
            lines.append(f"| {s} | {v} | " + " | ".join(cells) + " |")
    lines += ["", "## guided − each variant: seed-averaged AUC, 95 % interval over test cases",
              "", "| setting | endpoint | vs | difference [95 % case interval] |",
              "|---|---|---|---|"]  # fmt: skip
    groups: dict[str, dict[str, tuple]] = {}
    for s, ends in results["case_intervals"].items():
        for endpoint, diffs in ends.items():
            for v, (d, lo, hi) in diffs.items():
                if v == "teacher":
                    continue
                lines.append(f"| {s} | {endpoint} | {v} | {d:+.3f} [{lo:+.3f}, {hi:+.3f}] |")
                if endpoint == "secondary_auc":
                    groups.setdefault(s, {})[f"guided − {v}"] = (d, lo, hi)
    plot_intervals(groups, out / "differences.png",
                   "FLAIR-branch AUC, guided minus each control (95 % case interval)",
                   "AUC difference")  # fmt: skip
    cka: dict[str, dict[str, tuple]] = {}
    for s in settings:
        for v in variants:
            vals = np.array([r["metrics"]["cka"] for r in rows
                             if r["setting"] == s and r["method"] == v])  # fmt: skip
            half = 1.96 * vals.std(ddof=1) / np.sqrt(vals.size) if vals.size > 1 else 0.0
            cka.setdefault(s, {})[v] = (float(vals.mean()), vals.mean() - half, vals.mean() + half)
    plot_intervals(cka, out / "signal.png",
                   "CKA of FLAIR and T1ce features on the test cases (mean ± 1.96 se)",
                   "linear CKA")  # fmt: skip
    lines += ["", "![differences.png](differences.png)", "", "![signal.png](signal.png)", ""]
    return write_text_atomic(out / "report.md", "\n".join(lines))


def main(argv: Sequence[str] | None = None) -> int:
    """The command line (module docstring)."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True, help="folder for results and figures")
    ap.add_argument("--preset", default="small", choices=("small", "tiny"),
                    help="small: the protocol; tiny: a smoke run")  # fmt: skip
    ap.add_argument("--seeds", type=int, nargs="+", default=list(P.SEEDS),
                    help="only these seeds (default: the protocol's)")  # fmt: skip
    ap.add_argument("--workers", type=int, default=1, help="tasks run in parallel processes")
    ap.add_argument("--threads", type=int, default=P.THREADS,
                    help="CPU threads per process, pinned whatever OMP_NUM_THREADS says")  # fmt: skip
    ap.add_argument("--quiet", action="store_true")
    args = ap.parse_args(argv)
    if args.workers < 1:
        raise InputError("--workers", "must be >= 1")
    run_control(args.out, preset=args.preset, seeds=args.seeds, workers=args.workers,
                threads=args.threads, quiet=args.quiet)  # fmt: skip
    print(f"wrote {args.out}/results.json, {PREDICTIONS} and report.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
