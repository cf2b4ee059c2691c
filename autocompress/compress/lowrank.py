"""Low-rank factorization by truncated SVD: one layer becomes two thinner ones, when that saves weights."""

from __future__ import annotations

import torch
from torch import nn


def factor_rank(m: nn.Module, rank_ratio: float) -> int:
    """The kept rank: ``rank_ratio`` of the full rank, at least 1."""
    w = m.weight
    full = min(w.shape[0], w[0].numel())
    return max(1, round(rank_ratio * full))


def pays(m: nn.Module, rank: int) -> bool:
    """Whether the two factors hold fewer weights than the layer."""
    out_c, fan_in = m.weight.shape[0], m.weight[0].numel()
    return rank * (out_c + fan_in) < out_c * fan_in


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
