"""Train one strategy on the tiny synthetic prostate data; run alone or under torchrun.

Rank 0 writes the final segmenter weights to ``OUT/model.safetensors``; the ddp tests
compare one process with two (``medcommon.testing.run_torchrun``) at the same global batch.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from safetensors.torch import save_file

from smg_learning.config import preset_config
from smg_learning.data import load_continual
from smg_learning.train import train_continual


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--method", required=True)
    p.add_argument("--steps", type=int, default=4)
    args = p.parse_args()

    from medcommon.config import replace_nested

    # shifted_copies and meta-test split exercise every PGA term; batch 4 splits 2 + 2
    cfg = replace_nested(preset_config("tiny"), steps_per_site=args.steps, batch_size=4)
    data = load_continual(args.data, cfg, ("RUNMC", "BMC"), ())
    metrics = train_continual(data, cfg, args.method, None, seed=0, device="cpu")
    if int(os.environ.get("RANK", "0")) == 0:
        args.out.mkdir(parents=True, exist_ok=True)
        model = metrics["_model"]
        save_file(
            {k: v.detach().contiguous() for k, v in model.state_dict().items()},
            str(args.out / "model.safetensors"),
        )


if __name__ == "__main__":
    main()
