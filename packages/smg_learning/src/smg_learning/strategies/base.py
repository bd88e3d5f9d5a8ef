"""The strategy interface: per-run state and three hooks that the continual loop calls.

For each site ``t`` the loop (:func:`smg_learning.continual.train_continual`) calls
:meth:`Strategy.start_stage` (build the replay memory of sites ``< t``), trains the
segmenter on :meth:`Strategy.stage_sites` with :meth:`Strategy.step` as the
:class:`medcommon.train.Trainer` step, then calls :meth:`Strategy.end_stage` (EWC
Fisher, LwF teacher, the SMD's stage). The base class is sequential fine-tuning; a
strategy overrides only what it changes.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import torch
from torch import nn

from medcommon.errors import InputError
from medcommon.fs import write_text_atomic
from medcommon.registry import Registry
from medcommon.train import Trainer
from medcommon.train.loop import FitResult
from smg_learning.config import RunConfig
from smg_learning.data import ContinualData
from smg_learning.distributed import unwrap
from smg_learning.pga import shift_domain
from smg_learning.replay import ReplayMemory
from smg_learning.segmenter import SegLoss
from smg_learning.smd import SiteModulatedDiffusion
from smg_learning.transfer import shift_transfer


@dataclass
class RunContext:
    """What every hook of one run may need; ``seconds`` collects the SMD's timings.

    ``resumed``: the run continues an interrupted one; ``resume``: the next stage may
    continue from its checkpoint (off once a stage has trained on resume, see
    :meth:`fit_stage`).
    """

    data: ContinualData
    cfg: RunConfig
    seed: int = 0
    device: str = "cpu"
    out: Path | None = None
    quiet: bool = True
    resume: bool = False
    resumed: bool = False
    checkpoint_every: int = 0
    smd_from: Path | None = None
    train_last_smd: bool = True
    seconds: dict[str, float] = field(default_factory=lambda: {"smd": 0.0, "sample": 0.0})

    def fit_stage(self, trainer: Trainer) -> FitResult:
        """Fit one stage (segmenter or SMD), resuming while the earlier stages did.

        Once a stage trains on resume (it was interrupted, or its step count was
        raised), ``resume`` is switched off: the later stages' checkpoints, models and
        log lines come from that stage's old result, so they are dropped and those
        stages train afresh (and equal an uninterrupted run's).
        """
        if self.resumed and not self.resume and trainer.run_dir is not None:
            _drop_stage(trainer.run_dir, trainer.stage)
        res = trainer.fit(resume=self.resume)
        if self.resume and (res.resumed_from is None or res.resumed_from < res.steps):
            self.resume = False
        return res


def _drop_stage(out: Path, stage: str) -> None:
    """Remove a stale stage's checkpoint and log lines (its model is overwritten)."""
    if not stage:
        return
    shutil.rmtree(out / "checkpoint" / stage, ignore_errors=True)
    log = out / "log.jsonl"
    if not log.is_file():
        return
    kept = []
    for line in log.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line).get("stage") == stage:
                continue
        except json.JSONDecodeError:
            continue  # a line cut by a kill
        kept.append(line + "\n")
    write_text_atomic(log, "".join(kept))


def step_generator(seed: int, stage: int, step: int) -> torch.Generator:
    """The replay/shift RNG of one step: a pure function of (seed, stage, step), so resume is exact.

    Every process of a DDP run draws the same numbers, so the replay batch is the same
    on all of them.
    """
    return torch.Generator().manual_seed(seed * 1_000_003 + stage * 10_007 + step)


def share_rows(n: int, ctx: Any) -> slice:
    """This process's rows of an ``n``-row batch drawn identically on every process.

    The same contiguous split as the Trainer's split of the global batch, so that the
    processes' mean losses average to the single-process loss.
    """
    world, rank = ctx.accelerator.num_processes, ctx.accelerator.process_index
    if n % world:
        raise InputError("replay_batch", f"{n} is not divisible by the {world} processes")
    per = n // world
    return slice(rank * per, (rank + 1) * per)


