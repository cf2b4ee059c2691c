"""Per-layer fake quantization and unstructured magnitude pruning, trainable with straight-through gradients.

Weights: symmetric per-output-channel quantization to b bits (integer levels -(2^(b-1)-1) .. 2^(b-1)-1, so a
channel has at most 2^b - 1 distinct values), applied on top of a fixed magnitude-pruning mask. Both live in one
``torch.nn.utils.parametrize`` parametrization, so fine-tuning sees the compressed weight and ``bake`` writes it
into the plain parameter.

Activations: the layer's input is fake-quantized (8 bits asymmetric, as ONNX Runtime's uint8 activations; 16
bits symmetric) with a range calibrated on training batches, then frozen.
"""

from __future__ import annotations

import torch
from torch import nn


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (straight-through gradient); 32 bits = unchanged."""
    if bits >= 32:
        return w
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.detach().abs().amax(dim=1) / qmax).clamp_min(1e-12)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(_ste_round(w / scale.reshape(shape)), -qmax, qmax)
    return q * scale.reshape(shape)


def magnitude_mask(w: torch.Tensor, sparsity: float) -> torch.Tensor:
    """A 0/1 mask zeroing exactly ``round(sparsity * numel)`` smallest-magnitude weights (ties by position)."""
    n = w.numel()
    k = round(sparsity * n)
    mask = torch.ones(n, dtype=w.dtype)
    if k > 0:
        order = torch.argsort(w.detach().abs().flatten(), stable=True)
        mask[order[:k]] = 0
    return mask.reshape(w.shape)


class CompressedWeight(nn.Module):
    """Parametrization ``w -> quantize(w * mask, bits)``."""

    def __init__(self, mask: torch.Tensor | None, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("mask", mask if mask is not None else torch.empty(0), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask.numel():
            w = w * self.mask
        return quantize_weight(w, self.bits)


class InputQuantizer:
    """Forward pre-hook that fake-quantizes a layer's input.

    While ``calibrating`` it records the running min/max of inputs and passes them through unchanged.
    Afterwards the range is fixed and inputs are quantized with a straight-through gradient.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.calibrating = True
        self.enabled = True
        self.lo, self.hi = float("inf"), float("-inf")

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = args[0]
        if not self.enabled:
            return None
        if self.calibrating:
            self.lo = min(self.lo, float(x.detach().min()))
            self.hi = max(self.hi, float(x.detach().max()))
            return None
        return (self.fake_quant(x),) + tuple(args[1:])

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo > self.hi:
            raise RuntimeError("InputQuantizer used before calibration")
        if self.bits == 8:  # asymmetric uint8, the range always holding 0
            lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
            scale = max(hi - lo, 1e-12) / 255.0
            zero = round(-lo / scale)
            q = torch.clamp(_ste_round(x / scale) + zero, 0, 255)
            return (q - zero) * scale
        qmax = 2 ** (self.bits - 1) - 1
        scale = max(abs(self.lo), abs(self.hi), 1e-12) / qmax
        return torch.clamp(_ste_round(x / scale), -qmax, qmax) * scale
