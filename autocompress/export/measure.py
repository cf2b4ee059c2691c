"""Measurements shared by export and verify: accuracy and agreement of two models (latency: the runtime layer)."""

from __future__ import annotations

from torch import nn
from torch.utils.data import Dataset

from ..tasks.metric import Metric, evaluate, predict

LATENCY_ROUNDS = 5
MIN_REPEATS = 200  # per round, whatever the study used: export figures should be steadier than a search's


def agreement(a: nn.Module, b: nn.Module, data: Dataset) -> dict[str, float]:
    """Share of ``data`` where two models' arg-max agree, and their largest absolute output difference."""
    out_a, _ = predict(a, data)
    out_b, _ = predict(b, data)
    dim = -1 if out_a.dim() == 3 else 1  # per-token logits (batch, length, vocab): agreement per token
    return {"argmax": float((out_a.argmax(dim) == out_b.argmax(dim)).float().mean()),
            "max_abs_diff": float((out_a - out_b).abs().max())}


def accuracy(model: nn.Module, data: Dataset | None, metric: Metric) -> float | None:
    return None if data is None else evaluate(model, data, metric)


__all__ = ["agreement", "accuracy", "LATENCY_ROUNDS", "MIN_REPEATS"]
