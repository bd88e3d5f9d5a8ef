"""Presets are data files (``configs/*.yaml``): every file loads for every section, and
the values are the ones the code's tables held before issue #19."""

from __future__ import annotations

from pathlib import Path

import pytest

from medcommon.config import PRESETS as STANDARD
from medcommon.config import replace_nested, resolve_config
from medcommon.errors import InputError
from smg_learning.benchmark import BenchConfig, bench_preset
from smg_learning.config import PRESETS, RunConfig, run_preset
from smg_learning.synth import SynthSpec

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SECTIONS = {"run": RunConfig, "synth": SynthSpec, "benchmark": BenchConfig}

#: the SMD settings that ``--smd-preset`` applied before issue #19
#: (``smg_learning.config.SMD_PRESETS`` at commit 688a11a), written out
OLD_X0_16PX = dict(
    image_size=16, prediction_type="sample", timestep_spacing="leading",
    block_out_channels=(16, 32), layers_per_block=1, norm_num_groups=8, attention=False,
    train_steps=400, batch_size=16, lr=2e-3, ddim_steps=20, replay_per_site=64,
    beta_schedule="squaredcos_cap_v2",
)  # fmt: skip
OLD_V_32PX = dict(
    image_size=32, prediction_type="v_prediction", timestep_spacing="trailing",
    block_out_channels=(16, 32, 64), layers_per_block=1, norm_num_groups=8, attention=False,
    train_steps=1500, batch_size=16, lr=1e-3, ddim_steps=20, replay_per_site=128,
    beta_schedule="squaredcos_cap_v2",
)  # fmt: skip
OLD_V_32PX_POOL64 = {**OLD_V_32PX, "replay_per_site": 64}


def test_every_preset_file_loads_for_every_section() -> None:
    names = PRESETS.names()
    assert set(STANDARD) <= set(names)
    for name in names:
        tree = PRESETS.tree(name)
        assert set(tree) <= set(SECTIONS), f"{name}.yaml: unknown section"
        for section, cls in SECTIONS.items():
            assert isinstance(PRESETS.section(name, section, cls), cls), (name, section)


def test_an_unknown_preset_names_the_choices() -> None:
    with pytest.raises(InputError, match="unknown preset 'huge'; choose from tiny, demo, small"):
        run_preset("huge")


def test_demo_extends_small() -> None:
    small, demo = run_preset("small"), run_preset("demo")
    assert demo == replace_nested(
        small, steps_per_site=100, replay_per_site=32, log_every=50,
        smd=dict(train_steps=150, ddim_steps=10, replay_per_site=32),
    )  # fmt: skip
    assert PRESETS.section("demo", "synth", SynthSpec) == SynthSpec(4, 10, 8, 40)
    assert bench_preset("demo").methods == ("finetune", "smd-replay", "smg")
    assert bench_preset("small").methods == ()  # every row


def test_full_is_the_dataclass_defaults() -> None:
    assert run_preset("full") == RunConfig()
    assert PRESETS.section("full", "synth", SynthSpec) == SynthSpec()
    assert bench_preset("full") == BenchConfig() == bench_preset("small")


@pytest.mark.parametrize(
    "overlay, old",
    [(None, OLD_X0_16PX), ("smd-v32", OLD_V_32PX), ("smd-v32-pool64", OLD_V_32PX_POOL64)],
)
def test_smd_experiment_overlays_equal_the_removed_smd_presets(overlay, old) -> None:
    """``benchmark --preset small --config benchmarks/<exp>/config.yaml`` runs the config
    that ``--smd-preset`` gave (``with_smd_preset(run_preset("small"), name)``, i.e.
    the ``smd`` fields it named replaced); ``x0-16px`` is small's own ``smd`` section."""
    small = run_preset("small")
    want = replace_nested(small, smd=old)
    file = None if overlay is None else BENCHMARKS / overlay / "config.yaml"
    got = resolve_config(RunConfig, base=small, file=file)
    assert got == want
