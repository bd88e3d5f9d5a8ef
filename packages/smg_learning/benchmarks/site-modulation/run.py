"""SMD replay against one shared prompt and against style-transfer replay: runs ``protocol.py``.

From the repository root::

    python packages/smg_learning/benchmarks/site-modulation/run.py --out DIR
        [--workers N] [--threads N] [--preset small|tiny] [--quiet]

Writes ``DIR/results.json`` (rows with memorizability, generalizability and the replay's
sample quality, the checked claims, provenance) and ``DIR/report.md``. One job per
(row, seed) in ``--workers`` processes pinned to ``--threads`` CPU threads (default 1).
``--preset tiny`` runs the same code at toy sizes (tests).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from medcommon.cli import run_main
from medcommon.config import replace_nested
from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from medcommon.provenance import load_beside
from medcommon.report import claims_table, make_results, markdown_table, write_results
from medcommon.train import fix_threads, pinned_map
from smg_learning import __version__
from smg_learning.config import RunConfig, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import ContinualData, load_continual
from smg_learning.replay import ReplayMemory, resize_pairs
from smg_learning.synth import SynthSpec, generate

PROTOCOL = "packages/smg_learning/benchmarks/site-modulation/protocol.py"
P = load_beside(__file__, "protocol.py", "smg_site_modulation")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "costs"))
from costs import SiteClassifier, _structure_dice, _train_on  # noqa: E402

METRICS = ("memorizability", "generalizability", "bwt", "site_acc", "mask_dice")


def scale(preset: str) -> dict[str, Any]:
    if preset == "small":
        from smg_learning.config import PRESETS

        synth = PRESETS.section("small", "synth", SynthSpec)
        return {"preset": P.PRESET, "synth": synth, "seeds": P.SEEDS, "judge_steps": P.JUDGE_STEPS}
    if preset == "tiny":
        synth = SynthSpec(sites=6, cases=4, slices=4, size=24)
        return {"preset": "tiny", "synth": synth, "seeds": (0, 1), "judge_steps": 5}
    raise InputError("--preset", "runs at 'small' (the protocol) or 'tiny' (tests)")


def run_job(job: dict[str, Any]) -> dict[str, Any]:
    """One continual run: its metrics and the replay memory of its last stage."""
    fix_threads(job["threads"])
    cfg = job["cfg"]
    data = load_continual(job["data"], cfg, P.SITES, P.HELDOUT)
    m = train_continual(data, cfg, job["method"], None, seed=job["seed"])
    mem = m["_memory"]
    return {"row": job["row"], "seed": job["seed"], "memory": mem,
            "metrics": {k: float(m[k]) for k in METRICS if m.get(k) is not None}}  # fmt: skip


class Judges:
    """The two sample-quality judges, trained once on real training slices of the sites
    the last stage replays, seen at the SMD's resolution."""

    def __init__(self, data: ContinualData, cfg: RunConfig, steps: int) -> None:
        self.sites = list(data.sites[:-1])
        self.size, self.out = cfg.smd.image_size or cfg.image_size, cfg.image_size
        xs = torch.cat([data.parts["train"][s].images for s in self.sites])
        ms = torch.cat([data.parts["train"][s].masks for s in self.sites])
        ys = torch.cat([torch.full((len(data.parts["train"][s]),), k)
                        for k, s in enumerate(self.sites)])  # fmt: skip
        xs = self.view(xs, ms)
        self.structures = len(data.structures)
        self.segmenter = _train_on(xs, ms, cfg, data, steps, P.JUDGE_SEED)
        torch.manual_seed(P.JUDGE_SEED)
        self.clf = SiteClassifier(data.channels, len(self.sites))
        opt = torch.optim.Adam(self.clf.parameters(), lr=2e-3)
        g = torch.Generator().manual_seed(P.JUDGE_SEED)
        for _ in range(steps):
            idx = torch.randint(0, xs.shape[0], (32,), generator=g)
            opt.zero_grad(set_to_none=True)
            torch.nn.functional.cross_entropy(self.clf(xs[idx]), ys[idx]).backward()
            opt.step()
        self.clf.eval()
        tx = torch.cat([data.parts["test"][s].images for s in self.sites])
        tm = torch.cat([data.parts["test"][s].masks for s in self.sites])
        ty = torch.cat([torch.full((len(data.parts["test"][s]),), k)
                        for k, s in enumerate(self.sites)])  # fmt: skip
        with torch.no_grad():
            self.real_acc = float((self.clf(self.view(tx, tm)).argmax(1) == ty).float().mean())

    def view(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """Slices down to the SMD's resolution and back (every row's replay alike)."""
        return resize_pairs(*resize_pairs(images, masks, self.size), self.out)[0]

    @torch.no_grad()
    def __call__(self, mem: ReplayMemory | None) -> dict[str, float]:
        if mem is None or not len(mem):
            return {}
        x = self.view(mem.images, mem.masks)
        acc = float((self.clf(x).argmax(1) == mem.sites).float().mean())
        pred = self.segmenter(x).argmax(1, keepdim=True)
        return {"site_acc": acc, "mask_dice": _structure_dice(pred, mem.masks, self.structures)}


def run_control(out: Path, preset: str, workers: int, threads: int, quiet: bool) -> dict:
    sc = scale(preset)
    fix_threads(threads)
    t0 = time.perf_counter()
    base = run_preset(sc["preset"])
    with tempfile.TemporaryDirectory(prefix="smg-sitemod-") as tmp:
        data_dir = generate(Path(tmp) / "data", "prostate", spec=sc["synth"], seed=P.DATA_SEED)
        jobs = [{"row": row, "method": method, "seed": seed, "cfg": replace_nested(base, **changes),
                 "data": str(data_dir), "threads": threads}
                for row, (method, changes) in P.ROWS.items() for seed in sc["seeds"]]  # fmt: skip
        done = pinned_map(run_job, jobs, workers=workers, threads=threads, desc="runs",
                          quiet=quiet)  # fmt: skip
        judges = Judges(load_continual(data_dir, base, P.SITES, P.HELDOUT), base,
                        sc["judge_steps"])  # fmt: skip
    rows = [{"method": d["row"], "seed": d["seed"], "metrics": {**d["metrics"], **judges(d["memory"])}}
            for d in done]  # fmt: skip
    extra = {"protocol": {"preset": sc["preset"], "threads": threads, "workers": workers},
             "site_acc_real_test": judges.real_acc, "site_chance": 1 / len(judges.sites),
             "wall_seconds": time.perf_counter() - t0}  # fmt: skip
    results = make_results("smg-learning", __version__, sc["preset"], list(sc["seeds"]), rows,
                           extra=extra, claims=P.CLAIMS, sources=[PROTOCOL])  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    write_results(out, results)
    write_report(out, results)
    return results


def write_report(out: Path, results: dict[str, Any]) -> Path:
    ex, prov = results["extra"], results.get("provenance", {})
    lines = [
        "# smg-learning: SMD replay against one shared prompt and style-transfer replay (issue #22)",
        "",
        f"Protocol fixed before the runs in `benchmarks/site-modulation/protocol.py`; commit "
        f"{(prov.get('git_commit') or '?')[:7]}{' (dirty tree)' if prov.get('git_dirty') else ''}, "
        f"preset `{results['preset']}`, seeds {', '.join(map(str, results['seeds']))}, "
        f"{ex['protocol']['threads']} thread(s) per run; wall {ex['wall_seconds'] / 60:.1f} min. "
        f"Site classifier on real test slices: {ex['site_acc_real_test']:.3f} "
        f"(chance {ex['site_chance']:.3f}).",
        "",
        "## Claims (paired by seed, 95 % t-interval)",
        "",
        claims_table(results["claims"]),
        "",
        "## Rows (mean ± sd over seeds)",
        "",
    ]
    lines.append(markdown_table(results, METRICS).rstrip())
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
    run_control(args.out, args.preset, args.workers, args.threads, args.quiet)
    if not args.quiet:
        print((args.out / "report.md").read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
