"""Student depth: drop trailing shape-preserving blocks of a Sequential (e.g. the extra ResNet blocks of a stage).

A block is a child of a Sequential holding at least two Conv/Linear layers (a residual block, an inverted
residual, a transformer layer; not one conv-norm-activation unit) whose output has its input's shape, so it can
become an identity and the model stays valid. Only the outermost such blocks count: a removable block nested inside
another (the depthwise unit of an inverted residual) is the outer block's business. Architectures without such
blocks (LeNet, plain MLPs) keep their depth; the trial records that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..tasks.inputs import Inputs, call
from .layers import COMPRESSIBLE


def _record(shapes: dict, name: str, inp: torch.Tensor, out: torch.Tensor) -> None:
    """Forward hook body; returns None so the module's output is left unchanged."""
    shapes.setdefault(name, (tuple(inp.shape), tuple(out.shape)))


@torch.no_grad()
def removable_blocks(model: nn.Module, example_input: Inputs) -> dict[str, list[str]]:
    """``{sequential_name: [block names]}`` of blocks that contain a Conv/Linear and preserve shape."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {}
    hooks = []
    candidates: dict[str, list[str]] = {}
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        for child_name, child in seq.named_children():
            if isinstance(child, COMPRESSIBLE) or sum(isinstance(m, COMPRESSIBLE) for m in child.modules()) < 2:
                continue
            full = f"{seq_name}.{child_name}" if seq_name else child_name
            candidates.setdefault(seq_name, []).append(full)
            hooks.append(child.register_forward_hook(
                lambda m, i, o, full=full: _record(shapes, full, i[0], o)))
    was_training = model.training
    model.eval()
    try:
        call(model, example_input)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    removable = {b for blocks in candidates.values() for b in blocks if b in shapes and shapes[b][0] == shapes[b][1]}
    outer = {b for b in removable if not any(b.startswith(other + ".") for other in removable)}
    out = {}
    for seq_name, blocks in candidates.items():
        keep = [b for b in blocks if b in outer]
        if keep:
            out[seq_name] = keep
    return out


def drop_blocks(model: nn.Module, example_input: Inputs, depth: float) -> list[str]:
    """Replace the last ``(1 - depth)`` share of each Sequential's removable blocks by identities.

    Returns the names of the removed blocks.
    """
    if depth >= 1.0:
        return []
    removed = []
    for seq_name, blocks in removable_blocks(model, example_input).items():
        n_keep = math.ceil(depth * len(blocks))
        seq = model.get_submodule(seq_name) if seq_name else model
        for full in blocks[n_keep:]:
            setattr(seq, full.rpartition(".")[2], nn.Identity())
            removed.append(full)
    return removed
