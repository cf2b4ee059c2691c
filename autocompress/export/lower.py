"""Lower a baked candidate to ONNX Runtime kernels, layer by layer, as its plan says.

- **int8**: a layer whose weights are <= 8 bits and whose input is 8-bit runs as an int8 kernel: ONNX Runtime's
  static QDQ quantization with calibration (per-channel symmetric int8 weights, uint8 activations), fused by the
  runtime into ``QLinearConv`` / ``QGemm`` / ``MatMulInteger``-style kernels. The same lowering the search
  measures. An 8-bit plan's weights map exactly onto int8; a 2-7 bit grid is re-gridded to int8 per channel
  (error below half an int8 step).
- **int4 weight-only**: a ``Linear`` with <= 4-bit weights and float (or 16-bit) input runs as
  ``com.microsoft.MatMulNBits`` with 4-bit codes: the plan's codes and per-channel scales are written as they are
  (exact), one scale per 32-weight block. 2- and 3-bit codes use the 4-bit container: ONNX Runtime's 2-bit
  kernel measured 3-20x slower than its 4-bit one here. If the runtime refuses the graph, those layers run float.
- **measured, not assumed**: on small models at batch 1 both can be *slower* than float (int8 QDQ has a higher
  fixed cost per node, MatMulNBits loses to a float Gemm on small matrices). With ``int8="auto"`` /
  ``int4="auto"`` (the default of :func:`autocompress.export.artifact.export_plan`) the export times the model
  with and without them and keeps the fastest lowering, preferring the more quantized one within 3 %; a layer
  kept float then runs its on-grid weights with float activations (accuracy is measured on the result).
- **float**: everything else (float weights, 5-8 bit weight-only layers, 16-bit activations: no faster kernel on
  this backend). Their weights are already on the plan's grid, stored as float32 in the ONNX file.

Layers are found in the exported graph by the exporter's scope names (``/layer1/layer1.0/conv1/Conv`` is module
``layer1.0.conv1``) and checked by weight shape, so convolutions whose weights the exporter fused with a
following BatchNorm (renamed ``onnx::Conv_12``) are still found. A layer that cannot be found stays float, and the
lowering report says so.
"""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..compress import CompressedModel, set_input_quantizers
from ..compress.layers import get_module
from ..evaluate.latency import export_onnx, quantize_int8

log = logging.getLogger(__name__)

LOWERED_OPS = ("Conv", "Gemm", "MatMul")
INT4_BLOCK = 32  # MatMulNBits block along K; every block of a row gets the row's scale, so this is exact
INT4_MAX_BITS = 4


@dataclass
class Lowering:
    """How each compressed module runs in the ONNX artifact."""

    int8: list[str] = field(default_factory=list)
    int4: list[str] = field(default_factory=list)
    float: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"int8": self.int8, "int4": self.int4, "float": self.float, "notes": self.notes}


def onnx_module_name(node_name: str) -> str | None:
    """``/layer1/layer1.0/conv1/Conv`` -> ``layer1.0.conv1`` (TorchScript exporter scope names)."""
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]
    if not parts:
        return None
    return ".".join(p.rsplit(".", 1)[-1] for p in parts)


def _weight_layout(node: onnx.NodeProto) -> str:
    """``"NK"`` when the node's weight is stored (out, in) like torch's, ``"KN"`` when transposed."""
    if node.op_type == "Gemm":
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return "NK" if trans_b else "KN"
    if node.op_type == "MatMul":
        return "KN"
    return "NK"


