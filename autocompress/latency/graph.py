"""The exported ONNX graph as plain records, its tensor shapes, and ONNX Runtime's own level-2 fusions.

Everything here runs once per teacher (and student depth): the predictor then works on these records only.

- :class:`OnnxGraph` - nodes (op type, inputs, outputs, attributes) in topological order, initializer shapes.
- :func:`tensor_shapes` - the shape of every tensor, read from one ONNX Runtime run with every intermediate tensor
  made a graph output (works for any op, including shape computations that static inference cannot follow).
- :func:`runtime_fusions` - which nodes ONNX Runtime fuses or folds at its extended (level 2) optimization on the
  float graph: the float part of a candidate is lowered as the runtime itself lowers the teacher. Layout
  transforms (level 3, NCHWc / NHWC) and the int8 QDQ rewrites depend on the plan and are simulated in
  :mod:`autocompress.latency.lowering`.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..runtime.onnxruntime import OnnxRuntimeBackend

log = logging.getLogger(__name__)

# Nodes that never become kernels in ONNX Runtime (removed or folded before the run).
NO_KERNEL_OPS = frozenset({"Identity", "Constant", "Dropout"})


@dataclass
class GNode:
    """One ONNX node: ``op`` type, ``domain`` ("" for the default one), tensor names, plain attributes."""

    name: str
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    domain: str = ""


def _attr_value(a: onnx.AttributeProto) -> Any:
    if a.type == onnx.AttributeProto.TENSOR:
        return numpy_helper.to_array(a.t).tolist()
    if a.type == onnx.AttributeProto.GRAPH:
        return None  # subgraphs (If/Loop) are not followed
    value = helper.get_attribute_value(a)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list):
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in value]
    return value


@dataclass
class OnnxGraph:
    """A graph as records: nodes in topological order, initializer shapes, graph inputs/outputs."""

    nodes: list[GNode]
    initializers: dict[str, tuple[int, ...]]
    inputs: list[str]
    outputs: list[str]

    @classmethod
    def from_model(cls, model: onnx.ModelProto) -> OnnxGraph:
        g = model.graph
        inits = {i.name: tuple(int(d) for d in i.dims) for i in g.initializer}
        nodes = []
        for i, n in enumerate(g.node):
            attrs = {a.name: _attr_value(a) for a in n.attribute}
            if n.op_type == "Constant":  # a constant is data, not a kernel: record it as an initializer
                for out in n.output:
                    value = attrs.get("value")
                    inits[out] = tuple(np.asarray(value).shape) if value is not None else ()
                continue
            if n.op_type == "Identity" and n.input and n.input[0] in inits:  # the exporter's shared constants
                inits[n.output[0]] = inits[n.input[0]]
                continue
            nodes.append(GNode(name=n.name or f"node{i}", op=n.op_type, inputs=list(n.input),
                               outputs=list(n.output), attrs=attrs, domain=n.domain or ""))
        inputs = [i.name for i in g.input if i.name not in inits]
        return cls(nodes=_toposort(nodes, set(inits) | set(inputs)), initializers=inits, inputs=inputs,
                   outputs=[o.name for o in g.output])

    def consumers(self) -> dict[str, list[int]]:
        out: dict[str, list[int]] = {}
        for i, n in enumerate(self.nodes):
            for t in n.inputs:
                if t:
                    out.setdefault(t, []).append(i)
        return out

    def producers(self) -> dict[str, int]:
        return {t: i for i, n in enumerate(self.nodes) for t in n.outputs if t}


def _toposort(nodes: list[GNode], available: set[str]) -> list[GNode]:
    """Stable topological order (the exporter's order when it already is one)."""
    ready = set(available)
    pending = list(nodes)
    out: list[GNode] = []
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all((not t) or t in ready for t in n.inputs):
                out.append(n)
                ready.update(n.outputs)
                progressed = True
            else:
                rest.append(n)
        if not progressed:  # a cycle or a dangling input: keep the given order for the rest
            out.extend(rest)
            break
        pending = rest
    return out


def _session(model: onnx.ModelProto, level: str, optimized_path: Path | None = None):
    # shape probes of pruned graphs may fail on purpose; the caller reports it (log level 4: fatal only)
    return OnnxRuntimeBackend().inference_session(model.SerializeToString(), level=level,
                                                  optimized_path=optimized_path, log_level=4)


def tensor_shapes(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, tuple[int, ...]]:
    """Shape of every node output, graph input and initializer, from one unoptimized ONNX Runtime run."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    have = {o.name for o in m.graph.output}
    names = [o for n in m.graph.node if n.op_type != "Constant" for o in n.output if o and o not in have]
    for name in names:
        m.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = _session(m, "disable")
    values = sess.run(None, feeds)
    shapes = {o.name: tuple(int(d) for d in np.shape(v)) for o, v in zip(sess.get_outputs(), values, strict=True)}
    for name, value in feeds.items():
        shapes[name] = tuple(int(d) for d in value.shape)
    for init in m.graph.initializer:
        shapes[init.name] = tuple(int(d) for d in init.dims)
    return shapes


def optimized_graph(model: onnx.ModelProto, level: str = "extended") -> OnnxGraph:
    """The graph ONNX Runtime (CPU) runs after its optimizations at ``level``, read back as records."""
    with tempfile.TemporaryDirectory(prefix="autocompress-ort-") as tmp:
        out = Path(tmp) / "optimized.onnx"
        _session(model, level, out)
        optimized = onnx.load(str(out), load_external_data=False)
    return OnnxGraph.from_model(optimized)


@dataclass
class Fusions:
    """How ONNX Runtime's extended optimizations lower the float graph.

    kernel_of:  original node name -> index into ``kernels`` of the runtime node that computes it
                (fused nodes map to the node they were fused into; folded or removed nodes are absent)
    kernels:    the runtime's nodes (op type after fusion, e.g. FusedConv), topological order
    members:    kernel index -> original node names it computes
    """

    kernels: list[GNode]
    kernel_of: dict[str, int]
    members: dict[int, list[str]]


def runtime_fusions(graph: OnnxGraph, optimized: OnnxGraph) -> Fusions:
    """Match the runtime's optimized nodes to the original nodes through tensor names.

    A runtime node producing an original node's output tensor computes that node. An original node whose outputs
    are gone from the optimized graph was fused into the node its outputs flowed into, unless nothing in the
    optimized graph depends on it at runtime (folded into a constant, or removed).
    """
    produced = {t: k for k, n in enumerate(optimized.nodes) for t in n.outputs if t}
    consumers = graph.consumers()
    kernel_of: dict[str, int] = {}
    for node in graph.nodes:
        hit = next((produced[t] for t in node.outputs if t in produced), None)
        if hit is not None:
            kernel_of[node.name] = hit
    # nodes whose outputs vanished: follow their (single) consumer chain to a kernel that reads no folded constant
    optimized_inputs = {t for n in optimized.nodes for t in n.inputs if t}
    by_name = {n.name: n for n in graph.nodes}
    for node in graph.nodes:
        if node.name in kernel_of or node.op in NO_KERNEL_OPS:
            continue
        if any(t in optimized_inputs for t in node.outputs):
            continue  # its output is read by a runtime node: a kernel we could not match; handled as standalone
        current, seen = node, 0
        while current is not None and seen < 16:
            seen += 1
            nexts = [graph.nodes[i] for t in current.outputs for i in consumers.get(t, [])]
            if len(nexts) != 1:
                break
            nxt = nexts[0]
            if nxt.name in kernel_of:
                # fused only when the node is on the data path (not a shape computation folded to a constant)
                if _data_dependent(node, graph, by_name):
                    kernel_of[node.name] = kernel_of[nxt.name]
                break
            current = nxt
    members: dict[int, list[str]] = {}
    for name, k in kernel_of.items():
        members.setdefault(k, []).append(name)
    return Fusions(kernels=optimized.nodes, kernel_of=kernel_of, members=members)


def _data_dependent(node: GNode, graph: OnnxGraph, by_name: dict[str, GNode]) -> bool:
    """Whether ``node`` computes on activation data (not only on shapes and constants)."""
    return node.op not in ("Shape", "Size", "ConstantOfShape", "Gather", "Unsqueeze", "Squeeze", "Concat", "Cast",
                           "Range")


def model_with_shapes(model: onnx.ModelProto, new_shapes: dict[str, Sequence[int]],
                      node_inputs: dict[tuple[str, int], Sequence[int]] | None = None,
                      node_groups: dict[str, int] | None = None) -> onnx.ModelProto:
    """A copy of ``model`` with zero tensors of new shapes, for shape probes.

    new_shapes:  initializer name -> shape (every reader sees it)
    node_inputs: (node name, input index) -> shape: that node alone reads a new initializer (the exporter may
                 share one constant between nodes, e.g. equal folded BatchNorm biases)
    node_groups: node name -> new ``group`` attribute (a pruned depthwise convolution)
    """
    m = onnx.ModelProto()
    m.CopyFrom(model)
    dtypes = {init.name: init.data_type for init in m.graph.initializer}
    for node in m.graph.node:  # constants may also come as Constant nodes
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    dtypes.update({o: a.t.data_type for o in node.output})
        elif node.op_type == "Identity" and node.input and node.input[0] in dtypes:  # a shared constant
            dtypes.update({o: dtypes[node.input[0]] for o in node.output})
    for i, init in enumerate(m.graph.initializer):
        if init.name in new_shapes:
            dtype = helper.tensor_dtype_to_np_dtype(init.data_type)
            zero = numpy_helper.from_array(np.zeros(tuple(new_shapes[init.name]), dtype=dtype), init.name)
            m.graph.initializer[i].CopyFrom(zero)
    _equal_splits_follow_their_input(m)
    for node in m.graph.node:
        if node_groups and node.name in node_groups:
            for a in node.attribute:
                if a.name == "group":
                    a.i = int(node_groups[node.name])
        for idx, name in enumerate(node.input):
            shape = (node_inputs or {}).get((node.name, idx))
            if shape is None or name not in dtypes:
                continue
            fresh = f"{name}::{node.name}::{idx}"
            dtype = helper.tensor_dtype_to_np_dtype(dtypes[name])
            m.graph.initializer.append(numpy_helper.from_array(np.zeros(tuple(shape), dtype=dtype), fresh))
            node.input[idx] = fresh
    return m


def _equal_splits_follow_their_input(m: onnx.ModelProto) -> None:
    """A Split into equal parts given as constant sizes (a fused query/key/value projection split in three) becomes
    a split into that many equal parts, the same op on the teacher's shapes, which follows its input when pruning
    resizes it (cutting the same heads from each part keeps them equal)."""
    consts = {init.name: numpy_helper.to_array(init) for init in m.graph.initializer}
    for node in m.graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    consts.update({o: numpy_helper.to_array(a.t) for o in node.output})
    # opsets 13-17 split into equal parts when no sizes are given, and refuse a size that does not divide (from
    # 18 on, `num_outputs` would allow a smaller last part: a wrong probe rather than a refused one)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
    if not 13 <= opset <= 17:
        return
    for node in m.graph.node:
        if node.op_type != "Split" or len(node.input) < 2 or node.input[1] not in consts:
            continue
        sizes = consts[node.input[1]].reshape(-1)
        if len(sizes) != len(node.output) or len(set(sizes.tolist())) != 1:
            continue
        del node.input[1]

