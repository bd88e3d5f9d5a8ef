"""Issue #22's test bed for PGA's gradient alignment: runs ``protocol.py``.

From the repository root::

    python packages/smg_learning/benchmarks/alignment-testbed/run.py --out DIR
        [--workers N] [--threads N] [--preset small|tiny] [--quiet]

Three steps, in the protocol's order: (1) the buffer ladder: ``joint`` and
``replay-real`` on every seed until a buffer leaves the gap (or "at ceiling" and stop);
(2) α chosen on validation data at the selection seed; (3) the rows ``finetune``,
``pga-alpha0``, ``pga-a1``, ``pga-a2`` on every seed. Writes ``DIR/results.json`` (rows,
the checked claims, the ladder, the selection, every run's probe trace, provenance),
``DIR/report.md`` and ``DIR/cosines.png`` (the probe's cosines through training). Jobs run
in ``--workers`` processes pinned to ``--threads`` CPU threads (default 1). ``--preset
tiny`` runs the same code at toy sizes and accepts any gap (tests).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from medcommon.cli import run_main
from medcommon.config import replace_nested
from medcommon.errors import Diverged, InputError
from medcommon.fs import write_text_atomic
from medcommon.provenance import load_beside
from medcommon.report import claims_table, make_results, markdown_table, write_results
from medcommon.train import fix_threads, pinned_map
from smg_learning import __version__
from smg_learning.config import RunConfig, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual, validation_data
from smg_learning.synth import SynthSpec, generate

PROTOCOL = "packages/smg_learning/benchmarks/alignment-testbed/protocol.py"
P = load_beside(__file__, "protocol.py", "smg_alignment_testbed")
METRICS = ("memorizability", "generalizability", "bwt", "cos_cur_rep", "cos_mtr_mte",
           "align_share")  # fmt: skip


def scale(preset: str) -> dict[str, Any]:
    """The protocol at ``small``; ``tiny``: toy sizes, two seeds, any gap (tests)."""
    if preset == "small":
        return {"preset": P.PRESET, "synth": P.SYNTH, "seeds": P.SEEDS, "ladder": P.BUFFER_LADDER,
                "gap_min": P.GAP_MIN, "grid": P.ALPHA_GRID, "probe_every": P.PROBE_EVERY}  # fmt: skip
    if preset == "tiny":
        synth = SynthSpec(sites=6, cases=4, slices=4, size=24, transfer="curves")
        return {"preset": "tiny", "synth": synth, "seeds": (0, 1), "ladder": (2, 1),
                "gap_min": -1.0, "grid": (0.01, 0.1, 0.3), "probe_every": 2}  # fmt: skip
    raise InputError("--preset", "the test bed runs at 'small' (the protocol) or 'tiny' (tests)")


def row_config(base: RunConfig, row: str, buffer: int, alpha: float | None = None) -> RunConfig:
    """The run config of ``row``: the protocol's common changes, the buffer, the row's own
    changes, and ``alpha`` as ``pga.inner_lr`` for the chosen-α rows."""
    cfg = replace_nested(base, replay_per_site=buffer)
    cfg = replace_nested(cfg, **P.ROWS[row][1])
    if alpha is not None:
        cfg = replace_nested(cfg, pga={"inner_lr": alpha})
    return cfg


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One continual run; returns its metrics (``diverged``: the error, for a grid point)."""
    fix_threads(job["threads"])
    cfg = job["cfg"]
    data = load_continual(job["data"], cfg, P.SITES, P.HELDOUT)
    if job["validation"]:
        data = validation_data(data, P.VAL_FRACTION, seed=0)
    try:
        m = train_continual(data, cfg, job["method"], None, seed=job["seed"])
    except Diverged as exc:
        return {**_key(job), "diverged": str(exc)}
    metrics = {k: float(m[k]) for k in METRICS if m.get(k) is not None}
    return {**_key(job), "metrics": metrics, "probe_trace": m.get("probe_trace"),
            "train_seconds": m["train_seconds"]}  # fmt: skip


def _key(job: dict[str, Any]) -> dict[str, Any]:
    return {k: job[k] for k in ("row", "seed", "buffer", "alpha", "validation")}


