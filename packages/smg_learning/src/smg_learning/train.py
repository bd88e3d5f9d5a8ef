"""``smg-learning train``: a new run folder, or the continuation of an interrupted one.

:func:`train_run` takes the command's :class:`~medcommon.run.RunSpec` whole.
:func:`medcommon.run.open_run` resolves the config (the preset's ``run`` section <-
``--config`` <- ``--set``; ``--sites`` and ``--heldout`` are shorthands of the
``sites`` and ``heldout`` fields) and checks the folder: a new run needs a fresh
``--out``; ``--resume`` needs a run of this package there, takes its method, seed and
config, and lets ``--set`` change only :data:`RESUMABLE` (raised step counts continue
the run). The data (a resumed run reuses its ``split.json``) and ``--smd-from`` are
then loaded and checked, and only then is anything written, all of it inside
:meth:`medcommon.run.RunFolder.writing`: the header (``config.json``, the sites filled
in), ``split.json``, then the continual loop
(:func:`smg_learning.continual.train_continual`), under ``run.path`` (a staging folder
beside ``--out`` for ``--overwrite``, swapped in once the run has finished).

Bad input found while training, a divergence included (:class:`medcommon.errors.Diverged`:
a non-finite loss or one grown past ``max_loss_growth`` times its start, in any
segmenter or SMD stage, or a PGA virtual step that blew up), is exit 2 and removes
everything a new run wrote, so the same command can be run again into the same
``--out``; a resumed run keeps its folder (its last checkpoint is still good).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.run import RunSpec, is_main_process, open_run
from smg_learning.config import RunConfig, run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.replay import check_smd_source
from smg_learning.run_io import SPLIT_FILE, read_split
from smg_learning.strategies import STRATEGIES

#: config fields that ``--set`` may change when resuming (step counts and cadences)
RESUMABLE = ("steps_per_site", "smd.train_steps", "checkpoint_every", "log_every")


def train_run(spec: RunSpec) -> dict[str, Any]:
    """Train (or, with ``spec.resume``, continue) one run; returns its metrics.

    ``spec.options["smd_from"]``: a finished run on the same data, sites and seed whose
    per-stage SMD models (``smd_stages/``) are reused instead of training new ones.
    """
    run = open_run(spec, RunConfig, base=lambda s: run_preset(s.preset), resumable=RESUMABLE)
    strategy = STRATEGIES.get(run.method)
    if spec.data is None:
        raise InputError("--data", "a dataset folder is required")
    split = read_split(run.path) if run.resumed else None
    data = load_continual(spec.data, run.cfg, split=split)
    smd_from = spec.options.get("smd_from")
    if smd_from is not None:
        # the SMD stages of every site (only SMD replay reuses them)
        check_smd_source(Path(smd_from), data.sites if strategy.replay == "smd" else [])
    # all input is valid: only now is the run folder written, inside ``run.writing`` (a
    # divergence or other bad input found while training removes what a new run wrote)
    sites, heldout = tuple(data.sites), tuple(data.heldout)
    with run.writing(
        dataclasses.replace(run.cfg, sites=sites, heldout=heldout),
        task=data.task,
        channels=data.channels,
        sites=list(sites),
        heldout=list(heldout),
    ) as cfg:
        if not run.resumed and is_main_process():
            write_json_atomic(run.path / SPLIT_FILE, data.split)
        return train_continual(
            data,
            cfg,
            run.method,
            run.path,
            seed=run.seed,
            device=spec.device,
            quiet=spec.quiet,
            resume=run.resumed,
            smd_from=smd_from,
        )


__all__ = ["RESUMABLE", "train_run"]
