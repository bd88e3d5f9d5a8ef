"""FSDP: the accelerate config for 7B, and 2 sharded CPU processes (gloo) equal to 1.

Accelerate only builds an FSDP accelerator on a GPU (with ``use_cpu`` it falls back to
DDP, without a GPU to a single process: checked, accelerate 1.15), so the 2-process
check shards the tiny Llava with torch's FSDP2 ``fully_shard`` directly, by the wrap
classes read from the same yaml (``unlearn_bench.scale.shard``, the rule accelerate's
TRANSFORMER_BASED_WRAP applies), and trains NPO with the package's loss for 3 steps.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from medai_testkit import run_torchrun

pytestmark = pytest.mark.ddp

CONFIG = Path(__file__).parents[1] / "configs" / "accelerate" / "fsdp.yaml"
WORKER = Path(__file__).with_name("fsdp_worker.py")
LAYERS = ["LlamaDecoderLayer", "CLIPEncoderLayer"]


def test_config_parses_as_fsdp_full_shard():
    from accelerate.commands.config.config_args import load_config_from_file

    from unlearn_bench.scale import fsdp_layer_names

    cfg = load_config_from_file(str(CONFIG))
    assert str(cfg.distributed_type) in ("FSDP", "DistributedType.FSDP")
    assert cfg.fsdp_config["fsdp_version"] == 2 and cfg.fsdp_config["fsdp_reshard_after_forward"]
    assert fsdp_layer_names(CONFIG) == LAYERS


def test_wrap_policy_picks_the_decoder_and_encoder_layers(tiny_run):
    from unlearn_bench.model import load_llava
    from unlearn_bench.scale import fsdp_layer_names, fsdp_units

    model, _ = load_llava(tiny_run)
    units = fsdp_units(model, fsdp_layer_names(CONFIG))
    text, vision = model.config.text_config, model.config.vision_config
    assert len(units) == text.num_hidden_layers + vision.num_hidden_layers
    assert {n.rsplit(".", 1)[0] for n, _ in units} == {
        "model.language_model.layers",
        "model.vision_tower.encoder.layers",
    }


def _run(nproc: int, vanilla, data, out: Path) -> dict:
    proc = run_torchrun([WORKER, vanilla, data, out, CONFIG], nproc=nproc, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads((out / "units.json").read_text())


def test_two_sharded_processes_equal_one(tiny_run, tiny_data, tmp_path):
    from safetensors.torch import load_file

    from unlearn_bench.model import load_llava

    one = _run(1, tiny_run, tiny_data, tmp_path / "one")
    two = _run(2, tiny_run, tiny_data, tmp_path / "two")
    assert one["units"] == [] and sorted(set(two["units"])) == sorted(LAYERS)
    assert two["units"].count("LlamaDecoderLayer") == 2
    # rank 0 held about half of the parameters: they were sharded, not replicated
    assert one["local_numel"] == one["full_numel"]
    assert 0.45 < two["local_numel"] / two["full_numel"] < 0.55
    a = load_file(str(tmp_path / "one" / "model.safetensors"))
    b = load_file(str(tmp_path / "two" / "model.safetensors"))
    assert a.keys() == b.keys()
    diff = max(float((a[k] - b[k]).abs().max()) for k in a)
    print(f"FSDP 2 processes vs 1: max |w1 - w2| = {diff:.1e}")  # 2.7e-6 to 8.1e-6 measured
    assert diff < 1e-4  # as test_ddp: float noise ~1e-5, a wrong token mean ~4e-3
    start = load_llava(tiny_run)[0].state_dict()
    assert {f"llava.{k}" for k in start} == set(a)
    assert max(float((a[f"llava.{k}"] - v).abs().max()) for k, v in start.items()) > 1e-3


def test_no_checkpoint_when_asked(tmp_path, monkeypatch):
    """Under FSDP (what ``accelerate launch`` exports) no checkpoint/ of shards is written."""
    import torch

    from medcommon.train import TrainConfig, Trainer
    from unlearn_bench.train import _is_fsdp

    assert not _is_fsdp()
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    assert _is_fsdp()
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    net = torch.nn.Linear(2, 1)
    data = [(torch.randn(2), torch.randn(1)) for _ in range(8)]
    for save, out in ((True, tmp_path / "a"), (False, tmp_path / "b")):
        Trainer(
            net, torch.optim.SGD(net.parameters(), lr=0.1), data,
            lambda m, b, ctx: torch.nn.functional.mse_loss(m(b[0]), b[1]),
            config=TrainConfig(max_steps=2, batch_size=4, save_checkpoints=save),
            run_dir=out, device="cpu", quiet=True,
        ).fit()  # fmt: skip
        assert (out / "checkpoint").exists() == save and (out / "log.jsonl").is_file()


LOADING_WORKER = Path(__file__).with_name("fsdp_loading_worker.py")
FSDP_ENV = {"ACCELERATE_USE_FSDP": "true", "FSDP_CPU_RAM_EFFICIENT_LOADING": "true"}


def test_only_rank_0_loads_the_weights_and_sharding_fills_the_others(tiny_run, tmp_path):
    """Item 3 of issue #24: under the shipped config's ``cpu_ram_efficient_loading``,
    ``load_llava`` reads the checkpoint on rank 0 only (rank 1 holds no parameter data),
    and accelerate's own FSDP2 broadcast then gives both ranks the checkpoint's weights."""
    proc = run_torchrun([LOADING_WORKER, tiny_run, tmp_path, CONFIG], nproc=2, timeout=300,
                        env=FSDP_ENV)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["started_by_loader"] and r1["started_by_loader"]
    assert r0["meta_params"] == 0 and r0["held_bytes"] > 0
    assert r1["meta_params"] == r1["n_params"] and r1["held_bytes"] == 0
    print(f"loaded bytes rank 0 / 1: {r0['held_bytes']} / {r1['held_bytes']}; peak RSS "
          f"{r0['peak_rss_mb']:.0f} / {r1['peak_rss_mb']:.0f} MB")  # fmt: skip
    assert r0["compared"] > 0 and r0["max_abs_diff"] == 0.0  # every weight, exactly
    assert r1["sums"] == r0["sums"]  # rank 1 gathers the same full weights
    assert r1["buffers"] == r0["buffers"] and r0["buffers"]  # built, not broadcast


def test_without_the_flag_every_rank_loads(tiny_run, tmp_path):
    """The control: accelerate's FSDP without cpu_ram_efficient_loading loads everywhere."""
    env = {**FSDP_ENV, "FSDP_CPU_RAM_EFFICIENT_LOADING": "false"}
    proc = run_torchrun([LOADING_WORKER, tiny_run, tmp_path, CONFIG], nproc=2, timeout=300,
                        env=env)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    r0, r1 = (json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1))
    assert r0["held_bytes"] == r1["held_bytes"] > 0 and r1["meta_params"] == 0
    assert r1["sums"] == r0["sums"]
