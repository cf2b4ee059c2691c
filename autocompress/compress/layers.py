"""Generic layer discovery: every Conv1d/Conv2d/Linear of any model, in the order they run."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..tasks.inputs import Inputs, call

COMPRESSIBLE = (nn.Conv1d, nn.Conv2d, nn.Linear)


@dataclass(frozen=True)
class LayerInfo:
    """A compressible layer of the teacher.

    name:      qualified module name (the key used in plans)
    type_name: ``Conv2d``, ``Conv1d`` or ``Linear``
    out_channels / weight_numel: of the teacher's layer
    is_output: produces the model's output, so its output channels can never be pruned
    """

    name: str
    type_name: str
    out_channels: int
    weight_numel: int
    is_output: bool


def out_channels(m: nn.Module) -> int:
    return m.out_features if isinstance(m, nn.Linear) else m.out_channels  # type: ignore[return-value]


def get_module(model: nn.Module, name: str) -> nn.Module:
    return model.get_submodule(name)


def set_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


@torch.no_grad()
def discover_layers(model: nn.Module, example_input: Inputs) -> list[LayerInfo]:
    """Compressible layers in execution order (layers that never run are left out).

    The output layer is the last one to run whose output has the model output's shape.
    """
    order: list[tuple[str, tuple[int, ...]]] = []
    hooks = []
    for name, mod in model.named_modules():
        if isinstance(mod, COMPRESSIBLE):
            hooks.append(mod.register_forward_hook(
                lambda m, i, o, name=name: order.append((name, tuple(o.shape)))))
    was_training = model.training
    model.eval()
    try:
        out = call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    seen: dict[str, tuple[int, ...]] = {}
    for name, shape in order:
        seen.setdefault(name, shape)
    out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
    output_name = next((n for n, s in reversed(order) if s == out_shape), None)
    infos = []
    for name in seen:
        mod = model.get_submodule(name)
        infos.append(LayerInfo(name=name, type_name=type(mod).__name__, out_channels=out_channels(mod),
                               weight_numel=mod.weight.numel(), is_output=name == output_name))
    return infos


def left_alone(model: nn.Module, infos: list[LayerInfo]) -> dict[str, list[str]]:
    """Modules holding weights that no compression method handles (embeddings, LayerNorm, ...), by type name, as
    a study reports them. BatchNorm is not listed: it follows its convolution (pruned with it, folded on export)."""
    found = {i.name for i in infos}
    out: dict[str, list[str]] = {}
    for name, m in model.named_modules():
        if name in found or isinstance(m, (*COMPRESSIBLE, nn.modules.batchnorm._BatchNorm)):
            continue
        if next(m.parameters(recurse=False), None) is not None:
            out.setdefault(type(m).__name__, []).append(name)
    return out