def _jobs(rows: Sequence[tuple[str, float | None]], seeds, base, buffer, ctx, validation=False):
    return [
        {"row": row, "method": P.ROWS[row][0], "seed": seed, "buffer": buffer, "alpha": alpha,
         "validation": validation, "cfg": row_config(base, row, buffer, alpha), **ctx}
        for row, alpha in rows
        for seed in seeds
    ]  # fmt: skip


def choose_alphas(scores: Sequence[dict[str, Any]], n: int) -> list[float]:
    """The ``n`` grid points of best validation memorizability (ties: the smaller α;
    diverged points are out), in increasing α."""
    ok = [s for s in scores if "metrics" in s]
    best = sorted(ok, key=lambda s: (-s["metrics"]["memorizability"], s["alpha"]))[:n]
    return sorted(s["alpha"] for s in best)


def run_testbed(out: Path, preset: str, workers: int, threads: int, quiet: bool) -> dict:
    sc = scale(preset)
    fix_threads(threads)
    t0 = time.perf_counter()
    base = replace_nested(run_preset(sc["preset"]), **P.COMMON)
    base = replace_nested(base, probe_every=sc["probe_every"])
    seeds = sc["seeds"]
    with tempfile.TemporaryDirectory(prefix="smg-testbed-") as tmp:
        data_dir = generate(Path(tmp) / "data", "prostate", spec=sc["synth"], seed=P.DATA_SEED)
        ctx = {"data": str(data_dir), "threads": threads}

        def run(jobs: list[dict[str, Any]], desc: str) -> list[dict[str, Any]]:
            return pinned_map(run_job, jobs, workers=workers, threads=threads, desc=desc,
                              quiet=quiet)  # fmt: skip

        # (1) the buffer ladder: the premise before anything of PGA runs
        joint = run(_jobs([("joint", None)], seeds, base, sc["ladder"][0], ctx), "joint")
        ladder, buffer, replay = [], None, []
        for b in sc["ladder"]:
            replay = run(_jobs([("replay-real", None)], seeds, base, b, ctx), f"replay b={b}")
            gaps = [j["metrics"]["memorizability"] - r["metrics"]["memorizability"]
                    for j, r in zip(joint, replay)]  # fmt: skip
            ladder.append({"buffer": b, "gaps": gaps, "mean_gap": float(np.mean(gaps))})
            if np.mean(gaps) >= sc["gap_min"]:
                buffer = b
                break
        done = joint + replay
        selection: list[dict[str, Any]] = []
        alphas: list[float] = []
        if buffer is not None:
            # (2) α on validation data at the selection seed, (3) the PGA rows and finetune
            grid = [("pga-a1", a) for a in sc["grid"]]
            selection = run(_jobs(grid, (P.SELECTION_SEED,), base, buffer, ctx, True), "select")
            alphas = choose_alphas(selection, P.N_ALPHAS)
            rows = [("finetune", None), ("pga-alpha0", None)]
            rows += [(f"pga-a{k + 1}", a) for k, a in enumerate(alphas)]
            done += run(_jobs(rows, seeds, base, buffer, ctx), "rows")
    at_ceiling = buffer is None
    table = [{"method": d["row"], "seed": d["seed"], "metrics": d["metrics"]}
             for d in done if "metrics" in d]  # fmt: skip
    diverged = [_key(d) | {"error": d["diverged"]} for d in done if "diverged" in d]
    extra = {
        "protocol": {
            "preset": sc["preset"],
            "threads": threads,
            "workers": workers,
            "gap_min": sc["gap_min"],
            "grid": list(sc["grid"]),
        },
        "ladder": ladder,
        "buffer": buffer,
        "at_ceiling": at_ceiling,
        "selection": [
            {
                "alpha": s["alpha"],
                **(
                    {"val_memorizability": s["metrics"]["memorizability"]}
                    if "metrics" in s
                    else {"diverged": s["diverged"]}
                ),
            }
            for s in selection
        ],
        "alphas": alphas,
        "diverged": diverged,
        "traces": [
            {k: d[k] for k in ("row", "seed", "alpha")} | {"trace": d["probe_trace"]}
            for d in done
            if d.get("probe_trace")
        ],
        "wall_seconds": time.perf_counter() - t0,
    }
    results = make_results("smg-learning", __version__, sc["preset"], list(seeds), table,
                           extra=extra, claims=[] if at_ceiling else P.CLAIMS,
                           figures=["cosines.png"], sources=[PROTOCOL])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, results)
    plot_cosines(results, out / "cosines.png", sc["probe_every"])
    write_report(out, results)
    return results


