"""Exact storage size of a model's weights, in bytes, as they would be stored compressed.

A compressed layer's weight at b bits costs, whichever is smaller:
  dense:   numel * b bits
  sparse:  bitmask (numel bits) + nnz * b bits, or CSR (nnz * column-index bits + (rows + 1) * 32 bits) + nnz * b
plus one float32 scale per output channel when b < 32. Every other parameter and floating-point buffer (biases,
BatchNorm) costs 32 bits per value. The teacher is measured the same way (all float32, dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ..compress import CompressedModel


@dataclass(frozen=True)
class LayerSize:
    bits: int
    numel: int
    nnz: int
    size_bits: int
    storage: str  # "dense" | "bitmask" | "csr"


def weight_storage_bits(w: torch.Tensor, bits: int) -> LayerSize:
    """Cheapest exact storage of one weight tensor at ``bits`` per stored value."""
    numel = w.numel()
    nnz = int(torch.count_nonzero(w))
    rows = w.shape[0]
    cols = numel // rows
    scales = 32 * rows if bits < 32 else 0
    options = {
        "dense": numel * bits,
        "bitmask": numel + nnz * bits,
        "csr": nnz * max(1, math.ceil(math.log2(max(cols, 2)))) + (rows + 1) * 32 + nnz * bits,
    }
    storage = min(options, key=options.__getitem__)
    return LayerSize(bits=bits, numel=numel, nnz=nnz, size_bits=options[storage] + scales, storage=storage)


def _other_bits(model: nn.Module, skip: set[int]) -> int:
    total = 0
    for p in model.parameters():
        if id(p) not in skip:
            total += p.numel() * 32
    for b in model.buffers():
        if b.is_floating_point() and id(b) not in skip:
            total += b.numel() * 32
    return total


def dense_size_bytes(model: nn.Module) -> int:
    """float32 bytes of every parameter and floating-point buffer (the uncompressed reference)."""
    return math.ceil(_other_bits(model, set()) / 8)


@torch.no_grad()
def compressed_size(cm: CompressedModel) -> tuple[int, dict[str, LayerSize]]:
    """``(size_bytes, per-module detail)`` of a candidate; its weights must be baked (see ``compress.bake``)."""
    if not cm.baked:
        raise ValueError("compressed_size needs baked weights: call autocompress.compress.bake(cm) first")
    per_layer: dict[str, LayerSize] = {}
    counted: set[int] = set()
    for name, mod in cm.compressed_modules():
        per_layer[name] = weight_storage_bits(mod.weight, cm.weight_bits.get(name, 32))
        counted.add(id(mod.weight))
    total_bits = sum(s.size_bits for s in per_layer.values()) + _other_bits(cm.model, counted)
    return math.ceil(total_bits / 8), per_layer
