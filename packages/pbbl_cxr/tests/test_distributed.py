"""pbbl_cxr.distributed in one process: every helper is the identity (the DDP runs are test_ddp.py).

Global-batch BatchNorm is medcommon's (``medcommon.train.distributed``, tested there).
"""

from __future__ import annotations

import torch

from pbbl_cxr.distributed import all_gather_cat, all_reduce_sum, is_main_process, world_size


def test_collectives_are_the_identity_alone():
    t = torch.arange(5.0)
    assert world_size() == 1 and is_main_process()
    assert all_gather_cat(t) is t
    assert all_reduce_sum(t) is t and all_reduce_sum(t, grad=True) is t
