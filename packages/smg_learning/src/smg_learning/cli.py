"""The ``smg-learning`` console script: a thin layer over the library.

Commands: ``synth``, ``train``, ``evaluate``, ``sample``, ``benchmark`` (see the README).
Every input is validated before anything is written; bad input is one
``error: <where>: <problem>`` line and exit code 2.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from medcommon.cli import (
    add_benchmark_args,
    add_evaluate_args,
    add_synth_args,
    add_train_args,
    make_parser,
    require_fresh_out,
    run_main,
    subparsers,
)
from medcommon.config import check_preset, resolve_config
from medcommon.errors import InputError
from smg_learning import __version__
from smg_learning.config import RunConfig, run_preset
from smg_learning.strategies import STRATEGIES


def _names(text: str | None, flag: str) -> tuple[str, ...]:
    if text is None:
        return ()
    names = tuple(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise InputError(flag, "expected a comma-separated list of site names")
    return names


def _print_matrix(metrics: dict) -> None:
    cols = metrics["columns"]
    width = max(8, *(len(c) for c in cols))
    print("stage".ljust(18) + "".join(c.rjust(width + 1) for c in cols))
    for name, row in zip(metrics["stages"], metrics["dice_matrix"]):
        print(name.ljust(18) + "".join(f"{v:.3f}".rjust(width + 1) for v in row))
    print(
        f"memorizability {metrics['memorizability']:.3f}  generalizability "
        f"{metrics['generalizability']:.3f}  bwt {metrics['bwt']:+.3f}  hd95 {metrics['hd95']:.2f}"
    )


def cmd_synth(args) -> int:
    from smg_learning.synth import generate

    check_preset(args.preset)
    out = generate(
        args.out,
        task=args.task,
        preset=args.preset,
        seed=args.seed,
        num_sites=args.sites,
        quiet=args.quiet,
    )
    print(f"wrote synthetic {args.task} data to {out}")
    return 0


def cmd_train(args) -> int:
    from medcommon.train.accelerator import resolve_device
    from smg_learning.continual import train_continual
    from smg_learning.data import load_continual
    from smg_learning.run_io import load_run, read_run_info, write_run_header

    check_preset(args.preset)
    device = resolve_device(args.device)
    sites, heldout = _names(args.sites, "--sites"), _names(args.heldout, "--heldout")
    if args.resume and (args.out / "config.json").is_file():
        # resuming: config, sites, split, method and seed come from the run folder
        cfg, sites_, heldout_, split = load_run(args.out)
        info = read_run_info(args.out)
        for flag, given, saved in (
            ("--method", args.method, info.get("method")),
            ("--seed", args.seed, info.get("seed")),
        ):
            if given is not None and given != saved:
                raise InputError(flag, f"the run was trained with {saved!r}, not {given!r}")
        args.method, args.seed = info.get("method"), info.get("seed")
        STRATEGIES.get(args.method)
        data = load_continual(args.data, cfg, sites_, heldout_, split=split)
    else:
        args.method = args.method or "smg"
        args.seed = 0 if args.seed is None else args.seed
        STRATEGIES.get(args.method)
        require_fresh_out(args.out)
        cfg = resolve_config(
            RunConfig, base=run_preset(args.preset), file=args.config, overrides=args.overrides
        )
        data = load_continual(args.data, cfg, sites, heldout)
        if args.smd_from is not None and not (args.smd_from / "smd_stages").is_dir():
            raise InputError(args.smd_from, "not a run with SMD stages (no smd_stages/)")
        # all input is valid: only now is the run folder created
        args.out.mkdir(parents=True, exist_ok=True)
        write_run_header(args.out, cfg, data, args.method, args.seed, args.preset)
    metrics = train_continual(
        data,
        cfg,
        args.method,
        args.out,
        seed=args.seed,
        device=device,
        quiet=args.quiet,
        resume=args.resume,
        checkpoint_every=args.checkpoint_every,
        smd_from=args.smd_from,
    )
    if not args.quiet:
        _print_matrix(metrics)
    print(f"wrote {args.out}")
    return 0


def cmd_evaluate(args) -> int:
    from medcommon.train.accelerator import resolve_device
    from smg_learning.evaluate import evaluate_run

    result = evaluate_run(args.run, args.data, args.split, resolve_device(args.device))
    if not args.quiet:
        _print_matrix(result)
    print(f"wrote {args.run / f'eval-{args.split}.json'}")
    return 0


def cmd_sample(args) -> int:
    import numpy as np
    import torch

    from medcommon.fs import atomic_dir, write_json_atomic
    from medcommon.io import write_image
    from medcommon.models import from_pretrained
    from medcommon.train.accelerator import resolve_device
    from smg_learning.replay import resize_pairs
    from smg_learning.run_io import load_run
    from smg_learning.smd import SiteModulatedDiffusion

    smd_dir = args.run / "smd"
    if not (smd_dir / "model.safetensors").is_file():
        raise InputError(
            args.run, "no SMD model in this run (train with --method smg or smd-replay)"
        )
    if args.n < 1:
        raise InputError("--n", "must be >= 1")
    if args.steps < 1:
        raise InputError("--steps", "must be >= 1")
    if args.sampler not in ("ddim", "ddpm"):
        raise InputError("--sampler", f"unknown sampler {args.sampler!r}; choose ddim or ddpm")
    require_fresh_out(args.out, "output folder", "choose another --out")
    device = resolve_device(args.device)
    smd = from_pretrained(SiteModulatedDiffusion, smd_dir).to(device)
    k = smd.site_index(args.site)
    cfg = load_run(args.run)[0] if (args.run / "config.json").is_file() else None
    g = torch.Generator().manual_seed(args.seed)
    images, masks = smd.sample(
        torch.full((args.n,), k, dtype=torch.long),
        steps=args.steps,
        sampler=args.sampler,
        generator=g,
        mask_threshold=cfg.smd.mask_threshold if cfg else 0.0,
    )
    if cfg is not None:  # at the segmenter's resolution, as replayed
        images, masks = resize_pairs(images, masks, cfg.image_size)
    with atomic_dir(args.out) as tmp:
        for i in range(args.n):
            img = images[i].numpy()
            img = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            write_image(
                tmp / "image" / f"{args.site}_{i:04d}.png", np.round(img * 255).astype(np.uint8)
            )
            write_image(
                tmp / "mask" / f"{args.site}_{i:04d}.png",
                (masks[i, 0].numpy() * 255).astype(np.uint8),
            )
        write_json_atomic(
            tmp / "sample.json",
            {
                "run": str(args.run),
                "site": args.site,
                "n": args.n,
                "sampler": args.sampler,
                "steps": args.steps if args.sampler == "ddim" else smd.config.num_train_timesteps,
                "seed": args.seed,
            },
        )
    print(f"wrote {args.n} image/mask pairs to {args.out}")
    return 0


def cmd_benchmark(args) -> int:
    from medcommon.train.accelerator import resolve_device
    from smg_learning.benchmark import run_benchmark

    check_preset(args.preset)
    methods = list(_names(args.methods, "--methods")) if args.methods else STRATEGIES.names()
    for m in methods:
        STRATEGIES.get(m)
    if not args.seeds:
        raise InputError("--seeds", "give at least one seed")
    run_benchmark(
        args.out,
        preset=args.preset,
        seeds=args.seeds,
        data=args.data,
        task=args.task,
        methods=methods,
        device=resolve_device(args.device),
        quiet=args.quiet,
        sites=_names(args.sites, "--sites"),
        heldout=_names(args.heldout, "--heldout"),
    )
    print(f"wrote {args.out / 'results.json'}, {args.out / 'report.md'} and plots")
    return 0


def build_parser():
    parser = make_parser(
        "smg-learning",
        "Continual segmentation across sites: SMG-Learning (PGA + site-modulated diffusion replay) "
        "and its baselines.",
        __version__,
    )
    sub = subparsers(parser)
    p = sub.add_parser("synth", help="write a synthetic multi-site dataset in the public layout")
    add_synth_args(p)
    p.add_argument(
        "--task",
        default="prostate",
        choices=["prostate", "fundus"],
        help="layout (default prostate)",
    )
    p.add_argument("--sites", type=int, default=None, help="number of sites (default: preset)")
    p.set_defaults(handler=cmd_synth)

    p = sub.add_parser("train", help="train one strategy over the sites in sequence")
    add_train_args(p, STRATEGIES.names(), "smg")
    # no silent defaults for these two, so --resume can take them from the run folder
    p.set_defaults(method=None, seed=None)
    p.add_argument(
        "--sites", default=None, help="training order, e.g. RUNMC,BMC,I2CVB (default: all)"
    )
    p.add_argument("--heldout", default=None, help="sites never trained on, e.g. BIDMC,HK")
    p.add_argument(
        "--smd-from", type=Path, default=None, help="reuse the SMD stages of another run"
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("evaluate", help="recompute the stage x site Dice matrix of a run")
    add_evaluate_args(p)
    p.set_defaults(handler=cmd_evaluate)

    p = sub.add_parser(
        "sample", help="generate image/mask PNG pairs of one site with the run's SMD"
    )
    p.add_argument("--run", type=Path, required=True, help="a run trained with smg or smd-replay")
    p.add_argument("--site", required=True, help="site name (its prompt)")
    p.add_argument("--n", type=int, default=8, help="number of pairs (default 8)")
    p.add_argument("--out", type=Path, required=True, help="folder for image/ and mask/ PNGs")
    p.add_argument("--steps", type=int, default=50, help="DDIM steps (default 50)")
    p.add_argument("--sampler", default="ddim", help="ddim or ddpm (all training timesteps)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default auto)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=cmd_sample)

    p = sub.add_parser("benchmark", help="all strategies over seeds, plus cost ratios")
    add_benchmark_args(p)
    p.add_argument(
        "--task", default="prostate", choices=["prostate", "fundus"], help="synthetic task"
    )
    p.add_argument("--methods", default=None, help="comma-separated subset of strategies")
    p.add_argument("--sites", default=None, help="training order (default: preset's)")
    p.add_argument("--heldout", default=None, help="held-out sites (default: preset's)")
    p.set_defaults(handler=cmd_benchmark)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.handler(args)


def entry() -> None:
    """Console-script entry point."""
    raise SystemExit(run_main(main))


__all__ = ["build_parser", "entry", "main"]
