"""The training loop: learning, resume after SIGKILL, accumulation, selection, saving."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch.utils.data import TensorDataset

from medai_testkit import run_torchrun
from medcommon.errors import Diverged, InputError
from medcommon.train import EpochBatchSampler, TrainConfig, Trainer, seed_everything

SCRIPT = Path(__file__).parent / "scripts" / "toy_train.py"
sys.path.insert(0, str(SCRIPT.parent))
from toy_train import ToyNet, make_data  # noqa: E402


def _run(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=env
    )


def _mse_step(m, batch, ctx):
    x, y = batch
    return torch.nn.functional.mse_loss(m(x), y)


def test_loss_falls_on_a_learnable_problem(tmp_path):
    seed_everything(0)
    data = make_data()
    model = ToyNet()
    x, y = data.tensors
    before = torch.nn.functional.mse_loss(model(x), y).item()
    trainer = Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        data,
        _mse_step,
        config=TrainConfig(max_steps=200, batch_size=32, log_every=50),
        run_dir=tmp_path,
        quiet=True,
    )
    trainer.fit()
    after = torch.nn.functional.mse_loss(model(x), y).item()
    assert after < 0.2 * before
    lines = [json.loads(s) for s in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in lines] == [50, 100, 150, 200]
    assert lines[-1]["loss"] < lines[0]["loss"]


def test_resume_after_sigkill_equals_uninterrupted_run(tmp_path):
    full, killed = tmp_path / "full", tmp_path / "killed"
    assert _run("--out", str(full)).returncode == 0
    crash = _run("--out", str(killed), "--kill-at", "27")
    assert crash.returncode == -signal.SIGKILL
    state = json.loads((killed / "checkpoint" / "trainer_state.json").read_text())
    assert state["step"] == 20  # the last checkpoint before the kill
    assert not (killed / "model").exists()  # no finished-looking model after a crash
    resumed = _run("--out", str(killed), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = load_file(full / "checkpoint" / "model.safetensors")
    b = load_file(killed / "checkpoint" / "model.safetensors")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), (
            k
        )  # dropout RNG, batch order, optimizer, scheduler all restored
    log_full = (full / "log.jsonl").read_text().splitlines()
    log_resumed = (killed / "log.jsonl").read_text().splitlines()
    strip = [{k: v for k, v in json.loads(s).items() if k != "elapsed"} for s in log_full]
    strip_r = [{k: v for k, v in json.loads(s).items() if k != "elapsed"} for s in log_resumed]
    assert strip == strip_r  # no duplicated or missing log lines


def test_gradient_accumulation_matches_one_big_batch(tmp_path):
    outs = []
    for accum in (1, 4):
        run = tmp_path / f"acc{accum}"
        assert (
            _run(
                "--out", str(run), "--accum", str(accum), "--dropout", "0", "--steps", "20"
            ).returncode
            == 0
        )
        outs.append(load_file(run / "checkpoint" / "model.safetensors"))
    for k in outs[0]:
        torch.testing.assert_close(outs[0][k], outs[1][k], rtol=1e-5, atol=1e-6)


def test_batch_order_is_a_function_of_seed_and_step():
    s = EpochBatchSampler(100, 10, seed=3)
    assert s.global_batch(13) == EpochBatchSampler(100, 10, seed=3).global_batch(13)
    epoch = [i for step in range(10) for i in s.global_batch(step)]
    assert sorted(epoch) == list(range(100))  # each epoch is a permutation
    assert s.global_batch(0) != s.global_batch(10)  # epochs reshuffle
    # Two processes split each micro-batch without overlap and cover it.
    shards = [s.micro_batches(5, 2, r, 2) for r in range(2)]
    merged = [i for a in range(2) for r in range(2) for i in shards[r][a]]
    assert merged == s.global_batch(5)


def test_weighted_sampling_balances_classes():
    labels = torch.tensor([0] * 90 + [1] * 10)
    weights = torch.where(labels == 1, 9.0, 1.0)
    s = EpochBatchSampler(100, 50, seed=0, weights=weights)
    drawn = torch.tensor([i for step in range(40) for i in s.global_batch(step)])
    share = (labels[drawn] == 1).float().mean().item()
    assert 0.45 < share < 0.55


def test_bad_loop_settings_are_input_errors():
    data = TensorDataset(torch.zeros(10, 8), torch.zeros(10, 1))
    model = ToyNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(InputError, match="batch_size"):
        Trainer(model, opt, data, _mse_step, config=TrainConfig(batch_size=20), quiet=True)
    with pytest.raises(InputError, match="--device"):
        Trainer(
            model, opt, data, _mse_step, config=TrainConfig(batch_size=5), device="tpu", quiet=True
        )
    empty = TensorDataset(torch.zeros(0, 8), torch.zeros(0, 1))
    with pytest.raises(InputError, match="dataset: is empty"):
        Trainer(model, opt, empty, _mse_step, config=TrainConfig(batch_size=5), quiet=True)


def test_nan_loss_stops_the_run():
    data = TensorDataset(torch.full((8, 8), float("nan")), torch.zeros(8, 1))
    model = ToyNet()
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data,
        _mse_step,
        config=TrainConfig(max_steps=3, batch_size=4),
        quiet=True,
    )
    with pytest.raises(Diverged, match="loss is nan at step 1; lower the learning rate"):
        trainer.fit()


def test_a_loss_that_explodes_is_a_divergence_and_the_bound_is_relative_to_its_start():
    seed_everything(0)
    data = make_data()

    def trainer(lr: float, growth: float | None) -> Trainer:
        model = ToyNet()
        return Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=lr),
            data,
            _mse_step,
            config=TrainConfig(max_steps=30, batch_size=16, max_loss_growth=growth),
            quiet=True,
        )

    with pytest.raises(Diverged, match=r"more than 100 x its start") as info:
        trainer(lr=5.0, growth=100.0).fit()  # SGD at lr 5 on an MSE: the loss explodes
    assert isinstance(info.value, InputError)  # bad input: exit 2, one line
    trainer(lr=0.05, growth=100.0).fit()  # a sane rate stays within the same bound
    with pytest.raises(Diverged, match="loss is (inf|nan)"):
        trainer(lr=5.0, growth=None).fit()  # no bound: only the non-finite loss stops it


def test_checkpoints_hold_no_pickle_and_refuse_one(tmp_path):
    from medcommon.train.checkpoint import load_checkpoint

    seed_everything(0)
    model = ToyNet()
    Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=0.01),
        make_data(),
        _mse_step,
        config=TrainConfig(max_steps=4, batch_size=16, checkpoint_every=2),
        run_dir=tmp_path,
        quiet=True,
    ).fit()
    ckpt = tmp_path / "checkpoint"
    names = sorted(p.name for p in ckpt.iterdir())
    assert names == sorted(
        ["model.safetensors", "optimizer.json", "optimizer.safetensors", "rng.json",
         "rng.safetensors", "trainer_state.json"]
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=None, extra={})
    assert opt.state_dict()["param_groups"][0]["betas"] == (0.9, 0.999)
    torch.save({"state": {}}, ckpt / "optimizer.pt")  # what an earlier version wrote
    with pytest.raises(InputError, match=r"optimizer.pt: pickled training state"):
        load_checkpoint(ckpt, model=model, optimizer=opt, scheduler=None, extra={})


def test_state_files_round_trip_what_pickle_held(tmp_path):
    from medcommon.train.statefile import load_state, save_state

    t = torch.arange(6.0).reshape(2, 3)
    state = {
        "state": {0: {"step": torch.tensor(3.0), "exp_avg": t}, 1: {"v": t[0]}},
        "param_groups": [{"lr": 1e-3, "betas": (0.9, 0.999), "params": [0, 1], "x": None}],
        "ema": float("nan"),
        "flags": [True, "a", -1],
    }
    save_state(state, tmp_path / "s")
    back = load_state(tmp_path / "s")
    assert back["param_groups"] == state["param_groups"] and back["flags"] == state["flags"]
    assert list(back["state"]) == [0, 1] and torch.equal(back["state"][0]["exp_avg"], t)
    assert torch.equal(back["state"][1]["v"], t[0]) and back["ema"] != back["ema"]
    (tmp_path / "s.safetensors").unlink()
    with pytest.raises(InputError, match="training state file missing"):
        load_state(tmp_path / "s")


@pytest.mark.ddp
def test_two_process_ddp_equals_one_process(tmp_path):
    """torchrun with 2 CPU processes (gloo) gives the weights of 1 process at the same global batch."""
    one, two = tmp_path / "one", tmp_path / "two"
    assert _run("--out", str(one), "--dropout", "0", "--steps", "20").returncode == 0
    proc = run_torchrun([SCRIPT, "--out", two, "--dropout", "0", "--steps", "20"], timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    state = json.loads((two / "checkpoint" / "trainer_state.json").read_text())
    assert state["num_processes"] == 2
    a = load_file(one / "checkpoint" / "model.safetensors")
    b = load_file(two / "checkpoint" / "model.safetensors")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-5, atol=1e-6)


def test_run_torchrun_retries_a_transport_failure_only(monkeypatch):
    """A launch killed in gloo's transport is retried on a fresh port; a script's own failure is not."""
    first_stderr, calls = "", []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if len(calls) == 1:
            return subprocess.CompletedProcess(cmd, 1, "", first_stderr)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(subprocess, "run", fake_run)
    first_stderr = "terminate called after throwing an instance of 'gloo::IoException'"
    assert run_torchrun(["x.py"]).returncode == 0 and len(calls) == 2
    calls.clear()
    first_stderr = "ValueError: the script's own bug"
    assert run_torchrun(["x.py"]).returncode == 1 and len(calls) == 1


def _fit_toy(device: str, precision: str, tmp_path) -> tuple[float, float]:
    seed_everything(0)
    data = make_data()
    model = ToyNet()
    x, y = data.tensors
    before = torch.nn.functional.mse_loss(model(x), y).item()
    cfg = TrainConfig(max_steps=150, batch_size=32, mixed_precision=precision)
    Trainer(
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        data,
        _mse_step,
        config=cfg,
        run_dir=tmp_path,
        device=device,
        quiet=True,
    ).fit()
    model = model.cpu().float()
    return before, torch.nn.functional.mse_loss(model(x), y).item()


def test_bf16_autocast_on_cpu_still_learns(tmp_path):
    before, after = _fit_toy("cpu", "bf16", tmp_path)
    assert after < 0.3 * before


def test_fp16_is_refused_on_cpu():
    data = TensorDataset(torch.zeros(8, 8), torch.zeros(8, 1))
    model = ToyNet()
    with pytest.raises(InputError, match="mixed_precision: fp16 needs CUDA"):
        Trainer(
            model,
            torch.optim.SGD(model.parameters(), lr=0.1),
            data,
            _mse_step,
            config=TrainConfig(batch_size=4, mixed_precision="fp16"),
            device="cpu",
            quiet=True,
        )


@pytest.mark.gpu
def test_fp16_on_cuda_learns(tmp_path):
    before, after = _fit_toy("cuda", "fp16", tmp_path)
    assert after < 0.3 * before


def test_train_seconds_exclude_evaluation(tmp_path):
    import time as _time

    seed_everything(0)
    data = make_data()
    model = ToyNet()

    def slow_eval(m):
        _time.sleep(0.2)
        return {"x": 0.0}

    result = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.01),
        data,
        _mse_step,
        config=TrainConfig(max_steps=10, batch_size=16, eval_every=2),
        eval_fn=slow_eval,
        quiet=True,
    ).fit()
    assert result.eval_seconds >= 5 * 0.2  # 4 periodic evaluations + the final one
    assert result.train_seconds < 0.5


# -- BatchNorm over the global batch (medcommon.train.distributed) ----------------------


def _bn_net() -> torch.nn.Module:
    return torch.nn.Sequential(
        torch.nn.Conv2d(1, 4, 3),
        torch.nn.BatchNorm2d(4),
        torch.nn.ReLU(),
        torch.nn.Flatten(),
        torch.nn.Linear(4 * 6 * 6, 2),
        torch.nn.BatchNorm1d(2),
    )


def _bn_kinds(model: torch.nn.Module) -> list[type]:
    return [
        type(m) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
    ]


def test_global_batchnorm_alone_is_plain_batchnorm_and_restores():
    import copy

    from medcommon.train.distributed import (
        GlobalBatchNorm,
        restore_batchnorm,
        use_global_batchnorm,
    )

    torch.manual_seed(0)
    ref = _bn_net().train()
    net = use_global_batchnorm(copy.deepcopy(ref))
    assert _bn_kinds(net) == [GlobalBatchNorm, GlobalBatchNorm]
    assert list(net.state_dict()) == list(ref.state_dict())
    x = torch.rand(5, 1, 8, 8)
    out, out_ref = net(x), ref(x)  # one process: BatchNorm's own batch statistics
    torch.testing.assert_close(out, out_ref, rtol=0, atol=0)
    out.square().sum().backward()
    out_ref.square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), ref.parameters()):
        torch.testing.assert_close(p.grad, q.grad, rtol=0, atol=0, msg=name)
    restore_batchnorm(net)
    assert _bn_kinds(net) == [torch.nn.BatchNorm2d, torch.nn.BatchNorm1d]
    for (name, a), b in zip(net.state_dict().items(), ref.state_dict().values()):
        assert torch.equal(a, b), name  # running statistics were updated identically
    net.eval(), ref.eval()
    torch.testing.assert_close(net(x), ref(x), rtol=0, atol=0)


@pytest.mark.parametrize(("processes", "switch"), [(1, True), (2, True), (2, False)])
def test_trainer_uses_global_batchnorm_only_with_several_processes(monkeypatch, processes, switch):
    """The Trainer swaps BatchNorm for GlobalBatchNorm while fit runs with >1 process
    (and ``global_batchnorm``), and swaps back afterwards, also when fit fails."""
    from medcommon.train.distributed import GlobalBatchNorm

    model = _bn_net()
    data = TensorDataset(torch.rand(8, 1, 8, 8), torch.zeros(8, dtype=torch.long))
    trainer = Trainer(
        model,
        torch.optim.SGD(model.parameters(), lr=0.1),
        data,
        lambda m, b, ctx: m(b[0]).sum(),
        config=TrainConfig(max_steps=1, batch_size=4, global_batchnorm=switch),
        quiet=True,
    )
    seen: list[list[type]] = []

    def fake_fit(resume):
        seen.append(_bn_kinds(model))
        raise RuntimeError("stop")

    monkeypatch.setattr(trainer, "_fit", fake_fit)
    monkeypatch.setattr(type(trainer.accelerator), "num_processes", property(lambda s: processes))
    with pytest.raises(RuntimeError, match="stop"):
        trainer.fit()
    want = GlobalBatchNorm if processes > 1 and switch else None
    assert all((k is want) if want else k is not GlobalBatchNorm for k in seen[0])
    assert _bn_kinds(model) == [torch.nn.BatchNorm2d, torch.nn.BatchNorm1d]


_THREADED_SUM = """
import sys, torch
from medcommon.train import fix_threads
fix_threads(int(sys.argv[1]))
g = torch.Generator().manual_seed(0)
x = torch.randn(4_000_000, generator=g, dtype=torch.float32)
w = torch.randn(512, 512, generator=g)
y = (w @ torch.randn(512, 256, generator=g)).sum(0)
print(torch.get_num_threads(), x.sum().item(), y.tolist())
"""


def test_fix_threads_makes_numbers_independent_of_the_environment():
    def run(env_threads: str, pinned: int) -> str:
        env = {**os.environ, "OMP_NUM_THREADS": env_threads, "MKL_NUM_THREADS": env_threads}
        proc = subprocess.run(
            [sys.executable, "-c", _THREADED_SUM, str(pinned)],
            capture_output=True, text=True, env=env, check=True,
        )  # fmt: skip
        return proc.stdout

    one, three = run("1", 2), run("3", 2)
    assert one == three  # the environment's thread count no longer reaches the numbers
    assert one.split()[0] == "2"


def test_fix_threads_refuses_zero():
    from medcommon.train import fix_threads

    with pytest.raises(InputError, match="--threads"):
        fix_threads(0)


def _threads_and_job(job: int) -> tuple[int, int]:
    import torch

    return job, torch.get_num_threads()


def test_pinned_map_keeps_order_and_pins_every_worker():
    from medcommon.train import fix_threads, pinned_map

    jobs = list(range(5))
    spread = pinned_map(_threads_and_job, jobs, workers=2, threads=3)
    assert spread == [(j, 3) for j in jobs]  # in job order, each worker at 3 threads
    fix_threads(1)
    assert pinned_map(_threads_and_job, jobs, workers=1, threads=3) == [(j, 1) for j in jobs]
    assert pinned_map(_threads_and_job, [], workers=2) == []
