"""Exact storage size of a model's weights, in bytes, as they would be stored compressed.

A compressed layer's weight at b bits costs, whichever is smallest:
  dense:   numel * b bits
  sparse:  bitmask (numel bits) + nnz * b bits, or CSR (nnz * column-index bits + (rows + 1) * 32 bits) + nnz * b
  huffman: (layers with ``entropy_coding``) Huffman-coded value codes and zero run lengths, code tables included
           (see :mod:`autocompress.evaluate.entropy`)
plus, when b < 32, one float32 scale per output channel (uniform per-channel quantization) or, for a k-means
weight-shared layer (``weight_sharing``), its codebook: one float32 per distinct non-zero value (at most 2^b; a
code is an index into it, zeros are stored by the sparse layouts, so a shared layer with zeros is never "dense").
Every other parameter and floating-point buffer (biases, BatchNorm) costs 32 bits per value. The teacher is
measured the same way (all float32, dense).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn.utils import parametrize

from ..compress import CompressedModel
from .entropy import huffman_layout, zero_runs


@dataclass(frozen=True)
class LayerSize:
    bits: int
    numel: int
    nnz: int
    size_bits: int
    storage: str  # "dense" | "bitmask" | "csr" | "huffman"
    shared: bool = False


def uniform_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale of symmetric ``bits``-bit quantization (as ``compress.quantize.quantize_weight``)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    return (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12)


def codebook_of(w: torch.Tensor, bits: int) -> np.ndarray:
    """The sorted distinct non-zero float32 values of a k-means shared weight (its codebook, <= 2**bits)."""
    flat = w.detach().to(torch.float32).cpu().numpy().reshape(-1)
    book = np.unique(flat[flat != 0])
    if book.size > 2**bits:
        raise ValueError(f"a {bits}-bit shared weight has {book.size} distinct non-zero values (at most "
                         f"{2**bits} allowed); was it baked from a k-means weight-sharing layer?")
    return book


def value_codes(w: torch.Tensor, bits: int, shared: bool) -> tuple[np.ndarray, int]:
    """``(code of every weight, row-major, int64; alphabet size)``: codebook index (shared) or ``q + qmax``."""
    flat = w.detach().to(torch.float32).cpu()
    if shared:
        book = codebook_of(flat, bits)
        arr = flat.numpy().reshape(-1)
        codes = np.searchsorted(book, arr).clip(0, max(book.size - 1, 0))
        return codes.astype(np.int64), 2**bits
    qmax = 2 ** (bits - 1) - 1
    shape = (-1,) + (1,) * (flat.dim() - 1)
    q = torch.clamp(torch.round(flat / uniform_scale(flat, bits).reshape(shape)), -qmax, qmax)
    return (q.to(torch.int64).numpy().reshape(-1) + qmax), 2 * qmax + 1


def layout_bits(numel: int, rows: int, nnz: int, bits: int) -> dict[str, int]:
    """Bits of each plain layout of a ``rows``-row weight of ``numel`` values, ``nnz`` of them non-zero, stored at
    ``bits`` per value (scales and codebooks not included)."""
    cols = max(1, numel // max(rows, 1))
    return {
        "dense": numel * bits,
        "bitmask": numel + nnz * bits,
        "csr": nnz * max(1, math.ceil(math.log2(max(cols, 2)))) + (rows + 1) * 32 + nnz * bits,
    }


def weight_storage_bits(w: torch.Tensor, bits: int, *, shared: bool = False, entropy: bool = False) -> LayerSize:
    """Cheapest exact storage of one weight tensor at ``bits`` per stored value.

    shared:  a k-means weight-shared layer (codebook instead of per-channel scales; needs ``bits <= 8``)
    entropy: also consider Huffman coding (``bits < 32`` only)
    """
    numel = w.numel()
    nz = (w.detach() != 0).reshape(-1)
    nnz = int(nz.sum())
    rows = w.shape[0]
    if shared and bits > 8:
        raise ValueError(f"k-means weight sharing needs weight bits <= 8, but got {bits}")
    if shared:
        extra = 32 * codebook_of(w, bits).size
    else:
        extra = 32 * rows if bits < 32 else 0
    options = layout_bits(numel, rows, nnz, bits)
    if shared and nnz < numel:
        del options["dense"]  # a codebook index cannot say "zero"
    if entropy and bits < 32:
        codes, alphabet = value_codes(w, bits, shared)
        mask = nz.cpu().numpy()
        options["huffman"] = huffman_layout(codes[mask], alphabet, zero_runs(mask)).bits
    storage = min(options, key=options.__getitem__)
    return LayerSize(bits=bits, numel=numel, nnz=nnz, size_bits=options[storage] + extra, storage=storage,
                     shared=shared)


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
    """``(size_bytes, per-module detail)`` of a candidate, read from its compressed weights.

    Baked or not: a module still under its parametrization (masks, fake quantizer, k-means codebook) is counted
    by the weight it computes, and the parametrization's own tensors (the float original, masks, centroids) are
    not counted, so the figure is the same before and after :func:`~autocompress.compress.bake`.
    """
    per_layer: dict[str, LayerSize] = {}
    counted: set[int] = set()
    for name, mod in cm.compressed_modules():
        per_layer[name] = weight_storage_bits(mod.weight, cm.weight_bits.get(name, 32),
                                              shared=cm.weight_sharing.get(name, False),
                                              entropy=cm.entropy_coding.get(name, False))
        counted.add(id(mod.weight))
        if parametrize.is_parametrized(mod, "weight"):
            counted.update(id(t) for t in (*mod.parametrizations.parameters(), *mod.parametrizations.buffers()))
    total_bits = sum(s.size_bits for s in per_layer.values()) + _other_bits(cm.model, counted)
    return math.ceil(total_bits / 8), per_layer
