"""Student depth: drop trailing shape-preserving blocks of a Sequential or ModuleList (the extra ResNet blocks of a
stage, the last layers of a transformer's ``nn.ModuleList``).

A block is a child of a Sequential or ModuleList holding at least two Conv/Linear layers (a residual block, an
inverted residual, a transformer layer; not one conv-norm-activation unit) whose output (its first tensor, for a
layer returning a tuple) has its input's shape, so it can become a pass-through (:class:`SkipBlock`: the block's
first input back, in the block's output form; names of the other blocks are kept) and the model stays valid. Only the outermost such blocks count: a removable block nested inside
another (the depthwise unit of an inverted residual) is the outer block's business. Architectures without such
blocks (LeNet, plain MLPs) keep their depth; the trial records that.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from ..tasks.inputs import Inputs, call, hooked_eval
from .layers import COMPRESSIBLE


class SkipBlock(nn.Module):
    """A dropped block: returns its first input (positional, or the first tensor keyword such as
    ``hidden_states``), as a 1-tuple when the block returned a tuple (as transformer layers may)."""

    def __init__(self, tuple_out: bool = False) -> None:
        super().__init__()
        self.tuple_out = tuple_out

    def forward(self, *args, **kwargs):
        x = args[0] if args else next(v for v in kwargs.values() if isinstance(v, torch.Tensor))
        return (x,) if self.tuple_out else x


def _first_tensor(value) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, tuple | list) and value and isinstance(value[0], torch.Tensor):
        return value[0]
    return None


def _record(shapes: dict, name: str, args: tuple, kwargs: dict, out) -> None:
    """Forward hook body; returns None so the module's output is left unchanged."""
    inp = _first_tensor(args) if args else next((v for v in kwargs.values() if isinstance(v, torch.Tensor)), None)
    first = _first_tensor(out)
    if inp is not None and first is not None:
        shapes.setdefault(name, (tuple(inp.shape), tuple(first.shape), not isinstance(out, torch.Tensor)))


@torch.no_grad()
def removable_blocks(model: nn.Module, example_input: Inputs, *,
                     tuples: set[str] | None = None) -> dict[str, list[str]]:
    """``{container_name: [block names]}`` of blocks that contain two Conv/Linear and preserve shape; ``tuples``,
    when given, receives the names of those returning a tuple."""
    shapes: dict[str, tuple[tuple[int, ...], tuple[int, ...], bool]] = {}
    hooks = []
    candidates: dict[str, list[str]] = {}
    for seq_name, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential | nn.ModuleList):
            continue
        for child_name, child in seq.named_children():
            if isinstance(child, COMPRESSIBLE) or sum(isinstance(m, COMPRESSIBLE) for m in child.modules()) < 2:
                continue
            full = f"{seq_name}.{child_name}" if seq_name else child_name
            candidates.setdefault(seq_name, []).append(full)
            hooks.append(child.register_forward_hook(
                lambda m, a, k, o, full=full: _record(shapes, full, a, k, o), with_kwargs=True))
    with hooked_eval(model, hooks):
        call(model, example_input)
    removable = {b for blocks in candidates.values() for b in blocks if b in shapes and shapes[b][0] == shapes[b][1]}
    if tuples is not None:
        tuples.update(b for b in removable if shapes[b][2])
    outer = {b for b in removable if not any(b.startswith(other + ".") for other in removable)}
    out = {}
    for seq_name, blocks in candidates.items():
        keep = [b for b in blocks if b in outer]
        if keep:
            out[seq_name] = keep
    return out


def skip_blocks(model: nn.Module, names: list[str] | tuple[str, ...], tuples: set[str]) -> None:
    """Replace the blocks ``names`` by :class:`SkipBlock` pass-throughs (``tuples``: those returning a tuple)."""
    for full in names:
        parent, _, child = full.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, SkipBlock(full in tuples))


def drop_blocks(model: nn.Module, example_input: Inputs, depth: float) -> list[str]:
    """Replace the last ``(1 - depth)`` share of each container's removable blocks by pass-throughs.

    Returns the names of the removed blocks.
    """
    if depth >= 1.0:
        return []
    removed: list[str] = []
    tuples: set[str] = set()
    for blocks in removable_blocks(model, example_input, tuples=tuples).values():
        removed += blocks[math.ceil(depth * len(blocks)):]
    skip_blocks(model, removed, tuples)
    return removed
