"""Train strategies on the tiny synthetic prostate data; run alone or under torchrun.

For each ``--methods`` entry (``NAME`` or ``NAME@exact`` for second-order PGA) rank 0
writes the final segmenter to ``OUT/<entry>/model.safetensors`` (and the SMD of the SMD
replay strategies to ``smd.safetensors``); the ddp tests compare
one process with two (``medai_testkit.run_torchrun``) at the same global batch.

Left out of the file: the bias of a convolution followed by an instance norm without
affine parameters. The norm subtracts each channel's mean, so the bias has no effect on
the output and its gradient is zero up to rounding, which Adam rescales into steps of
about ``lr`` in a random direction: those tensors differ between any two summation
orders (one process or two) without meaning anything.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from safetensors.torch import save_file
from torch import nn

from medcommon.config import replace_nested
from smg_learning.config import run_preset
from smg_learning.continual import train_continual
from smg_learning.data import load_continual
from smg_learning.distributed import world_size


def effective_weights(model: nn.Module) -> dict:
    """The state dict without biases that an instance norm cancels."""
    cancelled = {
        f"{name}.conv.bias"
        for name, m in model.named_modules()
        if isinstance(getattr(getattr(m, "adn", None), "N", None), nn.InstanceNorm2d)
        and not m.adn.N.affine
    }
    return {k: v.detach().contiguous() for k, v in model.state_dict().items() if k not in cancelled}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--methods", required=True, help="comma-separated, NAME or NAME@exact")
    p.add_argument("--steps", type=int, default=3)
    args = p.parse_args()

    # batch 4 splits 2 + 2 over two processes; one shifted copy and a meta-test
    # domain (the tiny preset's PGA settings) exercise every PGA term
    base = replace_nested(run_preset("tiny"), steps_per_site=args.steps, batch_size=4)
    data = load_continual(args.data, base, ("RUNMC", "BMC"), ())
    for entry in args.methods.split(","):
        method, _, order = entry.partition("@")
        cfg = replace_nested(base, **{"pga.estimator": order}) if order else base
        metrics = train_continual(data, cfg, method, None, seed=0, device="cpu")
        if int(os.environ.get("RANK", "0")) == 0:
            (args.out / entry).mkdir(parents=True, exist_ok=True)
            # after training: the Trainer's Accelerator has set up the process group
            (args.out / "world_size").write_text(str(world_size()))
            save_file(
                effective_weights(metrics["_model"]), str(args.out / entry / "model.safetensors")
            )
            if metrics["_smd"] is not None:
                weights = {k: v.contiguous() for k, v in metrics["_smd"].state_dict().items()}
                save_file(weights, str(args.out / entry / "smd.safetensors"))


if __name__ == "__main__":
    main()
