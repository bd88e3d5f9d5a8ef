"""Choosing PGA's α, estimator and virtual step on inner validation, never on test sites.

An experiment (issue #12), not part of the package: ``run.py`` beside this file runs the
benchmark with an ``smg-select`` row trained with the choice (``../demo-pga/``).

:func:`select_pga` carves a validation split from each training site's *training*
cases (patient-level, seeded), trains the PGA strategy over the training sites in
order on the rest, once per grid point, and picks the point with the best validation
memorizability: the mean validation Dice over the training sites after the last stage.
Only ``data.parts["train"]`` of the training sites is read; the test slices and the
held-out sites are never touched (a test swaps them for NaNs and gets the same choice).
The grid includes ``α = 0`` (the re-weighted replay without alignment), so the
selection may decide that alignment does not help. Ties go to the earlier grid point.

For the SMD strategy (``smg``) the SMD is trained once, by the first grid point, on
the same inner training split, and reused by the others (``smd_from``).
"""

from __future__ import annotations

import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from medcommon.config import replace_nested
from medcommon.errors import InputError
from smg_learning.config import RunConfig
from smg_learning.continual import train_continual
from smg_learning.data import ContinualData, validation_data
from smg_learning.strategies import STRATEGIES


@dataclass(frozen=True)
class PGAChoice:
    """One grid point: the ``pga`` fields it sets."""

    inner_lr: float
    estimator: str = "first_order"
    virtual_step: str = "sgd"


#: The grid committed with the selection (17f72cd), before any test-site result of a grid
#: point was seen: α = 0, then α in (0.01, 0.1) for each estimator that needs first
#: derivatives only and each virtual step (13 points). The default (issue #22).
PGA_GRID_PREREGISTERED: tuple[PGAChoice, ...] = (
    PGAChoice(0.0),
    *(
        PGAChoice(a, e, v)
        for a in (0.01, 0.1)
        for e in ("first_order", "symmetric")
        for v in ("sgd", "adam", "normalized")
    ),
)

#: α per virtual step of the later grid. **Post hoc:** set 16 s after
#: ``benchmarks/alignment_shares.json`` was committed (a38b64e, 5126644), and that file
#: holds the test-site memorizability of six grid points; kept so that the committed
#: ``benchmarks/demo-pga/`` run, which used it, can be reproduced and compared.
GRID_ALPHAS_POST_HOC: dict[str, tuple[float, ...]] = {
    "sgd": (0.01, 0.1, 1.0),
    "adam": (0.001, 0.01),
    "normalized": (0.001, 0.01),
}
#: α = 0, then each estimator with each virtual step at its α values (15 points)
PGA_GRID_POST_HOC: tuple[PGAChoice, ...] = (
    PGAChoice(0.0),
    *(
        PGAChoice(a, e, v)
        for e in ("first_order", "symmetric")
        for v, alphas in GRID_ALPHAS_POST_HOC.items()
        for a in alphas
    ),
)
#: the grids by name (``run.py --grid``)
GRIDS: dict[str, tuple[PGAChoice, ...]] = {
    "preregistered": PGA_GRID_PREREGISTERED,
    "post_hoc": PGA_GRID_POST_HOC,
}
PGA_GRID = PGA_GRID_PREREGISTERED


def select_pga(
    data: ContinualData,
    cfg: RunConfig,
    *,
    method: str = "smg",
    grid: tuple[PGAChoice, ...] = PGA_GRID,
    seed: int = 0,
    val_fraction: float = 0.25,
    device: str = "cpu",
) -> dict[str, Any]:
    """Train ``method`` once per grid point on the inner split; return the best point.

    Returns ``{"choice": {...pga fields}, "scores": [{...fields, "val_memorizability"}],
    "val_fraction", "method", "seed"}``; apply the choice with :func:`apply_choice`.
    """
    if not getattr(STRATEGIES.get(method), "uses_pga", False):
        raise InputError("--method", f"{method!r} does not use PGA; nothing to select")
    if not grid:
        raise InputError("grid", "empty")
    inner = validation_data(data, val_fraction, seed)
    scores = []
    with tempfile.TemporaryDirectory(prefix="smg-select-") as tmp:
        smd_from = None
        for k, choice in enumerate(grid):
            run_dir = Path(tmp) / f"point-{k}"
            run_dir.mkdir()
            m = train_continual(
                inner,
                apply_choice(cfg, choice),
                method,
                run_dir,
                seed=seed,
                device=device,
                smd_from=smd_from,
                train_last_smd=False,
            )
            if STRATEGIES.get(method).replay == "smd" and smd_from is None:
                smd_from = run_dir  # the SMD config is the same at every grid point
            scores.append({**asdict(choice), "val_memorizability": m["memorizability"]})
    best = max(range(len(grid)), key=lambda i: (scores[i]["val_memorizability"], -i))
    return {
        "choice": asdict(grid[best]),
        "scores": scores,
        "method": method,
        "seed": seed,
        "val_fraction": val_fraction,
    }


def apply_choice(cfg: RunConfig, choice: PGAChoice | dict[str, Any]) -> RunConfig:
    """``cfg`` with the grid point's ``pga`` fields."""
    fields = asdict(choice) if isinstance(choice, PGAChoice) else dict(choice)
    return replace_nested(cfg, pga=fields)