def plot_cosines(results: dict[str, Any], path: Path, every: int) -> Path | None:
    """The probe's two cosines through training (stages with replay), mean over seeds
    per row, one panel each; vertical lines at the stage boundaries."""
    traces = results["extra"]["traces"]
    if not traces:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6), sharex=True)
    rows = list(dict.fromkeys(t["row"] for t in traces))
    for ax, name in zip(axes, ("cos_cur_rep", "cos_mtr_mte")):
        for row in rows:
            per_seed = [np.concatenate([np.asarray(s, float) for s in t["trace"][name]])
                        for t in traces if t["row"] == row]  # fmt: skip
            n = min(len(v) for v in per_seed)
            mean = np.mean([v[:n] for v in per_seed], axis=0)
            ax.plot(np.arange(n) * every, mean, label=row)
        lens = [len(s) for s in traces[0]["trace"][name] if len(s)]  # stages with replay
        for edge in np.cumsum(lens)[:-1]:
            ax.axvline(edge * every, color="0.8", lw=0.8)
        ax.axhline(0, color="0.5", lw=0.6)
        ax.set_title(name)
        ax.set_xlabel("training step (stages with replay, concatenated)")
    axes[0].set_ylabel("cosine (mean over seeds)")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_report(out: Path, results: dict[str, Any]) -> Path:
    ex, prov = results["extra"], results.get("provenance", {})
    lines = [
        "# smg-learning: a test bed where gradient alignment can matter (issue #22)",
        "",
        f"Protocol fixed before the runs in `benchmarks/alignment-testbed/protocol.py`; commit "
        f"{(prov.get('git_commit') or '?')[:7]}{' (dirty tree)' if prov.get('git_dirty') else ''}, "
        f"preset `{results['preset']}`, seeds {', '.join(map(str, results['seeds']))}, "
        f"{ex['protocol']['threads']} thread(s) per run; wall {ex['wall_seconds'] / 60:.1f} min.",
        "",
        "## The premise: the buffer ladder (joint − replay-real, memorizability)",
        "",
        "| buffer (slices a site) | per seed | mean |",
        "|---|---|---|",
    ]
    for rung in ex["ladder"]:
        per = ", ".join(f"{g:+.3f}" for g in rung["gaps"])
        lines.append(f"| {rung['buffer']} | {per} | {rung['mean_gap']:+.3f} |")
    lines.append("")
    if ex["at_ceiling"]:
        lines += [f"**At ceiling:** no buffer left a gap of {ex['protocol']['gap_min']}; "
                  "PGA was not run (the protocol stops here).", ""]  # fmt: skip
    else:
        lines += [f"Buffer used: {ex['buffer']} slices a site.", "",
                  "## α chosen on validation data (training sites only, selection seed)", "",
                  "| α | validation memorizability |", "|---|---|"]  # fmt: skip
        for s in ex["selection"]:
            val = f"{s['val_memorizability']:.4f}" if "val_memorizability" in s else "diverged"
            lines.append(f"| {s['alpha']:g} | {val} |")
        lines += ["", f"Chosen: α = {', '.join(f'{a:g}' for a in ex['alphas'])} "
                  "(`pga-a1`, `pga-a2`).", ""]  # fmt: skip
    if results.get("claims"):
        lines += ["## Claims (paired by seed, 95 % t-interval)", "",
                  claims_table(results["claims"]), ""]  # fmt: skip
    lines += ["## Rows (mean ± sd over seeds)", ""]
    lines.append(markdown_table(results, METRICS).rstrip())
    if ex["traces"]:
        lines += ["", "![the probe's cosines through training](cosines.png)"]
    path = out / "report.md"
    write_text_atomic(path, "\n".join(lines) + "\n")
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--preset", default="small", choices=["small", "tiny"])
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--threads", type=int, default=P.THREADS)
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    res = run_testbed(args.out, args.preset, args.workers, args.threads, args.quiet)
    if not args.quiet:
        print((args.out / "report.md").read_text())
    return 0 if res else 1


if __name__ == "__main__":
    raise SystemExit(run_main(main))