@dataclass
class StageRecords:
    """One stage's recorded values (``records[stage]``: name -> values) as a Trainer
    ``state`` object: saved in each checkpoint of the stage and restored on resume."""

    records: dict[int, dict[str, list[float]]]
    stage: int

    def state_dict(self) -> dict[str, list[float]]:
        return {n: list(v) for n, v in self.records.get(self.stage, {}).items()}

    def load_state_dict(self, state: dict[str, list[float]]) -> None:
        self.records[self.stage] = {str(n): [float(x) for x in v] for n, v in state.items()}


class Strategy:
    """Sequential fine-tuning: each stage trains on its site with Dice + CE, no protection."""

    #: the name in ``STRATEGIES`` (``--method``) and the one-line ``--help`` text
    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    #: where replay comes from (informational: the hooks implement it)
    replay: ClassVar[Literal["none", "real", "smd"]] = "none"
    #: each stage trains on every site seen so far
    cumulative: ClassVar[bool] = False
    #: the step is PGA's (its ``pga`` settings matter; ``benchmarks/pga-select/`` checks it)
    uses_pga: ClassVar[bool] = False
    #: the SMD model of SMD-replay strategies (saved to ``RUN/smd``)
    smd: SiteModulatedDiffusion | None = None

    def __init__(self, run: RunContext) -> None:
        self.run = run
        self.cfg = run.cfg
        self.loss_fn = SegLoss(run.cfg.dice_weight)
        self.stage = 0
        self.memory: ReplayMemory | None = None
        #: the stage's optimiser (set by the loop; PGA's Adam-geometry virtual step reads it)
        self.optimizer: torch.optim.Optimizer | None = None
        #: per-step values a strategy records, per stage: stage -> name -> values
        self.records: dict[int, dict[str, list[float]]] = {}

    # ----------------------------------------------------------------- hooks
    def stage_sites(self, t: int) -> list[str]:
        """The sites whose training slices stage ``t`` trains on."""
        sites = self.run.data.sites
        return sites[: t + 1] if self.cumulative else [sites[t]]

    def start_stage(self, t: int) -> None:
        """Before stage ``t``: the replay memory of sites ``< t``."""
        self.stage = t
        self.memory = self.replay_memory(t)

    def replay_memory(self, t: int) -> ReplayMemory | None:
        return None

    def step(self, model: nn.Module, batch: dict[str, torch.Tensor], ctx: Any) -> dict[str, Any]:
        """One micro-batch: Dice + CE on the site batch plus this process's replay rows."""
        self.probe(model, ctx)
        x, y = batch["image"], batch["mask"]
        replay = self.sample_replay(step_generator(self.run.seed, self.stage, ctx.step), x.device)
        if replay is not None:
            rows = share_rows(len(replay[0]), ctx)
            x, y = torch.cat([x, replay[0][rows]]), torch.cat([y, replay[1][rows]])
        logits = model(x)
        loss = self.loss_fn(logits, y)
        logs: dict[str, Any] = {"seg": loss.detach()}
        logs["loss"] = self.regularise(model, x, logits, loss, logs)
        return logs

    def regularise(
        self,
        model: nn.Module,
        x: torch.Tensor,
        logits: torch.Tensor,
        loss: torch.Tensor,
        logs: dict[str, Any],
    ) -> torch.Tensor:
        """The step's loss from the segmentation loss (EWC and LwF add their terms)."""
        return loss

    def end_stage(self, t: int, model: nn.Module) -> None:
        """After stage ``t`` with the trained segmenter ``model`` (unwrapped)."""

    # --------------------------------------------------------------- helpers
    def probe(self, model: nn.Module, ctx: Any) -> None:
        """Every ``probe_every`` steps of a stage with replay: the gradient cosines PGA
        optimises, on fixed probe batches (issue #22), recorded as ``cos_cur_rep``
        (current site vs replay: the orientational alignment) and ``cos_mtr_mte``
        (current site and replay together vs a shifted copy of the current site: the
        arbitrary alignment's meta-train vs meta-test).

        The batches are fixed per stage: ``probe_size`` slices of the current site's
        training slices and of the replay memory (seeded), the shifted copy drawn from
        ``pga.shift``'s family with a fixed generator. Gradients come from
        ``torch.autograd.grad`` (no ``.grad`` is touched), the segmenter has no running
        statistics and no random draw comes from a shared generator: training is the
        same with the probe on or off (``tests/test_probe.py``).
        """
        every = self.cfg.probe_every
        if not every or ctx.step % every or self.memory is None or not len(self.memory):
            return
        net = unwrap(model)
        device = next(net.parameters()).device
        g = torch.Generator().manual_seed(self.run.seed * 1_000_003 + 7_777 * self.stage + 11)
        site = self.run.data.parts["train"][self.run.data.sites[self.stage]]
        cur_idx = torch.randperm(len(site), generator=g)[: self.cfg.probe_size]
        rep_idx = torch.randperm(len(self.memory), generator=g)[: self.cfg.probe_size]
        cur = (site.images[cur_idx].to(device), site.masks[cur_idx].to(device))
        rep = (self.memory.images[rep_idx].to(device), self.memory.masks[rep_idx].to(device))
        if self.cfg.pga.shift == "transfer":
            moved = shift_transfer(cur[0], g)
        else:
            moved = shift_domain(cur[0], g, self.cfg.pga.shift_strength)
        params = [p for p in net.parameters() if p.requires_grad]

        def grad(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = self.loss_fn(net(x), y)
            return torch.cat([gr.flatten() for gr in torch.autograd.grad(loss, params)])

        g_cur, g_rep = grad(*cur), grad(*rep)
        g_mtr = grad(torch.cat([cur[0], rep[0]]), torch.cat([cur[1], rep[1]]))
        g_mte = grad(moved, cur[1])
        cos = torch.nn.functional.cosine_similarity
        self.record("cos_cur_rep", cos(g_cur, g_rep, dim=0))
        self.record("cos_mtr_mte", cos(g_mtr, g_mte, dim=0))

    def record(self, name: str, value: torch.Tensor | float) -> None:
        """Keep one step's ``value`` of ``name`` for this stage (:meth:`stage_means`)."""
        stage = self.records.setdefault(self.stage, {})
        stage.setdefault(name, []).append(float(value))

    def stage_records(self, t: int) -> StageRecords:
        """Stage ``t``'s records as a Trainer ``state`` object: checkpointed with the stage,
        so a resumed run's :meth:`stage_means` are an uninterrupted run's."""
        return StageRecords(self.records, t)

    def stage_means(self) -> dict[str, list[float | None]]:
        """Name -> the mean of each stage's recorded values (None: nothing recorded).

        A stage restored from its checkpoint on resume gets its records back from the
        checkpoint (:meth:`stage_records`).
        """
        names = sorted({n for rec in self.records.values() for n in rec})
        stages = range(max(self.records, default=-1) + 1)
        out: dict[str, list[float | None]] = {}
        for n in names:
            vals = [self.records.get(t, {}).get(n) for t in stages]
            out[n] = [None if not v else sum(v) / len(v) for v in vals]
        return out

    def sample_replay(
        self, gen: torch.Generator, device: torch.device
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
        """``cfg.replay_batch`` replay slices (images, masks on ``device``; sites on the CPU)."""
        if self.memory is None or not len(self.memory):
            return None
        rx, ry, rs = self.memory.sample(self.cfg.replay_batch, gen)
        return rx.to(device), ry.to(device), rs


#: ``--method`` name -> strategy class; a run instantiates one with its :class:`RunContext`
STRATEGIES: Registry[type[Strategy]] = Registry("method")
