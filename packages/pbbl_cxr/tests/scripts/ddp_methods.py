"""Train pbbl-cxr methods with the ``tiny`` preset, alone or under torchrun (tests/test_ddp.py).

``python ddp_methods.py --data D --out O --methods erm lff`` writes, per method, the
Trainer's run folder ``O/<method>/`` (``checkpoint/<stage>/model.safetensors`` holds a
stage's final weights, ``state-*.pt`` the method's state: LfF's loss EMAs, Group DRO's
``q``) and ``O/<method>/kept.safetensors`` (the model the method returns).

``--unsynced-state`` turns off the cross-process update of the methods' state
(LfF's EMAs, Group DRO's group losses) while BatchNorm stays global: the negative
control showing that the state synchronisation is what makes 2 processes equal 1.
``--local-batchnorm M...`` likewise trains methods ``M`` with per-process BatchNorm
statistics (plain DDP).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

from safetensors.torch import save_file

import pbbl_cxr.losses
import pbbl_cxr.train
from medcommon.config import replace_nested
from pbbl_cxr.config import run_preset
from pbbl_cxr.data import DataOptions, load_split
from pbbl_cxr.distributed import is_main_process
from pbbl_cxr.methods import RunContext, run_method


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--methods", nargs="+", required=True)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--unsynced-state", action="store_true")
    p.add_argument("--local-batchnorm", nargs="*", default=[], metavar="METHOD")
    args = p.parse_args()

    if args.unsynced_state:
        pbbl_cxr.losses.world_size = lambda: 1  # LossEMA / GroupDROWeights see one process
    # 96 train images, global batch 16: 8 steps cross an epoch boundary, so the loss EMAs
    # of some samples are updated twice.
    cfg = replace_nested(run_preset("tiny"), steps=args.steps, bias_steps=args.steps)
    opts = DataOptions(image_size=cfg.model.image_size)
    train = load_split(args.data, "train", opts, quiet=True)
    valid = load_split(args.data, "valid", opts, quiet=True)
    train_config = pbbl_cxr.train.TrainConfig
    for name in args.methods:
        # the Trainer keeps plain (per-process) BatchNorm with global_batchnorm=False
        local_bn = name in args.local_batchnorm
        pbbl_cxr.train.TrainConfig = (
            functools.partial(train_config, global_batchnorm=False) if local_bn else train_config
        )
        run_dir = args.out / name
        out = run_method(name, RunContext(cfg, train, valid, run_dir=run_dir, seed=0))
        if is_main_process():
            state = {k: v.contiguous() for k, v in out.model.state_dict().items()}
            save_file(state, str(run_dir / "kept.safetensors"))


if __name__ == "__main__":
    main()
