"""End-to-end measurement of a plan, exactly as the search measures it, with repeated rounds.

``measure_plan`` materializes the plan (``compress.apply``, calibration, ``bake``), exports it with the search's
exporter, lowers the layers ``Candidate.latency`` lowers to int8 (``LayerPlan.int8_kernel``; nodes found by the
exporter's scope names and weight shapes) with the same static QDQ quantization, and times ``InferenceSession.run`` with the same
session options. It runs ``rounds`` rounds of ``runs`` timed calls on one session: each round's median is kept,
and the reported figure is the median of the round medians (one disturbed round does not move it; one round is
what ``Candidate.latency`` reports: the median of its timed runs). The profile's samples and the benchmark's
ground truth (``benchmarks/latency_predictor.py``: the median of this figure over passes) use the same statistic,
so the predictor is not biased against its own ground truth. :mod:`autocompress.latency.torch_backend` measures
eager PyTorch the same way.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..plan import CompressionPlan


@dataclass
class Measurement:
    """``latency_ms``: median of the round medians; ``rounds_ms``: every round's median; ``int8_nodes``."""

    latency_ms: float
    rounds_ms: list[float] = field(default_factory=list)
    int8_nodes: int = 0


def session(path: Path | str, *, threads: int = 1):
    """An ONNX Runtime CPU session with the options the search times with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def time_rounds(sess, feed: dict[str, np.ndarray], *, warmup: int = 20, runs: int = 100,
                rounds: int = 3) -> list[float]:
    """Median ms of ``runs`` timed ``sess.run`` calls, for each of ``rounds`` rounds."""
    for _ in range(warmup):
        sess.run(None, feed)
    medians = []
    for _ in range(rounds):
        times = []
        for _ in range(runs):
            t0 = time.perf_counter_ns()
            sess.run(None, feed)
            times.append((time.perf_counter_ns() - t0) / 1e6)
        medians.append(statistics.median(times))
    return medians


def time_onnx(path: Path | str, feed: dict[str, np.ndarray], *, threads: int = 1, warmup: int = 20,
              runs: int = 100, rounds: int = 3) -> Measurement:
    medians = time_rounds(session(path, threads=threads), feed, warmup=warmup, runs=runs, rounds=rounds)
    return Measurement(latency_ms=statistics.median(medians), rounds_ms=medians)


def int8_modules(cm, plan: CompressionPlan) -> list[str]:
    """Modules ``Candidate.latency`` lowers to int8: every module of a teacher layer whose plan runs int8
    (:attr:`~autocompress.plan.LayerPlan.int8_kernel`, the one predicate), both factors of a low-rank layer."""
    return [m for layer, mods in cm.modules.items() if plan.layer(layer).int8_kernel for m in mods]


def export_plan(teacher: nn.Module, plan: CompressionPlan, example_input: torch.Tensor, folder: Path, *,
                calibration: Sequence[torch.Tensor]) -> tuple[Path, int]:
    """Materialize ``plan`` and write the ONNX file the search would time; returns (path, int8 nodes)."""
    from ..compress import apply, bake, calibrate, set_input_quantizers
    from ..evaluate.latency import export_onnx, module_node_names, quantize_int8

    x = example_input[:1]
    cm = apply(teacher, plan, x)
    calibrate(cm, calibration)
    cm.model.eval()
    bake(cm)
    modules = int8_modules(cm, plan)
    set_input_quantizers(cm, False)
    float_path = folder / "model.onnx"
    export_onnx(cm.model, x, float_path)
    nodes = list(module_node_names(float_path, cm.model, modules).values()) if modules else []
    if not nodes:
        return float_path, 0
    path = folder / "model.int8.onnx"
    quantize_int8(float_path, path, [c.numpy().astype(np.float32) for c in calibration], nodes)
    return path, len(nodes)


def feed_for(example_input: torch.Tensor, batch_size: int = 1, name: str = "input") -> dict[str, np.ndarray]:
    x = example_input[:1]
    return {name: x.repeat(batch_size, *([1] * (x.dim() - 1))).numpy().astype(np.float32)}


def measure_plan(teacher: nn.Module, plan: CompressionPlan, example_input: torch.Tensor, *,
                 calibration: Sequence[torch.Tensor] | None = None, threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, runs: int = 100, rounds: int = 3) -> Measurement:
    """Materialize, export, lower and time ``plan`` as the search does (see the module docstring)."""
    if calibration is None:
        g = torch.Generator().manual_seed(0)
        calibration = [torch.randn(8, *example_input.shape[1:], generator=g)]
    with tempfile.TemporaryDirectory(prefix="autocompress-measure-") as tmp:
        path, n_int8 = export_plan(teacher, plan, example_input, Path(tmp), calibration=calibration)
        m = time_onnx(path, feed_for(example_input, batch_size), threads=threads, warmup=warmup, runs=runs,
                      rounds=rounds)
    m.int8_nodes = n_int8
    return m
