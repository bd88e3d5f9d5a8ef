"""A toy regression run on medcommon.train, driven by the loop tests (also under torchrun).

``--kill-at S`` sends SIGKILL to this process at the start of step S, like a
machine failure: nothing gets the chance to clean up.
"""

from __future__ import annotations

import argparse
import os
import signal

import torch
from torch.utils.data import TensorDataset

from medcommon.train import TrainConfig, Trainer, seed_everything


class ToyNet(torch.nn.Module):
    def __init__(self, width: int = 32, dropout: float = 0.0) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, width),
            torch.nn.Tanh(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(width, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def make_data(n: int = 256) -> TensorDataset:
    gen = torch.Generator().manual_seed(123)
    x = torch.randn(n, 8, generator=gen)
    y = torch.sin(x[:, :1] * 2) + x[:, 1:2] * x[:, 2:3]
    return TensorDataset(x, y)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=40)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--accum", type=int, default=1)
    p.add_argument("--checkpoint-every", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--kill-at", type=int, default=-1)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args()

    seed_everything(0)
    data = make_data()
    model = ToyNet(dropout=args.dropout)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=15, gamma=0.5)

    def step(m, batch, ctx):
        if ctx.step == args.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
        x, y = batch
        return torch.nn.functional.mse_loss(m(x), y)

    def evaluate(m):
        x, y = data.tensors
        return {"mse": torch.nn.functional.mse_loss(m(x), y).item()}

    cfg = TrainConfig(
        max_steps=args.steps,
        batch_size=args.batch,
        grad_accum_steps=args.accum,
        checkpoint_every=args.checkpoint_every,
        eval_every=10,
        log_every=5,
        max_grad_norm=1.0,
    )
    trainer = Trainer(
        model,
        opt,
        data,
        step,
        config=cfg,
        run_dir=args.out,
        seed=7,
        eval_fn=evaluate,
        model_config={"width": 32, "dropout": args.dropout},
        scheduler=sched,
        device="cpu",
        quiet=True,
    )
    trainer.fit(resume=args.resume)


if __name__ == "__main__":
    main()
