"""ONNX: export a baked candidate and lower its layers to int8 QDQ / int4 ``MatMulNBits`` / float nodes.

Shared by the backends that run ONNX graphs (:mod:`.onnxruntime`, :mod:`.openvino`); the kernel kind of each
module comes from :func:`~.base.resolve_kernels`, the one decision.

- **int8**: ONNX Runtime's static QDQ quantization with calibration (per-channel symmetric int8 weights, uint8
  activations) of exactly the int8 modules' nodes; the runtime fuses it into ``QLinearConv`` / ``QGemm`` /
  ``QLinearMatMul``-style kernels, OpenVINO runs the same graph on its int8 kernels. An 8-bit plan's weights map
  exactly onto int8; a 2-7 bit grid is re-gridded to int8 per channel (error below half an int8 step).
- **int4 weight-only**: a ``Linear`` with <= 4-bit weights and float (or 16-bit) input becomes
  ``com.microsoft.MatMulNBits`` holding the plan's codes and per-channel scales as they are (exact), one scale per
  32-weight block. 2- and 3-bit codes use the 4-bit container (ONNX Runtime's 2-bit kernel measured 3-20x slower
  than its 4-bit one here).
- **float**: everything else; weights already on the plan's grid, stored as float32.

Layers are found in the exported graph by the exporter's scope names (``/layer1/layer1.0/conv1/Conv`` is module
``layer1.0.conv1``) and checked by weight shape, so convolutions whose weights the exporter fused with a
following BatchNorm (renamed ``onnx::Conv_12``) and Linear layers exported as MatMul are still found. A layer that
cannot be found stays float, and the kernel report says so.
"""

from __future__ import annotations

import contextlib
import io
import logging
import math
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from torch import nn

from ..compress import CompressedModel, set_input_quantizers
from ..compress.layers import get_module
from ..compress.quantize import weight_codes
from ..plan import INT4_MAX_BITS
from ..tasks.inputs import INPUT_NAME, Inputs, call, feed, named
from .base import Kernels, resolve_kernels

log = logging.getLogger(__name__)

OUTPUT_NAME = "output"
LOWERED_OPS = ("Conv", "Gemm", "MatMul")
INT4_BLOCK = 32  # MatMulNBits block along K; every block of a row gets the row's scale, so this is exact
OPSET = 17


def export_onnx(model: nn.Module, example_input: Inputs, path: Path) -> None:
    """Export with a dynamic batch dimension on every input (and a dynamic sequence dimension on token ids), inputs
    named as :func:`~autocompress.tasks.inputs.named` names them. Uses the TorchScript exporter (fast); falls back
    to dynamo."""
    model.eval()
    named_inputs = named(model, example_input)
    names = list(named_inputs)
    if isinstance(example_input, dict):
        args, kwargs = (), named_inputs
    else:
        args, kwargs = tuple(named_inputs.values()), None
    # every input has a dynamic batch axis; token ids (integer inputs of two or more dimensions) a dynamic
    # sequence axis too, so an exported sequence model runs at any length
    axes = {n: {0: "batch", 1: "sequence"} if not t.is_floating_point() and t.dim() >= 2 else {0: "batch"}
            for n, t in named_inputs.items()}
    out_axes = {0: "batch"}
    lengths = {t.shape[1] for n, t in named_inputs.items() if 1 in axes[n]}
    if lengths:  # per-token outputs (batch, length, ...) follow the sequence length
        with torch.no_grad():
            out = call(model, example_input)
        if isinstance(out, torch.Tensor) and out.dim() >= 3 and out.shape[1] in lengths:
            out_axes[1] = "sequence"
    options = dict(input_names=names, output_names=[OUTPUT_NAME], opset_version=OPSET,
                   dynamic_axes={**axes, OUTPUT_NAME: out_axes})
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(model, args, str(path), kwargs=kwargs, dynamo=False, **options)
        except Exception as first:  # pragma: no cover - depends on the model
            log.info("TorchScript ONNX export failed (%s); trying the dynamo exporter", first)
            batch = torch.export.Dim("batch")
            shapes = {n: {0: batch} for n in names} if kwargs else tuple({0: batch} for _ in names)
            torch.onnx.export(model, args, str(path), kwargs=kwargs, dynamo=True, input_names=names,
                              output_names=[OUTPUT_NAME], dynamic_shapes=shapes)


class _Reader:
    """ONNX Runtime calibration data reader over input batches (named arrays), fed only the graph's inputs."""

    def __init__(self, batches: Sequence[dict[str, np.ndarray]], input_names: Sequence[str]) -> None:
        self._it = iter([{n: b[n] for n in input_names} for b in batches])

    def get_next(self):
        return next(self._it, None)


