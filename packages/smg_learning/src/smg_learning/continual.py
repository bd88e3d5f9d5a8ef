"""The continual loop: one :class:`medcommon.train.Trainer` stage per site.

For each site ``t`` in the training order the strategy (:mod:`smg_learning.strategies`)
builds its replay memory of sites ``< t`` (``start_stage``); the segmenter trains on
the strategy's stage sites with the strategy's step (stage ``site-<name>``, model saved
to ``RUN/stages/<name>/``) and every Dice-matrix column is evaluated; then the
strategy updates its state (``end_stage``: EWC Fisher, LwF teacher, the SMD's stage
``smd-site-<name>`` saved to ``RUN/smd_stages/<name>/``).

Run folder (header files: :mod:`smg_learning.train`): ``log.jsonl``,
``checkpoint/<stage>/``, ``stages/``, ``model/`` (last segmenter), ``smd/`` (last SMD,
for ``smg-learning sample``), ``metrics.json`` (:func:`medcommon.run.write_metrics`).

Resume: every stage continues from its checkpoint until one of them actually trains
(it was interrupted, or its step count was raised); every later stage was trained
from that stage's old result, so it is trained afresh (:meth:`RunContext.fit_stage`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from medcommon.models import save_pretrained
from medcommon.run import write_metrics
from medcommon.train import TrainConfig, Trainer, seed_everything
from medcommon.train.loop import StepFn
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData, SliceDataset
from smg_learning.distributed import world_size
from smg_learning.evaluate import stage_metrics, summarize
from smg_learning.segmenter import Segmenter, SegmenterConfig
from smg_learning.strategies import STRATEGIES, RunContext, Strategy


def make_step(strategy: Strategy, cfg: RunConfig, *, stage: int) -> StepFn:
    """The Trainer step of ``strategy`` in ``stage`` (one seam for tests to wrap)."""
    return strategy.step


def train_continual(
    data: ContinualData,
    cfg: RunConfig,
    method: str,
    out: str | Path | None,
    *,
    seed: int = 0,
    device: str = "cpu",
    quiet: bool = True,
    resume: bool = False,
    smd_from: str | Path | None = None,
    train_last_smd: bool = True,
) -> dict[str, Any]:
    """Train ``method`` over ``data.sites`` in order; returns (and writes) ``metrics.json``.

    The returned dict also holds ``_model`` (the final segmenter) and ``_smd`` (the
    final SMD model, or None), which are not written to ``metrics.json``.

    Args:
        data: loaded slices (:func:`smg_learning.data.load_continual`).
        out: the run folder (header files are written by
            :func:`smg_learning.train.train_run`); None trains in memory.
        smd_from: a finished run on the same data and sites whose per-stage SMD
            models (``smd_stages/``) are reused instead of training new ones.
        train_last_smd: also teach the SMD the last site (needed by ``sample`` for
            that site; the segmenter never replays it).
    """
    strategy_cls = STRATEGIES.get(method)
    out = Path(out) if out is not None else None
    sites = data.sites
    seed_everything(seed)
    model = Segmenter(
        SegmenterConfig(
            in_channels=data.channels,
            channels=tuple(cfg.channels),
            num_res_units=cfg.num_res_units,
            out_channels=len(data.structures) + 1,  # background + nested structures
        )
    )
    every = cfg.checkpoint_every
    run = RunContext(
        data=data,
        cfg=cfg,
        seed=seed,
        device=device,
        out=out,
        quiet=quiet,
        resume=resume,
        resumed=resume,
        checkpoint_every=every,
        smd_from=None if smd_from is None else Path(smd_from),
        train_last_smd=train_last_smd,
    )
    strategy = strategy_cls(run)  # after the segmenter: an SMD's init draws from the same RNG
    rows: list[dict[str, float]] = []
    seg_seconds = 0.0
    for t, site in enumerate(sites):
        strategy.start_stage(t)
        stage_sites = strategy.stage_sites(t)
        train_set = SliceDataset(
            [data.parts["train"][s] for s in stage_sites], [sites.index(s) for s in stage_sites]
        )
        tcfg = TrainConfig(
            max_steps=cfg.steps_per_site,
            batch_size=min(cfg.batch_size, len(train_set)),
            log_every=cfg.log_every,
            checkpoint_every=every,
        )
        opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        strategy.optimizer = opt
        trainer = Trainer(
            model,
            opt,
            train_set,
            make_step(strategy, cfg, stage=t),
            config=tcfg,
            run_dir=out,
            seed=seed * 100 + t,
            eval_fn=lambda m: stage_metrics(m, data, "test", next(m.parameters()).device),
            model_config=model.config,
            model_dir=f"stages/{site}",
            state={"records": strategy.stage_records(t)},  # PGA's align_share, resumed
            stage=f"site-{site}",
            device=device,
            quiet=quiet,
        )
        res = run.fit_stage(trainer)
        model = trainer.unwrapped_model()
        seg_seconds += res.train_seconds
        rows.append(res.final_metrics or stage_metrics(model, data, "test", device))
        strategy.end_stage(t, model)
    metrics = summarize(rows, sites, data.columns)
    smd_seconds, sample_seconds = run.seconds["smd"], run.seconds["sample"]
    metrics.update(
        method=method,
        seed=seed,
        train_seconds=seg_seconds + smd_seconds + sample_seconds,
        segmenter_seconds=seg_seconds,
        smd_seconds=smd_seconds,
        replay_sample_seconds=sample_seconds,
    )
    # per-stage means of what the strategy recorded each step (PGA: ``align_share``)
    for name, per_stage in strategy.stage_means().items():
        metrics[f"{name}_per_stage"] = per_stage
        seen = [v for v in per_stage if v is not None]
        metrics[name] = sum(seen) / len(seen) if seen else None
    # the probe's values through training (issue #22): name -> per stage, in step order
    probed = sorted({n for rec in strategy.records.values() for n in rec if n.startswith("cos_")})
    if probed:
        stages = range(len(sites))
        metrics["probe_every"] = cfg.probe_every
        metrics["probe_trace"] = {
            n: [strategy.records.get(t, {}).get(n, []) for t in stages] for n in probed
        }
    smd = strategy.smd
    if out is not None and _is_main():
        save_pretrained(model, out / "model", model.config)
        if smd is not None:
            save_pretrained(smd, out / "smd", smd.config)
        write_metrics(out, metrics)
    metrics["_model"] = model
    metrics["_smd"] = smd
    metrics["_memory"] = strategy.memory  # the last stage's replay (sample-quality checks)
    return metrics


def _is_main() -> bool:
    """The process that writes run files (rank 0 under torchrun)."""
    return world_size() == 1 or torch.distributed.get_rank() == 0
