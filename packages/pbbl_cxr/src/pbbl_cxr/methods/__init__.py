"""The methods, one module each, registered in :data:`METHODS` on import.

=============  ===================================================================
``erm``         cross-entropy (:mod:`.erm`).
``gce``         the biased model alone: GCE (q) on the labels, final weights kept (:mod:`.gce`).
``lff``         Learning from Failure (Nam et al. 2020): GCE biased + reweighted CE (:mod:`.lff`).
``groupdro``    online Group DRO over the true (label, bias) groups, oracle (:mod:`.groupdro`).
``bbs-oracle``  bias-balanced softmax with the true bias labels, oracle (:mod:`.bbs_oracle`).
``pbbl``        pseudo bias-balanced learning (Luo et al. 2022): GCE rounds ->
                Youden pseudo bias labels -> prior p(y | b_hat) -> bias-balanced softmax
                (:mod:`.pbbl`).
=============  ===================================================================

Adding a method: a module with a step function and a ``run(ctx)`` function composing
:func:`~.base.run_stage` calls, decorated with :func:`~.base.register_method`, and one
import line below.
"""

from __future__ import annotations

from pbbl_cxr.methods.base import (
    METHODS,
    Method,
    MethodOutput,
    RunContext,
    fresh_model,
    register_method,
    run_method,
    run_single,
    run_stage,
)

# The import order is the registry's order (the CLI's and the benchmark's method order).
# isort: off
from pbbl_cxr.methods.erm import erm_step, run_erm
from pbbl_cxr.methods.gce import make_gce_step, run_gce
from pbbl_cxr.methods.lff import make_lff_step, run_lff
from pbbl_cxr.methods.groupdro import make_groupdro_step, run_groupdro
from pbbl_cxr.methods.bbs_oracle import make_bbs_step, run_bbs_oracle
from pbbl_cxr.methods.pbbl import pseudo_label_rounds, run_pbbl

# isort: on

__all__ = [
    "METHODS",
    "Method",
    "MethodOutput",
    "RunContext",
    "erm_step",
    "fresh_model",
    "make_bbs_step",
    "make_gce_step",
    "make_groupdro_step",
    "make_lff_step",
    "pseudo_label_rounds",
    "register_method",
    "run_bbs_oracle",
    "run_erm",
    "run_gce",
    "run_groupdro",
    "run_lff",
    "run_method",
    "run_pbbl",
    "run_single",
    "run_stage",
]
