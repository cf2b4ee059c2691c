"""Low-rank factorization by truncated SVD: one layer becomes two thinner ones, when that saves weights."""

from __future__ import annotations

import math

import torch
from torch import nn

from .method import Knob, Method


@torch.no_grad()
def factorize(m: nn.Module, rank: int) -> nn.Sequential:
    """``Linear``/``Conv`` (groups=1) -> ``Sequential(first, second)`` with the best rank-``rank`` approximation.

    Linear(in, out) -> Linear(in, r, bias=False), Linear(r, out)
    Conv(in, out, k) -> Conv(in, r, k, same stride/padding, bias=False), Conv(r, out, 1)
    """
    w = m.weight.detach()
    out_c = w.shape[0]
    u, s, vh = torch.linalg.svd(w.reshape(out_c, -1), full_matrices=False)
    root = s[:rank].sqrt()
    a = root[:, None] * vh[:rank]            # (r, fan_in)
    b = u[:, :rank] * root[None, :]          # (out, r)
    bias = m.bias is not None
    if isinstance(m, nn.Linear):
        first, second = nn.Linear(m.in_features, rank, bias=False), nn.Linear(rank, out_c, bias=bias)
        first.weight.copy_(a)
        second.weight.copy_(b)
    elif isinstance(m, nn.Conv1d | nn.Conv2d):
        if m.groups != 1:
            raise ValueError(f"grouped convolution (groups={m.groups}) cannot be factorized")
        conv = type(m)
        first = conv(m.in_channels, rank, m.kernel_size, m.stride, m.padding, m.dilation, bias=False,
                     padding_mode=m.padding_mode)
        second = conv(rank, out_c, 1, bias=bias)
        first.weight.copy_(a.reshape(first.weight.shape))
        second.weight.copy_(b.reshape(second.weight.shape))
    else:
        raise TypeError(f"cannot factorize {type(m).__name__}")
    if bias:
        second.bias.copy_(m.bias)
    return nn.Sequential(first, second)


def resolve_rank(weight_shape: tuple[int, ...], rank_ratio: float, groups: int = 1) -> tuple[int | None, str | None]:
    """``(rank, None)`` when factorizing a weight of ``weight_shape`` at ``rank_ratio`` pays, else ``(None, why)``.

    The one rule: ``apply`` factorizes with it and the latency predictor resolves plans with it."""
    out_c, fan_in = weight_shape[0], math.prod(weight_shape[1:])
    rank = max(1, round(rank_ratio * min(out_c, fan_in)))
    if not rank * (out_c + fan_in) < out_c * fan_in:
        return None, f"rank {rank} would not reduce the weights; not factorized"
    if groups != 1:
        return None, f"low rank not applied: grouped convolution (groups={groups})"
    return rank, None


class LowRank(Method):
    """Low-rank factorization by truncated SVD, where it reduces the weights."""

    name = "low_rank"
    knobs = (Knob(name="rank_ratio", type=float, default=1.0, interval=(0.0, 1.0, "(]"),
                  doc="low-rank factorization keeps this share of the full rank, 1.0 = off",
                  label=lambda v: f"rank{v:g}"),)
