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
import copy
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
    """Names of the Conv/Gemm/MatMul nodes whose weight initializer is one of ``weight_names``.

    Only finds layers whose weight keeps its parameter name in the exported graph; the exporter renames the weight
    of a convolution with a folded BatchNorm and of a Linear exported as MatMul. Use :func:`module_node_names`.
    """
    graph = onnx.load(str(onnx_path), load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    out = []
    for node in graph.node:
        if node.op_type in INT8_OPS and any(i in weight_names and i in inits for i in node.input):
            out.append(node.name)
    return out


def module_node_names(onnx_path: Path, model: nn.Module, modules: Iterable[str]) -> dict[str, str]:
    """``{module: its Conv/Gemm/MatMul node}`` in the exported graph of ``model``, for each of ``modules`` found.

    Found by the exporter's scope names (``/layer1/layer1.0/conv1/Conv`` is module ``layer1.0.conv1``) and checked by
    the weight's shape (transposed for MatMul), so a convolution whose weight the exporter fused with a following
    BatchNorm (renamed ``onnx::Conv_12``) and a bias-free Linear or a Linear on 3-D input (exported as MatMul with
    a transposed, renamed weight) are found too. The same matching as the export's lowering
    (:func:`autocompress.export.lower.module_nodes`). A module not found is left out (it then runs float).
    """
    from ..export.lower import module_nodes

    wanted = {m: model.get_submodule(m) for m in modules}
    if not wanted:
        return {}
    graph = onnx.load(str(onnx_path), load_external_data=False)
    found = module_nodes(graph, wanted)
    missing = sorted(set(wanted) - set(found))
    if missing:
        log.info("int8 planned but no unique Conv/Gemm/MatMul node found for %s: they run float", missing)
    return {m: found[m].name for m in wanted if m in found}


class _Reader:
    """ONNX Runtime calibration data reader over a list of input batches."""

    def __init__(self, batches: Sequence[np.ndarray]) -> None:
        self._it = iter([{INPUT_NAME: b} for b in batches])

    def get_next(self):
        return next(self._it, None)


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Replace ``Identity`` nodes of an initializer by a copy of it; returns how many.

    The TorchScript exporter de-duplicates equal initializers through ``Identity`` nodes (e.g. the all-zero biases
    of convolutions with folded, freshly initialized BatchNorms). The quantizer cannot quantize a bias that is not
    an initializer, and ONNX Runtime then keeps such a convolution float. ONNX Runtime folds these nodes anyway.
    """
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    done = 0
    for node in list(graph.node):
        if node.op_type == "Identity" and node.input[0] in inits and node.output[0] not in outputs:
            dup = onnx.TensorProto()
            dup.CopyFrom(inits[node.input[0]])
            dup.name = node.output[0]
            graph.initializer.append(dup)
            graph.node.remove(node)
            done += 1
    return done


def quantize_int8(float_path: Path, out_path: Path, calib: Sequence[np.ndarray], nodes: list[str]) -> None:
    """Static QDQ int8 (per-channel symmetric weights, uint8 activations) of ``nodes`` only."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger every call
    try:
        with tempfile.TemporaryDirectory(prefix="autocompress-q-") as tmp:
            model = onnx.load(str(float_path))
            if inline_constant_identities(model):
                float_path = Path(tmp) / "float.onnx"
                onnx.save(model, str(float_path))
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


def measure_latency(model: nn.Module, example_input: torch.Tensor, *, int8_modules: Iterable[str] = (),
                    int8_weights: Iterable[str] = (), calibration: Sequence[torch.Tensor] = (), threads: int = 1,
                    batch_size: int = 1, warmup: int = 20, repeats: int = 100, keep_dir: Path | None = None,
                    backend: str = "onnxruntime") -> LatencyResult:
    """Export ``model`` (float, baked), lower ``int8_modules`` to int8, time it in ONNX Runtime.

    int8_modules: module names (``features.0``) whose Conv/Linear runs as an int8 kernel (found in the graph by
                  :func:`module_node_names`, BatchNorm-folded and MatMul layers included)
    int8_weights: the same given as parameter names (``features.0.weight``); kept for older callers
    calibration:  input batches for the int8 activation ranges (needed when int8 layers are given)
    backend:      ``onnxruntime`` (default) or ``torch`` (PyTorch eager, :func:`measure_latency_torch`; int8 layers
                  then run as float: eager PyTorch has no int8 kernel for them here)
    """
    if backend == "torch":
        return measure_latency_torch(model, example_input, threads=threads, batch_size=batch_size, warmup=warmup,
                                     repeats=repeats)
    if backend != "onnxruntime":
        raise ValueError(f"unknown latency backend {backend!r}; choose onnxruntime or torch")
    wanted = list(dict.fromkeys([*int8_modules, *(w.removesuffix(".weight") for w in int8_weights)]))
    with tempfile.TemporaryDirectory(prefix="autocompress-onnx-") as tmp:
        folder = Path(keep_dir) if keep_dir else Path(tmp)
        float_path = folder / "model.onnx"
        export_onnx(model, example_input, float_path)
        path = float_path
        nodes: list[str] = []
        if wanted:
            nodes = list(module_node_names(float_path, model, wanted).values())
            if nodes:
                if not calibration:
                    raise ValueError("int8 layers need calibration batches")
                path = folder / "model.int8.onnx"
                quantize_int8(float_path, path, [c.numpy().astype(np.float32) for c in calibration], nodes)
        median, p10, p90, runs = time_session(path, example_input, threads=threads, batch_size=batch_size,
                                              warmup=warmup, repeats=repeats)
    return LatencyResult(latency_ms=median, p10_ms=p10, p90_ms=p90, runs=runs, threads=threads,
                         batch_size=batch_size, int8_nodes=len(nodes))


def torch_batch(example_input: torch.Tensor, batch_size: int = 1) -> torch.Tensor:
    x = example_input[:1]
    return x.repeat(batch_size, *([1] * (x.dim() - 1))).contiguous()


def time_torch(model: nn.Module, x: torch.Tensor, *, threads: int = 1, warmup: int = 20,
               repeats: int = 100) -> list[float]:
    """ms of each of ``repeats`` timed eager ``model(x)`` calls (``torch.inference_mode``, ``threads`` intra-op
    threads; the previous thread count is restored)."""
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, threads))
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                model(x)
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter_ns()
                model(x)
                times.append((time.perf_counter_ns() - t0) / 1e6)
    finally:
        torch.set_num_threads(before)
    return times


