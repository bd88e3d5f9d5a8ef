"""``smg-learning train``: a new run folder, or the continuation of an interrupted one.

:func:`train_run` validates every input before anything is written, writes the run's
header (:mod:`smg_learning.run_io`) and runs the continual loop
(:func:`smg_learning.continual.train_continual`). On ``--resume`` the method, seed,
sites, split and config come from the run folder; ``--set`` may then raise only the
step counts (:data:`RESUMABLE`), which continues the run to the new counts.

This module was also the old home of the pipeline; its names are re-exported.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from medcommon.cli import require_fresh_out
from medcommon.config import config_to_dict, resolve_config
from medcommon.errors import InputError
from medcommon.fs import write_json_atomic
from medcommon.run import write_run_config
from smg_learning.config import RunConfig, run_preset, with_smd_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.replay import real_memory, resize_pairs, smd_memory, train_smd_stage
from smg_learning.run_io import open_run, write_run_header
from smg_learning.strategies import STRATEGIES

#: config fields that ``--set`` may change when resuming (step counts and cadences)
RESUMABLE = ("steps_per_site", "smd.train_steps", "checkpoint_every", "log_every")


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def train_run(
    out: Path,
    data_dir: Path,
    *,
    method: str | None = None,
    seed: int | None = None,
    preset: str = "tiny",
    config_file: Path | None = None,
    overrides: Sequence[str] = (),
    sites: Sequence[str] = (),
    heldout: Sequence[str] = (),
    resume: bool = False,
    checkpoint_every: int | None = None,
    smd_from: Path | None = None,
    device: str = "cpu",
    quiet: bool = True,
    select_pga: bool = False,
    smd_preset: str | None = None,
) -> dict[str, Any]:
    """Train (or, with ``resume`` and an existing run, continue) one run; returns its metrics.

    ``smd_preset``: a name in :data:`smg_learning.config.SMD_PRESETS` whose fields
    replace those of the preset's ``smd`` section (before ``config_file`` and ``overrides``; new runs only).

    ``method`` and ``seed`` default to ``smg`` and 0 for a new run; on resume they,
    the sites and the split are the run's, and a different value given is an error.
    """
    out = Path(out)
    if resume and (out / "config.json").is_file():
        saved = open_run(out)
        info = saved.run.info
        for flag, given, have in (
            ("--method", method, info.method),
            ("--seed", seed, info.seed),
            ("--sites", tuple(sites) or None, tuple(saved.sites)),
            ("--heldout", tuple(heldout) or None, tuple(saved.heldout)),
        ):
            if given is not None and given != have:
                raise InputError(flag, f"the run was trained with {have!r}, not {given!r}")
        method, seed = info.method, info.seed
        STRATEGIES.get(method)
        cfg = resolve_config(RunConfig, base=saved.cfg, file=config_file, overrides=overrides)
        old, new = _flat(config_to_dict(saved.cfg)), _flat(config_to_dict(cfg))
        changed = sorted(k for k in new if new[k] != old.get(k))
        fixed = [k for k in changed if k not in RESUMABLE]
        if fixed:
            raise InputError(
                f"--set {fixed[0]}",
                f"cannot change a resumed run's setting (only {', '.join(RESUMABLE)})",
            )
        data = load_continual(data_dir, cfg, saved.sites, saved.heldout, split=saved.split)
        if changed:  # the config now says how far the run goes
            write_run_config(out, info, cfg)
    else:
        method = method or "smg"
        seed = 0 if seed is None else seed
        STRATEGIES.get(method)
        require_fresh_out(out)
        base = with_smd_preset(run_preset(preset), smd_preset)
        cfg = resolve_config(RunConfig, base=base, file=config_file, overrides=overrides)
        data = load_continual(data_dir, cfg, tuple(sites), tuple(heldout))
        if smd_from is not None and not (Path(smd_from) / "smd_stages").is_dir():
            raise InputError(smd_from, "not a run with SMD stages (no smd_stages/)")
        selection = None
        if select_pga:
            from smg_learning.select import apply_choice
            from smg_learning.select import select_pga as select

            selection = select(data, cfg, method=method, seed=seed, device=device)
            cfg = apply_choice(cfg, selection["choice"])
        # all input is valid: only now is the run folder created
        cfg = write_run_header(
            out, cfg, data, method=method, seed=seed, preset=preset, data_dir=data_dir
        )
        if selection is not None:
            write_json_atomic(out / "pga_selection.json", selection)
    return train_continual(
        data,
        cfg,
        method,
        out,
        seed=seed,
        device=device,
        quiet=quiet,
        resume=resume,
        checkpoint_every=checkpoint_every,
        smd_from=smd_from,
    )


__all__ = [
    "RESUMABLE",
    "real_memory",
    "resize_pairs",
    "smd_memory",
    "train_continual",
    "train_run",
    "train_smd_stage",
    "write_run_header",
]