def inline_constant_identities(model: onnx.ModelProto) -> int:
    """Replace ``Identity`` nodes of an initializer by a copy of it; returns how many.

    The TorchScript exporter de-duplicates equal initializers through ``Identity`` nodes (e.g. the all-zero biases
    of convolutions with folded, freshly initialized BatchNorms). The quantizer cannot quantize a bias that is not
    an initializer, and the convolution would then stay float. Runtimes fold these nodes anyway.
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


def quantize_int8(float_path: Path, out_path: Path, calib: Sequence[dict[str, np.ndarray]], nodes: list[str]) -> None:
    """Static QDQ int8 (per-channel symmetric weights, uint8 activations) of ``nodes`` only."""
    # ONNX Runtime's quantizer is the field's tool for QDQ graphs; OpenVINO reads the same graph.
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # the quantizer logs a pre-processing hint on the root logger every call
    try:
        with tempfile.TemporaryDirectory(prefix="autocompress-q-") as tmp:
            model = onnx.load(str(float_path))
            input_names = [i.name for i in model.graph.input]
            if inline_constant_identities(model):
                float_path = Path(tmp) / "float.onnx"
                onnx.save(model, str(float_path))
            quantize_static(str(float_path), str(out_path), _Reader(calib, input_names), quant_format=QuantFormat.QDQ,
                            nodes_to_quantize=nodes, per_channel=True, activation_type=QuantType.QUInt8,
                            weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax)
    finally:
        root.setLevel(level)


def onnx_module_name(node_name: str) -> str | None:
    """The module a node of the TorchScript exporter belongs to, from its scope name.

    Each scope level is a called module, named relative to the level above: a child of a called container repeats
    the container's own name (``/layer1/layer1.0/conv1/Conv`` is ``layer1.0.conv1``), a child of a container that is
    not called itself, such as an ``nn.ModuleList`` iterated in ``forward``, carries the container's name
    (``/encoder/layer.0/attention/query/MatMul`` is ``encoder.layer.0.attention.query``).
    """
    if not node_name.startswith("/"):
        return None
    parts = node_name.strip("/").split("/")[:-1]
    if not parts:
        return None
    names, previous = [], ""
    for part in parts:
        # `layer1.0` below `layer1`, `conv.0.0` below `conv.0`: the part repeats the level above
        names.append(part[len(previous) + 1:] if previous and part.startswith(previous + ".") else part)
        previous = part
    return ".".join(names)


def node_module(node_name: str, modules: Iterable[str]) -> str | None:
    """The module (one of ``modules``) a weighted node belongs to: :func:`onnx_module_name`, or, when that names no
    module, the one module whose name holds the scope's names in order with the same first and last name (a
    container that is not called and whose name the exporter drops, like an ``nn.ModuleDict``:
    ``/layer.0/q/MatMul`` is ``layer.0.attn.q``)."""
    name = onnx_module_name(node_name)
    names = set(modules)
    if name is None or name in names:
        return name
    parts = name.split(".")

    def holds(candidate: str) -> bool:
        it = iter(candidate.split("."))
        return all(p in it for p in parts)  # an ordered subsequence

    found = [m for m in names if m.split(".")[0] == parts[0] and m.split(".")[-1] == parts[-1] and holds(m)]
    return found[0] if len(found) == 1 else name


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
        if node.op_type in LOWERED_OPS and len(node.input) > 1 and node.input[1] in inits:  # weighted nodes
            name = node_module(node.name, modules)
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


def lower_onnx(cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs], path: Path,
               kinds: Iterable[str]) -> Kernels:
    """Export the baked ``cm`` to ONNX at ``path`` with each module lowered to the kernel
    :func:`~.base.resolve_kernels` picks among ``kinds`` (see the module docstring); returns what each module runs.
    """
    if not cm.baked:
        raise ValueError("lowering needs a baked candidate (autocompress.compress.bake)")
    kernels = resolve_kernels(cm, kinds)
    modules = {name: get_module(cm.model, name) for names in cm.modules.values() for name in names}
    with tempfile.TemporaryDirectory(prefix="autocompress-lower-") as tmp:
        float_path = Path(tmp) / "float.onnx"
        set_input_quantizers(cm, False)  # the runtime quantizes activations itself
        try:
            export_onnx(cm.model, example_input, float_path)
        finally:
            set_input_quantizers(cm, True)
        model = onnx.load(str(float_path))
        nodes = module_nodes(model, modules)
        for name in [*kernels.int8, *kernels.int4]:
            node = nodes.get(name)
            if node is None:
                kernels.add(name, "float", f"{kernels.kind(name)} planned, but its node was not found in the ONNX "
                                           "graph: kept float")
            elif kernels.kind(name) == "int4" and node.op_type not in ("Gemm", "MatMul"):
                kernels.add(name, "float", f"int4 planned, but its node is a {node.op_type}: kept float")
        current = float_path
        if kernels.int8:
            if not calibration:
                raise ValueError("int8 layers need calibration batches")
            current = Path(tmp) / "int8.onnx"
            quantize_int8(float_path, current, [feed(c) for c in calibration],
                          [nodes[n].name for n in kernels.int8])
            model = onnx.load(str(current))
        for name in list(kernels.int4):
            node = next((nd for nd in model.graph.node if nd.name == nodes[name].name), None)
            bits = cm.weight_bits[name]
            why = "node disappeared during int8 quantization" if node is None else \
                _int4_node(model.graph, node, weight_codes(modules[name].weight, bits)[0])
            if why is not None:
                kernels.add(name, "float", f"int4 planned, kept float: {why}")
        if kernels.int4 and not any(o.domain == "com.microsoft" for o in model.opset_import):
            model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
        onnx.save(model, str(path))
    return kernels


def graph_ops(path: Path) -> dict[str, int]:
    """Operator counts of an ONNX file as stored."""
    return dict(Counter(n.op_type for n in onnx.load(str(path)).graph.node))


__all__ = ["export_onnx", "lower_onnx", "module_nodes", "node_module", "onnx_module_name", "quantize_int8", "graph_ops",
           "INPUT_NAME", "OUTPUT_NAME", "LOWERED_OPS"]