def strip_input_quantizers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without a candidate's activation-quantizer hooks (what a deployed eager model runs)."""
    from ..compress.quantize import InputQuantizer

    try:
        model = copy.deepcopy(model)
    except Exception:  # pragma: no cover - a module that cannot be copied is timed as it is
        return model
    for m in model.modules():
        for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, InputQuantizer)]:
            del m._forward_pre_hooks[key]
    return model


def measure_latency_torch(model: nn.Module, example_input: torch.Tensor, *, threads: int = 1, batch_size: int = 1,
                          warmup: int = 20, repeats: int = 100) -> LatencyResult:
    """Median of timed eager PyTorch forward passes on CPU (batch ``batch_size``, ``threads`` threads).

    The model runs as it is: a baked candidate's weights are float tensors on the plan's grid, so quantized and
    sparse layers run the float kernels (eager PyTorch has no int8 kernels for them here); BatchNorm is not folded.
    A candidate's activation-quantizer hooks are removed (on a copy) first, as a deployed model would not call them.
    """
    model = strip_input_quantizers(model).eval()
    times = time_torch(model, torch_batch(example_input, batch_size), threads=threads, warmup=warmup,
                       repeats=repeats)
    q = statistics.quantiles(times, n=10)
    return LatencyResult(latency_ms=statistics.median(times), p10_ms=q[0], p90_ms=q[-1], runs=len(times),
                         threads=threads, batch_size=batch_size, int8_nodes=0, backend="torch")
