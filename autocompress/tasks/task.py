"""The task contract: what a study needs to know about the model being compressed."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from .metric import Metric, top1


@dataclass(kw_only=True)
class Task:
    """Everything a study needs to know about the model being compressed.

    model:         the trained teacher (float32, CPU)
    example_input: one input batch of shape (1, ...) used to trace shapes and export
    train / val:   datasets of ``(input, target)``; the search fine-tunes on train and scores on val
    test:          held out; reported, never used for selection
    metric:        ``metric(outputs, targets) -> float``, higher is better (default: top-1 accuracy)
    """

    name: str
    model: nn.Module
    example_input: torch.Tensor
    train: Dataset
    val: Dataset
    test: Dataset | None = None
    metric: Metric = top1
    info: dict[str, Any] = field(default_factory=dict)
