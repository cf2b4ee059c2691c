"""Accuracy of a model on a data split."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

Metric = Callable[[torch.Tensor, torch.Tensor], float]


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose arg-max equals the target (in [0, 1])."""
    return float((logits.argmax(dim=1) == targets).float().mean())


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated model outputs and targets over ``data`` (model in eval mode)."""
    model.eval()
    outs, ys = [], []
    for x, y in DataLoader(data, batch_size=batch_size):
        outs.append(model(x))
        ys.append(y)
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, data: Dataset, metric: Metric = top1) -> float:
    """``metric`` (higher is better) of ``model`` over the whole of ``data``."""
    logits, targets = predict(model, data)
    return float(metric(logits, targets))
