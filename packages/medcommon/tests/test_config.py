"""Config resolution: defaults <- YAML <- --set, with types and clear errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from medcommon.config import config_from_dict, config_to_dict, resolve_config
from medcommon.errors import InputError
from medcommon.registry import Registry
from medcommon.train import TrainConfig


@dataclass(frozen=True)
class Inner:
    width: int = 8
    dropout: float = 0.0


@dataclass(frozen=True)
class MethodConfig:
    q: float = 0.7
    rounds: int = 1
    primary: Literal["t1", "t1ce"] = "t1ce"
    sites: tuple[str, ...] = ("A", "B")
    backbone_weights: str | None = None
    frozen: bool = False
    model: Inner = field(default_factory=Inner)
    train: TrainConfig = field(default_factory=TrainConfig)


def test_yaml_then_set_overrides_with_types(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("q: 0.5\nmodel:\n  width: 16\ntrain:\n  max_steps: 7\n")
    cfg = resolve_config(
        MethodConfig,
        file=f,
        overrides=[
            "rounds=3",
            "sites=RUNMC,BMC,HK",
            "model.dropout=0.1",
            "frozen=true",
            "backbone_weights=w.safetensors",
            "train.log_every=3",
        ],
    )
    assert cfg.q == 0.5 and cfg.rounds == 3 and cfg.frozen is True
    assert cfg.sites == ("RUNMC", "BMC", "HK")
    assert cfg.model == Inner(width=16, dropout=0.1)
    assert cfg.train.max_steps == 7 and cfg.train.log_every == 3
    assert cfg.backbone_weights == "w.safetensors"
    # The saved form rebuilds an equal config.
    assert config_from_dict(MethodConfig, config_to_dict(cfg)) == cfg


@pytest.mark.parametrize(
    "text", ["RUNMC,BMC", "[RUNMC, BMC]", "(RUNMC, BMC)", "['RUNMC', \"BMC\"]", " RUNMC , BMC "]
)
def test_sequence_overrides_accept_brackets_and_quotes(text):
    assert resolve_config(MethodConfig, overrides=[f"sites={text}"]).sites == ("RUNMC", "BMC")


def test_preset_base_is_overridden():
    base = MethodConfig(rounds=2)
    assert resolve_config(MethodConfig, base=base).rounds == 2
    assert resolve_config(MethodConfig, base=base, overrides=["rounds=5"]).rounds == 5
    assert (
        resolve_config(MethodConfig, overrides=["backbone_weights=none"]).backbone_weights is None
    )


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("nope=1", r"--set nope: unknown config field; valid fields: backbone_weights, frozen"),
        ("rounds=two", r"rounds: cannot parse 'two' as int"),
        ("primary=t2", r"primary: 't2' is not one of t1, t1ce"),
        ("frozen=maybe", r"frozen: cannot parse 'maybe' as bool"),
        ("model.depth=3", r"model.depth: unknown config field"),
        ("rounds", r"--set rounds: expected key=value"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(InputError, match=message):
        resolve_config(MethodConfig, overrides=[override])


def test_bad_yaml_file_is_named(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("q: [unclosed\n")
    with pytest.raises(InputError, match="bad.yaml: invalid YAML"):
        resolve_config(MethodConfig, file=f)
    f.write_text("- a list\n")
    with pytest.raises(InputError, match="bad.yaml: expected a mapping"):
        resolve_config(MethodConfig, file=f)


def test_registry_refuses_duplicates_and_lists_names():
    reg: Registry[int] = Registry("method")
    reg.register("erm")(1)
    reg.register("pbbl")(2)
    with pytest.raises(KeyError, match="already registered"):
        reg.register("erm")(3)
    with pytest.raises(InputError, match="--method: unknown method 'lff'; choose from erm, pbbl"):
        reg.get("lff")
    assert reg.get("pbbl") == 2 and reg.names() == ["erm", "pbbl"]


def test_replace_nested_reaches_nested_fields_three_ways():
    import dataclasses

    from medcommon.config import replace_nested

    @dataclasses.dataclass(frozen=True)
    class Inner:
        width: int = 4
        depth: int = 2

    @dataclasses.dataclass(frozen=True)
    class Outer:
        lr: float = 0.1
        inner: Inner = dataclasses.field(default_factory=Inner)

    cfg = Outer()
    assert replace_nested(cfg, lr=0.5) == Outer(lr=0.5)
    assert replace_nested(cfg, inner={"width": 8}) == Outer(inner=Inner(width=8, depth=2))
    assert replace_nested(cfg, **{"inner.depth": 3}) == Outer(inner=Inner(width=4, depth=3))
    assert replace_nested(cfg, inner=Inner(width=1, depth=1)).inner == Inner(1, 1)
    assert cfg == Outer(), "the original is unchanged"
    with pytest.raises(TypeError, match="no field 'nope'"):
        replace_nested(cfg, nope=1)
    with pytest.raises(TypeError, match="no field 'size'"):
        replace_nested(cfg, inner={"size": 1})


def test_registry_describes_entries_from_description_or_docstring():
    reg = Registry("method")

    @reg.register("a")
    class A:
        """First line.

        More text."""

    @reg.register("b")
    class B:
        description = "said here"

    reg.register("c")(object())
    assert reg.describe("a") == "First line."
    assert reg.describe("b") == "said here"
    assert reg.help().startswith("a: First line.; b: said here; c")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf", "1e400"])
def test_non_finite_floats_are_refused(value):
    for name in ("lr", "clip"):
        with pytest.raises(InputError, match=f"{name}: must be a finite number"):
            resolve_config(_Rates, overrides=[f"{name}={value}"])


@dataclass(frozen=True)
class _Rates:
    lr: float = 0.1
    clip: float | None = None
