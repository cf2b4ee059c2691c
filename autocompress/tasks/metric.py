"""A task's metric (name, direction, range) and its value for a model on a data split."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from .inputs import call, loader, to_device

MetricFn = Callable[[torch.Tensor, torch.Tensor], float]


@dataclass(frozen=True)
class Metric:
    """``fn(outputs, targets) -> float`` over a whole split, with what the study needs to know about it.

    name:      the objective's name in configs, fronts, pick expressions and the dashboard (``accuracy``,
               ``perplexity``, ...); ``latency_ms`` and ``size_bytes`` are taken
    direction: ``maximize`` or ``minimize``
    range:     ``(low, high)`` bounds when the metric has them (accuracy: (0, 1)); the hypervolume scores a value by
               its position between them. Without a range it scores the value's ratio to the teacher's.
    """

    fn: MetricFn
    name: str = "accuracy"
    direction: Literal["maximize", "minimize"] = "maximize"
    range: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if self.direction not in ("maximize", "minimize"):
            raise ValueError(f"metric direction must be 'maximize' or 'minimize', not {self.direction!r}")
        if self.name in ("latency_ms", "size_bytes") or not self.name.isidentifier():
            raise ValueError(f"metric name {self.name!r} must be an identifier other than latency_ms and size_bytes")

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> float:
        return float(self.fn(outputs, targets))

    @property
    def maximize(self) -> bool:
        return self.direction == "maximize"

    def describe(self) -> dict[str, Any]:
        """What a study records about its metric (``front`` and the dashboard read it back)."""
        return {"name": self.name, "direction": self.direction,
                "range": list(self.range) if self.range is not None else None}

    @classmethod
    def of(cls, value: Metric | MetricFn | None) -> Metric:
        """A :class:`Metric` from a task's ``metric`` field; a plain function is an accuracy-like score in [0, 1]."""
        if value is None:
            return ACCURACY
        if isinstance(value, Metric):
            return value
        if not callable(value):
            raise TypeError(f"`metric` must be an autocompress.Metric or a function (outputs, targets) -> float, "
                            f"not {type(value).__name__}")
        return cls(value, "accuracy", "maximize", (0.0, 1.0))


def top1(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Share of rows whose arg-max equals the target (in [0, 1]); with per-token logits (batch, length, classes),
    the share of tokens (targets of -100 are ignored)."""
    pred = logits.argmax(dim=-1)
    keep = targets != -100
    return float((pred[keep] == targets[keep]).float().mean())


def next_token_nll(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of per-token ``logits`` (batch, length, vocab) against ``targets`` (batch, length),
    targets of -100 ignored. Targets are the next tokens already (the dataset shifts them)."""
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1), ignore_index=-100)


def _perplexity(logits: torch.Tensor, targets: torch.Tensor) -> float:
    return float(math.exp(min(float(next_token_nll(logits, targets)), 50.0)))


def _mse(outputs: torch.Tensor, targets: torch.Tensor) -> float:
    return float(F.mse_loss(outputs.float(), targets.float()))


ACCURACY = Metric(top1, "accuracy", "maximize", (0.0, 1.0))
PERPLEXITY = Metric(_perplexity, "perplexity", "minimize", None)
MSE = Metric(_mse, "mse", "minimize", None)


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, batch_size: int = 512,
            device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Concatenated model outputs and targets over ``data`` (model in eval mode), on the CPU; with ``device``, the
    model runs there (and is moved back to the CPU)."""
    model.eval()
    outs, ys = [], []
    moved = device is not None and torch.device(device).type != "cpu"
    if moved:
        model.to(device)
    try:
        for x, y in loader(data, batch_size):
            if moved:
                x = to_device(x, device)
            outs.append(call(model, x).detach().cpu())
            ys.append(y)
    finally:
        if moved:
            model.to("cpu")
    return torch.cat(outs), torch.cat(ys)


def evaluate(model: nn.Module, data: Dataset, metric: Metric | MetricFn = ACCURACY,
             device: torch.device | str | None = None) -> float:
    """``metric`` of ``model`` over the whole of ``data``."""
    outputs, targets = predict(model, data, device=device)
    return float(metric(outputs, targets))


__all__ = ["ACCURACY", "MSE", "PERPLEXITY", "Metric", "MetricFn", "evaluate", "next_token_nll", "predict", "top1"]
