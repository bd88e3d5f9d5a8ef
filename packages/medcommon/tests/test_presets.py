"""medcommon.presets: preset files with inheritance, read into config dataclasses."""

from __future__ import annotations

import dataclasses

import pytest

from medcommon.errors import InputError
from medcommon.presets import Presets, configs_folder


@dataclasses.dataclass(frozen=True)
class Model:
    width: int = 64
    depth: int = 4


@dataclasses.dataclass(frozen=True)
class Run:
    model: Model = dataclasses.field(default_factory=Model)
    steps: int = 1000
    lr: float = 1e-4


def _write(folder, **files):
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.yaml").write_text(text)
    return Presets("toy", folder)


def test_extends_merges_nested_sections_key_by_key(tmp_path):
    presets = _write(
        tmp_path,
        _cpu="run:\n  lr: 0.002\n  model: {width: 8}\n",
        small="extends: _cpu\nrun:\n  steps: 200\nsynth:\n  n: 100\n",
        demo="extends: small\nrun:\n  steps: 120\n  model: {depth: 2}\n",
        full="",
    )
    assert presets.section("demo", "run", Run) == Run(Model(8, 2), steps=120, lr=0.002)
    assert presets.section("small", "run", Run) == Run(Model(8, 4), steps=200, lr=0.002)
    assert presets.section("demo", "synth") == {"n": 100}  # inherited, as a plain dict
    assert presets.section("full", "run", Run) == Run()  # absent: the paper's defaults
    assert presets.names() == ["demo", "full", "small"]  # _cpu is a base, not a preset
    assert presets.chain("demo") == ["demo", "small", "_cpu"]
    assert presets.sources("full") == ["packages/toy/configs/full.yaml"]


def test_unknown_names_loops_and_fields_are_input_errors(tmp_path):
    presets = _write(tmp_path, a="extends: b\n", b="extends: a\n", c="run:\n  stpes: 3\n", tiny="")
    with pytest.raises(InputError, match=r"--preset: unknown preset 'huge'; choose from tiny, a"):
        presets.tree("huge")
    with pytest.raises(InputError, match="unknown preset '_cpu'"):
        presets.tree("_cpu")
    with pytest.raises(InputError, match="extends loops: a -> b -> a"):
        presets.tree("a")
    with pytest.raises(InputError, match=r"c.yaml: run.stpes"):
        presets.section("c", "run", Run)


def test_a_section_is_a_fresh_copy(tmp_path):
    presets = _write(tmp_path, small="bench:\n  seeds: [0, 1]\n")
    first = presets.section("small", "bench")
    first["seeds"].append(2)
    assert presets.section("small", "bench") == {"seeds": [0, 1]}


def test_configs_folder_of_an_importable_package_without_one():
    with pytest.raises(FileNotFoundError, match="no configs/ folder"):
        configs_folder("medcommon")
