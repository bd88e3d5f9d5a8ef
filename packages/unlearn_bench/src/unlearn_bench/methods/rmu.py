"""Representation Misdirection for Unlearning (Li et al. 2024, WMDP).

The output of decoder layer ``layer`` is pushed toward ``c * u`` (u a fixed random unit
vector) on forget inputs and kept at the vanilla model's activations on retain inputs.
By default all weights are trained (WMDP updates three MLPs of a 7B model; the tiny
model has two layers). Positions: every non-padding token of the prompt and answer.

Chosen by name instead of index (WMDP's recipe on a real checkpoint): ``rmu_layer`` is a
glob (``fnmatch``) over module names that must match exactly one decoder layer (e.g.
``*language_model.layers.7``), and ``rmu_params`` globs over parameter names (e.g.
``*layers.[567].mlp.down_proj.weight``): only matching parameters are trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase

import torch

from medcommon.errors import InputError
from unlearn_bench.losses import rmu_loss
from unlearn_bench.methods.base import METHODS, Method, UnlearnConfig, forward_all


@dataclass(frozen=True)
class RMUConfig(UnlearnConfig):
    layer: int = -1  # decoder layer whose output is steered; -1 = the middle one
    steering_coeff: float = 6.5  # c (WMDP, Zephyr-7B)
    alpha: float = 1200.0  # retain weight (WMDP, Zephyr-7B)
    rmu_layer: str = ""  # a module-name glob naming one decoder layer; overrides ``layer``
    rmu_params: tuple[str, ...] = ()  # parameter-name globs to train; () = every parameter


@METHODS.register("rmu")
class RMU(Method):
    """``L = mean ||h(forget) - c u||^2 + alpha mean ||h(retain) - h_ref(retain)||^2``."""

    description = "steer a middle layer's forget activations to a random vector (Li et al. 2024)"

    config_class = RMUConfig
    uses_retain = True
    needs_reference = True

    def setup(self, model):
        text = model.config.text_config
        self.layer = self.cfg.layer if self.cfg.layer >= 0 else (text.num_hidden_layers - 1) // 2
        if self.cfg.rmu_layer:
            self.layer = decoder_layer_index(model, self.cfg.rmu_layer)
        if self.cfg.rmu_params:
            self.trained = train_only(model, self.cfg.rmu_params)
        gen = torch.Generator().manual_seed(self.seed)
        u = torch.rand(text.hidden_size, generator=gen)
        self.control = self.cfg.steering_coeff * u / u.norm()

    def _hidden(self, out):
        return out.hidden_states[self.layer + 1]  # [0] is the embedding output

    def loss(self, model, batch, ctx):
        f, r = batch["forget"], batch["retain"]
        out_f, out_r = forward_all(model, f, r, hidden=True)
        h_f, h_r = self._hidden(out_f), self._hidden(out_r)
        h_r_ref = self._hidden(self.ref_forward(r, hidden=True))
        total, forget, retain = rmu_loss(
            h_f,
            f["attention_mask"],
            self.control.to(h_f.device),
            h_r,
            h_r_ref,
            r["attention_mask"],
            self.cfg.alpha,
            ddp=True,
        )
        return {"loss": total, "rmu_forget": forget, "rmu_retain": retain}


def decoder_layers(model: torch.nn.Module) -> dict[str, int]:
    """``{module name: index}`` of the language model's decoder layers (the hidden-state order)."""
    layers = model.get_decoder().layers  # the ModuleList hidden_states[i + 1] comes out of
    ids = {id(m): i for i, m in enumerate(layers)}
    return {name: ids[id(m)] for name, m in model.named_modules() if id(m) in ids}


def decoder_layer_index(model: torch.nn.Module, pattern: str) -> int:
    """The index of the one decoder layer whose module name matches the glob ``pattern``."""
    hits = {i for name, i in decoder_layers(model).items() if fnmatchcase(name, pattern)}
    if len(hits) != 1:
        some = ", ".join(list(decoder_layers(model))[:2])
        raise InputError(
            "rmu_layer",
            f"{pattern!r} matches {len(hits)} decoder layers, need 1 (names: {some}, ...)",
        )
    return hits.pop()


def train_only(model: torch.nn.Module, patterns: tuple[str, ...]) -> list[str]:
    """Freeze every parameter whose name matches none of the globs; returns the trained names."""
    trained = []
    for name, p in model.named_parameters():
        keep = p.requires_grad and any(fnmatchcase(name, pat) for pat in patterns)
        p.requires_grad_(keep)
        if keep:
            trained.append(name)
    if not trained:
        raise InputError("rmu_params", f"{', '.join(patterns)} match no trainable parameter")
    return trained
