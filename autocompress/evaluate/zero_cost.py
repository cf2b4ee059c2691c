"""Zero-cost accuracy proxies, for comparison with the fidelity ladder only (they never drive a study).

Each takes a materialized model (weights baked) and returns a score where larger should mean more accurate:

- ``params``:    stored non-zero parameters
- ``flops``:     multiply-accumulates of the Conv/Linear layers for one example (dense kernels)
- ``synflow``:   sum |theta * dR/dtheta| with R the output of the all-ones input through |theta| (Tanaka et al. 2020)
- ``grad_norm``: L2 norm of the loss gradient on one batch (Abdelfattah et al. 2021)
- ``snip``:      sum |theta * dL/dtheta| on one batch (Lee et al. 2019)
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from ..tasks.inputs import Inputs, call, first, map_inputs


def params(model: nn.Module) -> float:
    return float(sum(int(torch.count_nonzero(p)) for p in model.parameters()))


@torch.no_grad()
def macs_by_layer(model: nn.Module, example_input: Inputs) -> dict[str, float]:
    """Multiply-accumulates of each Conv/Linear module (by qualified name) for one example (dense kernels)."""
    total: dict[str, float] = {}

    def hook(name: str):
        def count(m: nn.Module, i: tuple[torch.Tensor, ...], o: torch.Tensor) -> None:
            if isinstance(m, nn.Linear):
                n = o.numel() // o.shape[-1] * m.in_features * m.out_features
            else:
                n = o.numel() * (m.in_channels // m.groups) * int(torch.tensor(m.kernel_size).prod())
            total[name] = total.get(name, 0.0) + float(n)
        return count

    hooks = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
             if isinstance(m, nn.Linear | nn.Conv1d | nn.Conv2d)]
    try:
        call(model.eval(), first(example_input))
    finally:
        for h in hooks:
            h.remove()
    return total


def flops(model: nn.Module, example_input: Inputs) -> float:
    return float(sum(macs_by_layer(model, example_input).values()))


def synflow(model: nn.Module, example_input: Inputs) -> float:
    m = copy.deepcopy(model).double().eval()
    with torch.no_grad():
        for p in m.parameters():
            p.abs_()
    for p in m.parameters():
        p.requires_grad_(True)
    m.zero_grad()
    ones = map_inputs(lambda t: torch.ones_like(t, dtype=torch.float64) if t.is_floating_point() else t,
                      first(example_input))
    call(m, ones).sum().backward()
    return float(sum((p * p.grad).abs().sum() for p in m.parameters() if p.grad is not None).detach())


def _loss_grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> nn.Module:
    m = copy.deepcopy(model).train()
    for p in m.parameters():
        p.requires_grad_(True)
    m.zero_grad()
    F.cross_entropy(m(x), y).backward()
    return m


def grad_norm(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m = _loss_grads(model, x, y)
    return float(torch.sqrt(sum(p.grad.pow(2).sum() for p in m.parameters() if p.grad is not None)))


def snip(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    m = _loss_grads(model, x, y)
    return float(sum((p * p.grad).abs().sum() for p in m.parameters() if p.grad is not None).detach())


def all_scores(model: nn.Module, example_input: Inputs, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Every zero-cost score of ``model`` (``x``, ``y``: one labelled batch)."""
    return {"params": params(model), "flops": flops(model, example_input), "synflow": synflow(model, example_input),
            "grad_norm": grad_norm(model, x, y), "snip": snip(model, x, y)}