def module_nodes(model: onnx.ModelProto, modules: dict[str, nn.Module]) -> dict[str, onnx.NodeProto]:
    """``{module name: its Conv/Gemm/MatMul node}`` for modules found once, with a weight of the right shape."""
    inits = {i.name: i for i in model.graph.initializer}
    found: dict[str, list[onnx.NodeProto]] = {}
    for node in model.graph.node:
        if node.op_type in LOWERED_OPS:
            name = onnx_module_name(node.name)
            if name in modules:
                found.setdefault(name, []).append(node)
    out = {}
    for name, nodes in found.items():
        if len(nodes) != 1 or len(nodes[0].input) < 2 or nodes[0].input[1] not in inits:
            continue
        node = nodes[0]
        shape = tuple(inits[node.input[1]].dims)
        wshape = tuple(modules[name].weight.shape)
        expected = wshape if _weight_layout(node) == "NK" else wshape[::-1]
        if shape == expected:
            out[name] = node
    return out


def _int4_node(graph: onnx.GraphProto, node: onnx.NodeProto, codes: np.ndarray) -> str | None:
    """Replace a Gemm/MatMul by MatMulNBits holding ``codes`` (torch layout (N, K)); returns why not, or None."""
    inits = {i.name: i for i in graph.initializer}
    w = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0
                                   or attrs.get("beta", 1.0) != 1.0):
        return "Gemm with transA/alpha/beta is not a plain matrix product"
    w_nk = w if _weight_layout(node) == "NK" else w.T
    n, k = w_nk.shape
    q = codes.reshape(n, k)
    qmax_row = np.abs(q).max(axis=1)
    scale = np.where(qmax_row > 0, np.abs(w_nk).max(axis=1) / np.maximum(qmax_row, 1), 0.0).astype(np.float32)
    if not np.allclose(q * scale[:, None], w_nk, rtol=1e-5, atol=1e-6 * (float(np.abs(w_nk).max()) or 1.0)):
        return "the graph's weight is not the plan's codes times a per-channel scale"
    bias = None
    if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2]:
        c = inits.get(node.input[2])
        if c is None or tuple(c.dims) != (n,):
            return "Gemm bias is not a constant vector"
        bias = node.input[2]
    zero = 2 ** (INT4_MAX_BITS - 1)
    k_blocks = math.ceil(k / INT4_BLOCK)
    padded = np.full((n, k_blocks * INT4_BLOCK), zero, dtype=np.uint8)
    padded[:, :k] = (q + zero).astype(np.uint8)
    pairs = padded.reshape(n, k_blocks, INT4_BLOCK // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    scales = np.repeat(scale[:, None], k_blocks, axis=1).reshape(-1).astype(np.float32)
    base = node.name.strip("/").replace("/", "_") or node.output[0]
    b_name, s_name = f"{base}.int4_weight", f"{base}.int4_scales"
    graph.initializer.extend([numpy_helper.from_array(packed, b_name), numpy_helper.from_array(scales, s_name)])
    inputs = [node.input[0], b_name, s_name] + (["", "", bias] if bias else [])
    new = helper.make_node("MatMulNBits", inputs, list(node.output), name=node.name + "_int4",
                           domain="com.microsoft", K=k, N=n, bits=INT4_MAX_BITS, block_size=INT4_BLOCK)
    idx = list(graph.node).index(node)
    graph.node.remove(node)
    graph.node.insert(idx, new)
    used = {i for nd in graph.node for i in nd.input}
    for init in list(graph.initializer):
        if init.name == node.input[1] and init.name not in used:
            graph.initializer.remove(init)
    return None


def lower(cm: CompressedModel, example_input: torch.Tensor, calibration: list[torch.Tensor], path: Path, *,
          codes: dict[str, np.ndarray] | None = None, int4: bool = True, int8: bool = True) -> Lowering:
    """Export ``cm`` (baked) to ONNX at ``path`` with its layers lowered per plan (see module docstring).

    codes: module name -> integer weight codes (torch layout) of quantized modules, for exact int4 lowering.
    """
    if not cm.baked:
        raise ValueError("lower needs a baked candidate (autocompress.compress.bake)")
    codes = codes or {}
    report = Lowering()
    modules = {name: get_module(cm.model, name) for _, names in cm.modules.items() for name in names}
    layer_of = {m: layer for layer, names in cm.modules.items() for m in names}
    with tempfile.TemporaryDirectory(prefix="autocompress-lower-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        set_input_quantizers(cm, False)  # the runtime quantizes activations itself
        try:
            export_onnx(cm.model, example_input, float_path)
        finally:
            set_input_quantizers(cm, True)
        model = onnx.load(str(float_path))
        nodes = module_nodes(model, modules)
        int8_nodes, int4_modules = [], []
        for name, mod in modules.items():
            bits, act = cm.weight_bits.get(name, 32), cm.act_bits.get(layer_of[name], 32)
            planned_int8 = cm.plan.layer(layer_of[name]).int8_kernel  # the one predicate (see LayerPlan)
            node = nodes.get(name)
            if cm.weight_sharing.get(name, False):
                report.float.append(name)
                report.notes[name] = (f"k-means shared {bits}-bit weights run as float32 (a codebook, not a uniform "
                                      "grid: smaller on disk only)")
            elif planned_int8 and not int8:
                report.float.append(name)
                report.notes[name] = "int8 planned, run as float32 (int8 lowering off)"
            elif planned_int8:
                if node is None:
                    report.float.append(name)
                    report.notes[name] = "int8 planned, but its node was not found in the ONNX graph: kept float"
                else:
                    int8_nodes.append(node.name)
                    report.int8.append(name)
            elif bits <= INT4_MAX_BITS and int4 and isinstance(mod, nn.Linear) and node is not None \
                    and node.op_type in ("Gemm", "MatMul") and name in codes:
                int4_modules.append(name)
            else:
                report.float.append(name)
                if bits < 32:
                    why = ("16-bit activations: no int16 kernel on this backend" if act == 16 else
                           "weight-only quantization: no faster kernel for this layer type/bit-width")
                    report.notes[name] = f"{bits}-bit weights run as float32 ({why})"
        current = float_path
        if int8_nodes:
            current = Path(tmp) / "int8.onnx"
            quantize_int8(float_path, current, [c.numpy().astype(np.float32) for c in calibration], int8_nodes)
        model = onnx.load(str(current))
        for name in int4_modules:
            node = next((nd for nd in model.graph.node if nd.name == nodes[name].name), None)
            why = "node disappeared during int8 quantization" if node is None else \
                _int4_node(model.graph, node, codes[name])
            if why is None:
                report.int4.append(name)
            else:
                report.float.append(name)
                report.notes[name] = f"int4 planned, kept float: {why}"
        if report.int4 and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(path))
        if report.int4:
            try:  # the runtime must accept the int4 kernels; otherwise those layers run float
                make_session(path).run(None, {model.graph.input[0].name: example_input.numpy().astype(np.float32)})
            except Exception as e:
                log.warning("ONNX Runtime refused the int4 (MatMulNBits) layers (%s); keeping them float", e)
                report = lower(cm, example_input, calibration, path, codes=codes, int4=False, int8=int8)
                for name in int4_modules:
                    report.notes[name] = f"int4 planned, kept float: ONNX Runtime refused MatMulNBits ({e})"[:300]
    return report


def make_session(path: Path, threads: int = 1, optimized_path: Path | None = None):
    """An ONNX Runtime CPU session with the options latency is measured with."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def graph_ops(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX file as stored."""
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


def runtime_ops(path: Path) -> dict[str, int]:
    """Operator counts of the graph ONNX Runtime actually runs (after its fusions, e.g. QDQ -> QLinearConv)."""
    with tempfile.TemporaryDirectory(prefix="autocompress-ops-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        with contextlib.suppress(Exception):
            make_session(path, optimized_path=out)
        if not out.is_file():
            return {}
        return graph_ops(out)


__all__ = ["lower", "Lowering", "module_nodes", "onnx_module_name", "make_session", "graph_ops", "runtime_ops"]
