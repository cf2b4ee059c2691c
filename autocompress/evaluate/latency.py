"""Measured latency of a materialized candidate in ONNX Runtime.

The candidate is exported to ONNX as it really is (channels removed, low-rank factors in place, baked weights),
then the layers whose plan is int8-runnable (weights <= 8 bits and 8-bit activations) are lowered by ONNX
Runtime's static QDQ quantization with calibration, so they run on the runtime's int8 kernels. Every other layer
runs the runtime's float kernels, as it would in deployment: a weight-only or 16-bit-activation layer has no
faster kernel on this backend, and unstructured zeros do not speed up dense kernels. Nothing here is assumed:
the number is the median of timed ``InferenceSession.run`` calls at a fixed thread count.
"""

from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import torch
from torch import nn

log = logging.getLogger(__name__)

INPUT_NAME, OUTPUT_NAME = "input", "output"
INT8_OPS = ("Conv", "Gemm", "MatMul")


@dataclass(frozen=True)
class LatencyResult:
    """Median and spread of end-to-end ``InferenceSession.run`` time, in milliseconds."""

    latency_ms: float
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch_size: int
    int8_nodes: int
    backend: str = "onnxruntime"


def export_onnx(model: nn.Module, example_input: torch.Tensor, path: Path) -> None:
    """Export with a dynamic batch dimension. Uses the TorchScript exporter (fast); falls back to dynamo."""
    model.eval()
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, opset_version=17)
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, (example_input,), str(path), dynamo=False, **kwargs)
        except Exception as first:  # pragma: no cover - depends on the model
            log.info("TorchScript ONNX export failed (%s); trying the dynamo exporter", first)
            torch.onnx.export(model, (example_input,), str(path), dynamo=True, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_shapes=({0: torch.export.Dim("batch")},))


def int8_node_names(onnx_path: Path, weight_names: set[str]) -> list[str]:
    """Names of the Conv/Gemm/MatMul nodes whose weight initializer is one of ``weight_names``."""
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type in INT8_OPS and any(i in weight_names and i in inits for i in node.input):
            out.append(node.name)
    return out


class _Reader:
    """ONNX Runtime calibration data reader over a list of input batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._it = iter([{INPUT_NAME: b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def quantize_int8(float_path: Path, out_path: Path, calib: Sequence[np.ndarray], nodes: list[str]) -> None:
    """Static QDQ int8 (per-channel symmetric weights, uint8 activations) of ``nodes`` only."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger every call
    try:
        quantize_static(str(float_path), str(out_path), _Reader(calib), quant_format=QuantFormat.QDQ,
                        nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)


def time_session(onnx_path: Path, example_input: torch.Tensor, *, threads: int = 1, batch_size: int = 1,
                 warmup: int = 20, repeats: int = 100) -> tuple[float, float, float, int]:
    """``(median, p10, p90, runs)`` in ms of ``session.run`` on a batch built from ``example_input``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    x = example_input[:1].repeat(batch_size, *([1] * (example_input.dim() - 1))).numpy().astype(np.float32)
    feed = {sess.get_inputs()[0].name: x}
    for _ in range(warmup):
        sess.run(None, feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter_ns()
        sess.run(None, feed)
        times.append((time.perf_counter_ns() - t0) / 1e6)
    q = statistics.quantiles(times, n=10)
    return statistics.median(times), q[0], q[-1], len(times)


def measure_latency(model: nn.Module, example_input: torch.Tensor, *, int8_weights: Iterable[str] = (),
                    calibration: Sequence[torch.Tensor] = (), threads: int = 1, batch_size: int = 1,
                    warmup: int = 20, repeats: int = 100, keep_dir: Path | None = None) -> LatencyResult:
    """Export ``model`` (float, baked), lower the layers owning ``int8_weights`` to int8, time it in ONNX Runtime.

    int8_weights: parameter names (``features.0.weight``) whose layers run as int8 kernels
    calibration:  input batches for the int8 activation ranges (needed when ``int8_weights`` is not empty)
    """
    weights = set(int8_weights)
    with tempfile.TemporaryDirectory(prefix="autocompress-onnx-") as tmp:
        folder = Path(keep_dir) if keep_dir else Path(tmp)
        float_path = folder / "model.onnx"
        export_onnx(model, example_input, float_path)
        path = float_path
        nodes: list[str] = []
        if weights:
            nodes = int8_node_names(float_path, weights)
            if nodes:
                if not calibration:
                    raise ValueError("int8 layers need calibration batches")
                path = folder / "model.int8.onnx"
                quantize_int8(float_path, path, [c.numpy().astype(np.float32) for c in calibration], nodes)
        median, p10, p90, runs = time_session(path, example_input, threads=threads, batch_size=batch_size,
                                              warmup=warmup, repeats=repeats)
    return LatencyResult(latency_ms=median, p10_ms=p10, p90_ms=p90, runs=runs, threads=threads,
                         batch_size=batch_size, int8_nodes=len(nodes))
