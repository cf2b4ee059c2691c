"""Measurements shared by export and verify: interleaved latency rounds, accuracy and agreement of two models."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..config import LatencyConfig
from ..evaluate.accuracy import Metric, evaluate, predict
from ..evaluate.latency import time_session

LATENCY_ROUNDS = 5
MIN_REPEATS = 200  # per round, whatever the study used: export figures should be steadier than a search's


def latency_rounds(paths: dict[str, Path], example_input: torch.Tensor, cfg: LatencyConfig, *,
                   rounds: int = LATENCY_ROUNDS) -> dict[str, dict[str, Any]]:
    """Time several ONNX files in interleaved rounds (A B A B ...), so machine noise hits them alike.

    Returns per name: ``median_ms`` (median of the round medians), ``rounds_ms`` (each round's median),
    ``spread`` ((max - min) / median of the round medians) and the p10/p90 of the last round.
    """
    per: dict[str, list[float]] = {k: [] for k in paths}
    p10p90: dict[str, tuple[float, float]] = {}
    repeats = max(cfg.repeats, MIN_REPEATS)
    for _ in range(max(1, rounds)):
        for name, path in paths.items():
            med, p10, p90, _ = time_session(path, example_input, threads=cfg.threads, batch_size=cfg.batch_size,
                                            warmup=max(cfg.warmup, 20), repeats=repeats)
            per[name].append(med)
            p10p90[name] = (p10, p90)
    out = {}
    for name, xs in per.items():
        med = statistics.median(xs)
        out[name] = {"median_ms": med, "rounds_ms": [round(x, 5) for x in xs],
                     "spread": (max(xs) - min(xs)) / med if med > 0 else 0.0,
                     "p10_ms": p10p90[name][0], "p90_ms": p10p90[name][1], "repeats": repeats}
    return out


def agreement(a: nn.Module, b: nn.Module, data: Dataset) -> dict[str, float]:
    """Share of ``data`` where two models' arg-max agree, and their largest absolute output difference."""
    out_a, _ = predict(a, data)
    out_b, _ = predict(b, data)
    return {"argmax": float((out_a.argmax(1) == out_b.argmax(1)).float().mean()),
            "max_abs_diff": float((out_a - out_b).abs().max())}


def accuracy(model: nn.Module, data: Dataset | None, metric: Metric) -> float | None:
    return None if data is None else evaluate(model, data, metric)


__all__ = ["latency_rounds", "agreement", "accuracy", "LATENCY_ROUNDS"]
