"""From a resolved plan to the list of kernels ONNX Runtime (CPU) runs, without building the candidate.

The float part comes from the runtime itself: the teacher's graph after its extended (level 2) optimizations,
with the nodes of removed blocks gone and low-rank layers split in two. The plan-dependent rewrites are simulated
here, in the runtime's order, on plain records (each rule was checked against the runtime's optimized graphs;
``benchmarks/latency_predictor.py`` reports how often the predicted kernel list matches them):

1. **int8 QDQ** (what ``quantize_int8`` + the runtime do to a layer with <= 8-bit weights and 8-bit inputs):
   QuantizeLinear/DequantizeLinear pairs on each int8 layer's input and output tensors; one DequantizeLinear per
   consumer; Q pushed back (and DQ forward) through MaxPool/Reshape/Transpose/Squeeze/Unsqueeze/Slice; a Relu/Clip
   feeding only a Q is dropped; a float Conv/Gemm between a DQ and a Q gets its weights quantized by the runtime
   (WeightBiasQuantization); DQ -> Conv -> Q becomes QLinearConv, DQ -> Gemm -> Q QGemm, DQ -> MaxPool -> Q a
   uint8 MaxPool, DQ -> MatMul -> Q (a Linear exported as MatMul) QLinearMatMul, DQ -> Sigmoid/Softmax/Add/... -> Q the QLinear op; DQ -> Q with the same scale cancels. A float fusion
   that read a quantized tensor twice (SiLU -> QuickGelu) runs as its members, each read having its own DQ; a
   SkipLayerNormalization keeps its kernel while an int8 Linear's bias Add runs alone before it; the Shape nodes
   of a quantized tensor, merged in the float graph, run one per reader.
2. **NCHWc** (level 3, float convolutions): the runtime's block-layout rules (block size and input-channel
   alignment measured by the profile): which convolutions and pools switch layout, where ReorderInput /
   ReorderOutput nodes go, which Add/activation fuse into the convolution.
3. **Conv + Add (+ activation)** for convolutions left in NCHW (ConvAddActivationFusion).
4. **NHWC** (level 3, int8 convolutions): a Transpose on each QLinearConv input and output, except along chains
   of Q/DQ/MaxPool/elementwise ops from one QLinearConv to the next (the transposes cancel, MaxPool runs NHWC).

Each kernel is then described by its kind (op type plus variant, e.g. ``Conv/nchwc/kxk``, ``QLinearConv/dw``)
and a feature vector (:data:`~autocompress.latency.kernels.FEATURES`): its cost comes from the regressions fitted
on measurements. A lowered structure is compiled once per structural signature (:class:`Lowerer`) into a
:class:`~autocompress.latency.kernels.KernelProgram`, which computes every kernel's features of a plan at once.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from typing import Any

from .analysis import Resolved, Shapes
from .graph import NO_KERNEL_OPS
from .kernels import MAX_STRUCTURES, KernelProgram, Lowered, Op, Programs, grouped_variants

PROPAGABLE = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice"})
DROP_QDQ = frozenset({"MaxPool", "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Slice", "Gather"})
# ops the runtime runs on uint8 when a DQ feeds them and a Q follows (QLinearSigmoid, QLinearAdd, ...)
QLINEAR_OPS = frozenset({"Sigmoid", "Softmax", "LeakyRelu", "Add", "Mul", "AveragePool", "GlobalAveragePool"})
# elementwise ops the layout transforms move through (NHWC transposes; NCHWc tensors for the GELUs)
UNARY_ELEMENTWISE = frozenset({"Relu", "Tanh", "Sigmoid", "Clip", "Gelu", "QuickGelu", "FastGelu", "LeakyRelu",
                               "HardSigmoid", "Erf", "Exp", "Abs", "Neg", "Sqrt", "Softplus", "Elu"})
NCHWC_PASS_THROUGH = frozenset({"Gelu", "QuickGelu", "FastGelu"})
# the ops that can switch a tensor to the NCHWc layout (everything else follows its inputs)
NCHWC_SOURCES = frozenset({"Conv", "FusedConv", "MaxPool", "AveragePool"})
# fused kernels that keep an int8 layer's bias Add (see build_ops)
KEEP_BIAS = frozenset({"SkipLayerNormalization"})
# Conv + Add (+ activation) fusion for convolutions left in NCHW (ConvAddActivationFusion)
CONV_ADD_ACTIVATIONS = frozenset({"Relu", "Sigmoid", "Tanh", "LeakyRelu", "Clip", "HardSigmoid"})


# --- building the working graph ----------------------------------------------------------------------------

def build_ops(res: Resolved) -> tuple[list[Op], Shapes]:
    """The working graph of a resolved plan (float fusions from the runtime, low rank applied) and its shapes."""
    v = res.variant
    any_int8 = any(a or b for a, b in res.int8.values())
    fusions = v.fusions_int8 if any_int8 else v.fusions
    shapes = res.shapes
    by_name, layer_of_node, bias_add_of, ordered = _lookups(v, fusions)
    # a runtime kernel is taken apart when the op holding the layer's weights in it (the layer, or its second
    # low-rank factor) runs int8: the quantizer's Q/DQ nodes sit between it and what was fused with it
    # (int4 likewise: MatMulNBits replaces the node before the runtime optimizes, so nothing fuses with it)
    # (a SkipLayerNormalization that took an int8 or int4 Linear's bias Add stays whole, less the bias: the Add runs
    # alone behind the layer's DequantizeLinear, or inside the MatMulNBits, and the kernel reads its output)
    broken: set[int] = set()
    detached: dict[int, list[str]] = {}  # kernel -> bias Add nodes taken out of it
    for layer in res.int8:
        a, b = res.int8[layer]
        a4, b4 = res.int4.get(layer, (False, False))
        if (b or b4) if layer in res.rank else (a or a4):
            ln = v.layers[layer]
            for name in (ln.node, ln.bias_add):
                k = fusions.kernel_of.get(name) if name else None
                if k is None:
                    continue
                if (name == ln.bias_add and fusions.kernels[k].op in KEEP_BIAS
                        and ln.node not in fusions.members.get(k, ())):
                    detached.setdefault(k, []).append(name)
                    continue
                broken.add(k)
    quantized = _quantized_tensors(res, by_name) if any_int8 else set()
    broken |= _split_by_dq(fusions, by_name, broken, quantized)
    shapes_extra = _unshared_shapes(v, fusions, quantized)
    ops: list[Op] = []
    for k, kn in enumerate(fusions.kernels):
        members = fusions.members.get(k, [])
        if k in broken:
            for name in ordered[k]:
                ops.extend(_original_op(by_name[name], res, layer_of_node, bias_add_of, shapes))
            continue
        compute = next((layer_of_node[m] for m in members if m in layer_of_node), None)
        if compute is None:
            if kn.op in NO_KERNEL_OPS:
                continue
            op = Op(op=kn.op, inputs=list(kn.inputs), outputs=list(kn.outputs), attrs=dict(kn.attrs))
            for name in detached.get(k, ()):
                add = by_name[name]
                ops.extend(_original_op(add, res, layer_of_node, bias_add_of, shapes))
                layer_out = by_name[bias_add_of[name].node].outputs[0]
                _replace_input(op, layer_out, add.outputs[0])
            ops.append(op)
            ops.extend(Op(op="Shape", inputs=list(kn.inputs), outputs=[f"{kn.outputs[0]}::{i}"])
                       for i in range(shapes_extra.get(k, 0)))
            continue
        layer = compute.layer
        node = by_name[compute.node]
        main = Op(op=kn.op, inputs=list(kn.inputs), outputs=list(kn.outputs), attrs=dict(kn.attrs), layer=layer,
                  weight=res.weights[layer], groups=res.groups[layer])
        if layer in res.rank:
            first, main = _split(main, node, res, shapes, keep_fused=True)
            first.int8 = res.int8[layer][0]
            ops.append(_nbits(first, res.int4.get(layer, (False, False))[0]))
        ops.append(main)
    return ops, shapes


def _quantized_tensors(res: Resolved, by_name) -> set[str]:
    """The tensors the quantizer puts a Q/DQ pair on: each int8 layer's (or factor's) activation input and output."""
    v = res.variant
    quantized: set[str] = set()
    for layer, (a, b) in res.int8.items():
        node = by_name[v.layers[layer].node]
        if layer in res.rank:
            if a:
                quantized.add(node.inputs[0])
            if b:
                quantized.add(node.outputs[0])
        elif a:
            quantized.update((node.inputs[0], node.outputs[0]))
    return quantized


def _split_by_dq(fusions, by_name, broken: set[int], quantized: set[str]) -> set[int]:
    """Runtime kernels whose member nodes read a quantized tensor more than once.

    The quantizer gives each consumer of a quantized tensor its own DequantizeLinear, so a fusion matched on
    one tensor read twice (SiLU ``x * Sigmoid(x)`` -> QuickGelu, a LayerNormalization's ReduceMean and Sub, an
    Erf GELU's Div and Mul) no longer matches: the runtime runs its members one by one.
    """
    out: set[int] = set()
    for k, members in fusions.members.items():
        if k in broken or len(members) < 2:
            continue
        reads = [t for m in members if m in by_name for t in by_name[m].inputs if t in quantized]
        if len(reads) != len(set(reads)):
            out.add(k)
    return out


def _unshared_shapes(v, fusions, quantized: set[str]) -> dict[int, int]:
    """Runtime Shape kernels of a quantized tensor -> how many more Shape nodes run beside them: the runtime had
    merged the tensor's Shape nodes into one (``transformers`` attention reads its input's shape several times),
    but each now reads its own DequantizeLinear."""
    extra: dict[int, int] = {}
    if not quantized:
        return extra
    readers = v.derived.get("shape_readers")
    if readers is None:
        readers = v.derived["shape_readers"] = collections.Counter(
            n.inputs[0] for n in v.graph.nodes if n.op == "Shape" and n.inputs)
    for k, kn in enumerate(fusions.kernels):
        if kn.op == "Shape" and kn.inputs and kn.inputs[0] in quantized:
            extra[k] = readers[kn.inputs[0]] - 1
    return extra


def _lookups(v, fusions) -> tuple[dict, dict, dict, dict[int, list[str]]]:
    """Per variant and fusion set (computed once): nodes by name, layers by node and by bias Add node, and each
    runtime kernel's member nodes in graph order."""
    key = ("lookups", id(fusions))
    got = v.derived.get(key)
    if got is None:
        graph = v.graph
        position = {n.name: i for i, n in enumerate(graph.nodes)}
        ordered = {k: sorted((m for m in members if m in position), key=position.__getitem__)
                   for k, members in fusions.members.items()}
        got = v.derived[key] = ({n.name: n for n in graph.nodes}, {ln.node: ln for ln in v.layers.values()},
                                {ln.bias_add: ln for ln in v.layers.values() if ln.bias_add}, ordered)
    return got


def _nbits(op: Op, int4: bool) -> Op:
    """``op`` (a Linear's Gemm / MatMul) as the int4 MatMulNBits the runtime layer writes in its place (a Gemm's
    bias is its bias input; the runtime fuses a MatMul's bias Add into it)."""
    if int4:
        op.op, op.int4, op.attrs = "MatMulNBits", True, {}
    return op


def _original_op(node, res: Resolved, layer_of_node, bias_add_of, shapes) -> list[Op]:
    """An original node as a standalone op (its runtime fusion is broken by int8); low rank applied."""
    ln = layer_of_node.get(node.name)
    if ln is None:
        if node.op in NO_KERNEL_OPS:
            return []
        owner = bias_add_of.get(node.name)
        if owner is not None and res.int4.get(owner.layer, (False, False))[1 if owner.layer in res.rank else 0]:
            return []  # the runtime fuses a MatMul's bias Add into the MatMulNBits before it
        return [Op(op=node.op, inputs=list(node.inputs), outputs=list(node.outputs), attrs=dict(node.attrs))]
    layer = ln.layer
    a, b = res.int8[layer]
    a4, b4 = res.int4.get(layer, (False, False))
    op = Op(op=node.op, inputs=list(node.inputs), outputs=list(node.outputs), attrs=dict(node.attrs), layer=layer,
            weight=res.weights[layer], groups=res.groups[layer], int8=a)
    if layer in res.rank:
        first, second = _split(op, node, res, shapes, keep_fused=False)
        first.int8, second.int8 = a, b
        return [_nbits(first, a4), _nbits(second, b4)]
    return [_nbits(op, a4)]


def _split(op: Op, node, res: Resolved, shapes: dict, *, keep_fused: bool) -> tuple[Op, Op]:
    """Low rank: ``op`` -> first factor (full kernel, ``rank`` outputs, no bias) + second (1x1 / rank inputs).

    ``op`` is either the runtime's fused kernel (float, ``keep_fused``: the second factor keeps its fusions) or
    the original node (its fusion broken by int8).
    """
    layer = op.layer
    assert layer is not None
    r = res.rank[layer]
    w = op.weight
    mid = f"{layer}::rank"
    is_conv = res.variant.layers[layer].is_conv
    shapes.rank_tensor(mid, layer, node.outputs[0], is_conv)
    if is_conv:
        first_attrs = {k: val for k, val in node.attrs.items() if k != "group"}
        first = Op(op="Conv", inputs=[node.inputs[0], f"{layer}.0.weight"], outputs=[mid], attrs=first_attrs,
                   layer=layer, part=0, weight=(r, *w[1:]))
        second_w: tuple[int, ...] = (w[0], r, *([1] * (len(w) - 2)))
        second_attrs = {k: val for k, val in op.attrs.items()
                        if k not in ("strides", "pads", "dilations", "group", "auto_pad")}
        second_attrs["kernel_shape"] = [1] * (len(w) - 2)
    else:
        first = Op(op="MatMul", inputs=[node.inputs[0], f"{layer}.0.weight"], outputs=[mid], layer=layer, part=0,
                   weight=(r, w[1]))
        second_w = (w[0], r)
        second_attrs = dict(op.attrs)
    second = Op(op=op.op, inputs=[mid, *op.inputs[1:]], outputs=list(op.outputs), attrs=second_attrs,
                layer=layer, part=1, weight=second_w, groups=1, int8=op.int8)
    if keep_fused:
        # the runtime kernel reads the layer's input as its first input; now it reads the rank tensor
        second.inputs = [mid if t == node.inputs[0] else t for t in op.inputs]
    return first, second


# --- graph helpers -------------------------------------------------------------------------------------------

class _Uses:
    """Consumers of each tensor in an op list (graph outputs count as a use), kept up to date by the passes'
    edits (:meth:`add`, :meth:`rewire`, :meth:`drop`) instead of rebuilt after each: a rebuild walks every op,
    and a pass makes a handful of edits. Only the multiset of consumers is kept; no pass depends on their order
    beyond the first index built from the ops in order."""

    def __init__(self, ops: list[Op], outputs: list[str]) -> None:
        consumers: dict[str, list[Op]] = {}
        producer: dict[str, Op] = {}
        for op in ops:
            for t in op.inputs:
                if t:
                    got = consumers.get(t)
                    if got is None:
                        consumers[t] = [op]
                    else:
                        got.append(op)
            for t in op.outputs:
                if t:
                    producer[t] = op
        self.consumers, self.producer = consumers, producer
        self.graph_outputs = set(outputs)

    def count(self, t: str) -> int:
        return len(self.consumers.get(t, ())) + (t in self.graph_outputs)

    def add(self, op: Op) -> None:
        """Register a new op's reads and writes."""
        for t in op.inputs:
            if t:
                self.consumers.setdefault(t, []).append(op)
        for t in op.outputs:
            if t:
                self.producer[t] = op

    def rewire(self, op: Op, old: str, new: str) -> None:
        """``op`` reads ``new`` wherever it read ``old``."""
        reads = op.inputs.count(old)
        if not reads:
            return
        _replace_input(op, old, new)
        self.consumers[old] = [c for c in self.consumers.get(old, ()) if c is not op]
        self.consumers.setdefault(new, []).extend([op] * reads)

    def drop(self, op: Op) -> None:
        """Forget a removed op."""
        for t in set(op.inputs):
            if t in self.consumers:
                self.consumers[t] = [c for c in self.consumers[t] if c is not op]
        for t in op.outputs:
            if self.producer.get(t) is op:
                del self.producer[t]

    def output_renamed(self, old: str, new: str) -> None:
        """A graph output is now ``new`` instead of ``old``."""
        if old in self.graph_outputs:
            self.graph_outputs.discard(old)
            self.graph_outputs.add(new)


def _with_inserted(ops: list[Op], inserted: dict[int, list[Op]]) -> list[Op]:
    """``ops`` with ``inserted[id(op)]`` placed right after each op (``inserted[-1]`` first)."""
    out = list(inserted.get(-1, []))
    for op in ops:
        out.append(op)
        extra = inserted.get(id(op))
        if extra:
            out.extend(extra)
    return out


def _replace_input(op: Op, old: str, new: str) -> None:
    op.inputs = [new if t == old else t for t in op.inputs]


INT8_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul")


# --- 1. int8 QDQ -------------------------------------------------------------------------------------------

def lower_int8(ops: list[Op], graph_outputs: list[str], shapes: Shapes) -> tuple[list[Op],
                                                                                                      list[str]]:
    """Insert and fold Q/DQ as the quantizer and the runtime's QDQ transformers do. Returns (ops, outputs)."""
    outputs = list(graph_outputs)
    int8_ops = [op for op in ops if op.int8]
    if not int8_ops:
        return ops, outputs
    counter = [0]

    def fresh(base: str, tag: str) -> str:
        counter[0] += 1
        name = f"{base}::{tag}{counter[0]}"
        shapes.alias(name, base)
        return name

    # the quantizer: Q -> DQ on every int8 layer's activation input and output
    quantized: list[str] = []
    for op in int8_ops:
        for t in (op.inputs[0], op.outputs[0]):
            if t not in quantized:
                quantized.append(t)
    uses = _Uses(ops, outputs)
    inserted: dict[int, list[Op]] = {}   # id(producer) -> ops to insert right after it (-1: graph inputs)
    for t in quantized:
        qt, dqt = fresh(t, "q"), fresh(t, "dq")
        q = Op(op="QuantizeLinear", inputs=[t], outputs=[qt], scale=t)
        dq = Op(op="DequantizeLinear", inputs=[qt], outputs=[dqt], scale=t)
        readers = uses.consumers.pop(t, [])
        for c in readers:
            _replace_input(c, t, dqt)
        uses.consumers[dqt] = readers
        uses.add(q)
        uses.add(dq)
        outputs = [dqt if o == t else o for o in outputs]
        uses.output_renamed(t, dqt)
        producer = uses.producer.get(t)
        inserted.setdefault(id(producer) if producer is not None else -1, []).extend([q, dq])
    ops = _with_inserted(ops, inserted)
    # EnsureUniqueDQForNodeUnit: one DQ per consumer
    inserted = {}
    for dq in [op for op in ops if op.op == "DequantizeLinear"]:
        consumers = uses.consumers.get(dq.outputs[0], [])
        if len(consumers) + (dq.outputs[0] in outputs) <= 1:
            continue
        for c in consumers[1:]:
            name = fresh(dq.outputs[0], "dup")
            dup = Op(op="DequantizeLinear", inputs=list(dq.inputs), outputs=[name], scale=dq.scale)
            uses.add(dup)
            uses.rewire(c, dq.outputs[0], name)
            inserted.setdefault(id(dq), []).append(dup)
    if inserted:
        ops = _with_inserted(ops, inserted)
    # QDQPropagation: Q backward through propagable ops (single-use edges), DQ forward
    for q in [op for op in ops if op.op == "QuantizeLinear"]:
        t = q.inputs[0]
        producer = uses.producer.get(t)
        if producer is None or uses.count(t) != 1:
            continue
        while producer is not None and producer.op in PROPAGABLE:
            t_in = producer.inputs[0]
            src = uses.producer.get(t_in)
            if src is not None and (uses.count(t_in) != 1 or src.op == "DequantizeLinear"):
                break
            qt, dqt = fresh(t_in, "pq"), fresh(t_in, "pdq")
            nq = Op(op="QuantizeLinear", inputs=[t_in], outputs=[qt], scale=q.scale)
            ndq = Op(op="DequantizeLinear", inputs=[qt], outputs=[dqt], scale=q.scale)
            uses.rewire(producer, t_in, dqt)
            uses.add(nq)
            uses.add(ndq)
            at = ops.index(producer)
            ops[at:at] = [nq, ndq]
            producer = src
    for dq in [op for op in ops if op.op == "DequantizeLinear"]:
        cur = dq
        while True:
            consumers = uses.consumers.get(cur.outputs[0], [])
            if len(consumers) != 1 or cur.outputs[0] in outputs or consumers[0].op not in PROPAGABLE:
                break
            c = consumers[0]
            if c.inputs[0] != cur.outputs[0]:
                break
            t_out = c.outputs[0]
            nexts = [n for n in uses.consumers.get(t_out, []) if n.op != "QuantizeLinear"]
            if not nexts and t_out not in outputs:
                break
            qt, dqt = fresh(t_out, "fq"), fresh(t_out, "fdq")
            nq = Op(op="QuantizeLinear", inputs=[t_out], outputs=[qt], scale=cur.scale)
            ndq = Op(op="DequantizeLinear", inputs=[qt], outputs=[dqt], scale=cur.scale)
            for n in nexts:
                uses.rewire(n, t_out, dqt)
            uses.add(nq)
            uses.add(ndq)
            outputs = [dqt if o == t_out else o for o in outputs]
            uses.output_renamed(t_out, dqt)
            at = ops.index(c) + 1
            ops[at:at] = [nq, ndq]
            cur = ndq
    # ReluQuantFusion: a Relu whose only consumer is a Q is dropped (the Q's zero point clips)
    dropped: set[int] = set()
    for relu in [op for op in ops if op.op in ("Relu", "Clip") and op.layer is None]:
        consumers = uses.consumers.get(relu.outputs[0], [])
        if len(consumers) == 1 and relu.outputs[0] not in outputs and consumers[0].op == "QuantizeLinear":
            # (a later Relu never reads what this one's edit changes: the ops are in topological order)
            uses.rewire(consumers[0], relu.outputs[0], relu.inputs[0])
            dropped.add(id(relu))
            uses.drop(relu)
    if dropped:
        ops = [op for op in ops if id(op) not in dropped]
    # WeightBiasQuantization: a float Conv/Gemm between a DQ and a Q (through Relu/Clip only) has its float
    # weights quantized by the runtime and joins the int8 path too
    dropped = set()
    for op in ops:
        if op.int8 or op.layer is None or op.op not in ("Conv", "FusedConv", "Gemm", "FusedGemm"):
            continue
        dq = uses.producer.get(op.inputs[0])
        if dq is None or dq.op != "DequantizeLinear":
            continue
        t, relus = op.outputs[0], []
        while uses.count(t) == 1 and t not in outputs:
            nxt = uses.consumers[t][0]
            if nxt.op == "QuantizeLinear":
                op.int8 = True
                for r in relus:  # the activation is folded into the requantization
                    dropped.add(id(r))
                    uses.drop(r)
                if relus:
                    uses.rewire(nxt, t, op.outputs[0])
                break
            if nxt.op not in ("Relu", "Clip") or id(nxt) in dropped:
                break
            relus.append(nxt)
            t = nxt.outputs[0]
    if dropped:
        ops = [op for op in ops if id(op) not in dropped]
    # selectors: DQ -> Conv/Gemm -> Q  =>  QLinearConv / QGemm; DQ -> data op -> Q (same scale) => uint8 op
    removed: set[int] = set()
    for op in ops:
        if op.int8:
            dq = uses.producer.get(op.inputs[0])
            outs = uses.consumers.get(op.outputs[0], [])
            if dq is None or dq.op != "DequantizeLinear" or len(outs) != 1 or outs[0].op != "QuantizeLinear" \
                    or op.outputs[0] in outputs:
                op.int8 = False  # not fusable: stays float (does not happen with the quantizer's QDQ)
                continue
            q = outs[0]
            op.op = ("QLinearConv" if op.op in ("Conv", "FusedConv") else
                     "QLinearMatMul" if op.op in ("MatMul", "FusedMatMul") else "QGemm")
            op.inputs = [dq.inputs[0], *op.inputs[1:]]
            op.outputs = [q.outputs[0]]
            removed.update((id(dq), id(q)))
        elif op.op in QLINEAR_OPS and op.layer is None and op.op != "Concat":
            dqs = [uses.producer.get(t) for t in op.inputs if t]
            outs = uses.consumers.get(op.outputs[0], [])
            if all(d is not None and d.op == "DequantizeLinear" and id(d) not in removed
                   and uses.count(d.outputs[0]) == 1 for d in dqs) and len(outs) == 1 \
                    and outs[0].op == "QuantizeLinear" and op.outputs[0] not in outputs:
                op.inputs = [d.inputs[0] for d in dqs]  # type: ignore[union-attr]
                op.outputs = [outs[0].outputs[0]]
                op.op = "QLinear" + op.op
                removed.update(id(d) for d in dqs)
                removed.add(id(outs[0]))
        elif op.op in DROP_QDQ and op.layer is None:
            dq = uses.producer.get(op.inputs[0])
            outs = uses.consumers.get(op.outputs[0], [])
            if dq is not None and dq.op == "DequantizeLinear" and len(outs) == 1 and outs[0].op == "QuantizeLinear" \
                    and dq.scale == outs[0].scale and id(dq) not in removed and op.outputs[0] not in outputs:
                op.inputs = [dq.inputs[0], *op.inputs[1:]]
                op.outputs = [outs[0].outputs[0]]
                op.u8 = True
                removed.update((id(dq), id(outs[0])))
    ops = [op for op in ops if id(op) not in removed]
    # QDQ cleanup: DQ -> Q with the same scale cancels
    uses = _Uses(ops, outputs)
    removed = set()
    for dq in [op for op in ops if op.op == "DequantizeLinear"]:
        outs = uses.consumers.get(dq.outputs[0], [])
        if len(outs) == 1 and outs[0].op == "QuantizeLinear" and outs[0].scale == dq.scale \
                and dq.outputs[0] not in outputs:
            q = outs[0]
            for c in uses.consumers.get(q.outputs[0], []):
                _replace_input(c, q.outputs[0], dq.inputs[0])
            removed.update((id(dq), id(q)))
    return [op for op in ops if id(op) not in removed], outputs


# --- 2. NCHWc ----------------------------------------------------------------------------------------------

@dataclass
class _Arg:
    op: Op
    channels: int
    start: int
    left: int


def lower_nchwc(ops: list[Op], outputs: list[str], shapes: Shapes, block: int, align: int = 4) -> list[Op]:
    """ONNX Runtime's NchwcTransformer on float convolutions and what follows them (block size ``block``; input
    channels a multiple of ``align`` for the layout change)."""
    if block <= 1 or not any(op.op in NCHWC_SOURCES for op in ops):  # only these start NCHWc tensors
        return ops
    uses = _Uses(ops, outputs)
    args: dict[str, _Arg] = {}
    reordered: dict[str, Op] = {}
    transformed: set[str] = set()   # tensors whose producer was transformed (their original edges are gone)
    out: list[Op] = []
    dropped: set[int] = set()

    def reorder_input(op: Op) -> None:
        x = op.inputs[0]
        if x in args:
            args[x].left -= 1
            return
        if x not in reordered:
            r = Op(op="ReorderInput", inputs=[x], outputs=[f"{x}::nchwc"], nchwc=True)
            reordered[x] = r
            out.append(r)

    def create(op: Op, channels: int) -> None:
        t = op.outputs[0]
        args[t] = _Arg(op=op, channels=channels, start=uses.count(t), left=uses.count(t))
        transformed.add(t)

    def fuse(op: Op, arg: _Arg) -> None:
        t = op.outputs[0]
        args[t] = _Arg(op=arg.op, channels=arg.channels, start=uses.count(t), left=uses.count(t))
        transformed.add(t)
        dropped.add(id(op))

    for op in ops:
        kind = op.op
        if kind in ("Conv", "FusedConv") and not op.int8 and len(op.weight) == 4:
            o, cg = op.weight[0], op.weight[1]
            g = op.groups
            c = cg * g
            ok, reorder = True, True
            # ONNX Runtime 1.32 rules (checked against its optimized graphs): output channels are zero-padded to
            # the block; input channels must be a multiple of `align` (depthwise: its channels), except that fewer
            # input channels than a block are read in NCHW form directly
            if g > 1:
                if cg == 1 and o == g:
                    ok = c % align == 0
                else:
                    ok = not (c % block or o % g or (o // g) % block or cg % block)
            elif c < block:
                reorder = False
            else:
                ok = c % align == 0
            if ok:
                op.nchwc = True
                if reorder:
                    reorder_input(op)
                else:
                    op.direct = True
                create(op, o)
            out.append(op)
            continue
        if kind in ("MaxPool", "AveragePool") and not op.u8:
            shape = shapes.get(op.inputs[0], ())
            if len(shape) == 4 and shape[1] % block == 0 and len(op.outputs) == 1:
                op.nchwc = True
                reorder_input(op)
                create(op, shape[1])
            out.append(op)
            continue
        data_inputs = [t for t in op.inputs if t and t in uses.producer]
        if op.inputs and all(t in transformed for t in data_inputs) and not op.u8:
            if kind in ("Add", "Sum", "Mul") and op.inputs and all(t in args for t in op.inputs):
                ins = [args[t] for t in op.inputs]
                if all(a.channels == ins[0].channels for a in ins) and \
                        all(shapes.get(t) == shapes.get(op.inputs[0]) for t in op.inputs):
                    for a in ins:
                        a.left -= 1
                    if kind != "Mul" and len(ins) == 2:
                        target = next((a for a in ins if a.op.op in ("Conv", "FusedConv") and a.op.nchwc
                                       and a.start == 1 and "activation" not in a.op.attrs
                                       and a.op.fused_sum is None), None)
                        if target is not None:
                            other = op.inputs[1] if target is ins[0] else op.inputs[0]
                            target.op.fused_sum = other
                            fuse(op, target)
                            continue
                    op.nchwc = True
                    create(op, ins[0].channels)
            elif kind in ("Relu", "Sigmoid", "Tanh") and op.inputs[0] in args:
                a = args[op.inputs[0]]
                a.left -= 1
                if a.op.op in ("Conv", "FusedConv") and a.op.nchwc and a.start == 1 and \
                        "activation" not in a.op.attrs:
                    a.op.attrs["activation"] = kind
                    fuse(op, a)
                    continue
                op.nchwc = True
                create(op, a.channels)
            elif kind in NCHWC_PASS_THROUGH and op.inputs[0] in args:
                a = args[op.inputs[0]]
                a.left -= 1
                op.nchwc = True
                create(op, a.channels)
            elif kind == "BatchNormalization" and op.inputs[0] in args and len(op.outputs) == 1:
                a = args[op.inputs[0]]
                a.left -= 1
                op.op, op.nchwc, op.groups = "BatchNormalization", True, a.channels
                create(op, a.channels)
            elif kind == "Transpose" and op.inputs[0] in args and list(op.attrs.get("perm", [])) == [0, 2, 3, 1]:
                a = args[op.inputs[0]]
                a.left -= 1
                op.op, op.nchwc = "ReorderOutput", True
            elif kind in ("GlobalAveragePool", "GlobalMaxPool") and op.inputs[0] in args and \
                    args[op.inputs[0]].channels % block == 0:
                a = args[op.inputs[0]]
                a.left -= 1
                op.nchwc = True
                create(op, a.channels)
            elif kind == "Concat" and op.attrs.get("axis") == 1 and all(t in args for t in op.inputs) and \
                    all(args[t].channels % block == 0 for t in op.inputs):
                for t in op.inputs:
                    args[t].left -= 1
                op.nchwc = True
                create(op, sum(args[t].channels for t in op.inputs))
        out.append(op)
    out = [op for op in out if id(op) not in dropped]
    # ReorderOutput for NCHWc tensors still read in NCHW form, right after their producer
    for t, a in args.items():
        if a.left > 0:
            r = Op(op="ReorderOutput", inputs=[f"{t}::nchwc"], outputs=[t], nchwc=True,
                   attrs={"channels": a.channels})
            shapes.alias(f"{t}::nchwc", t)
            at = out.index(a.op) + 1 if a.op in out else len(out)
            out.insert(at, r)
    return out


# --- 3. NHWC -----------------------------------------------------------------------------------------------

def lower_nhwc(ops: list[Op], outputs: list[str], shapes: Shapes) -> list[Op]:
    """Transposes around QLinearConv (NHWC), cancelled along Q/DQ/MaxPool/elementwise chains between two of them
    (also through a QLinearAdd of two such chains, and past forks of the chain).

    When a QLinearConv output feeds another QLinearConv and also a float branch, the runtime pushes the output
    transpose into the branches: it cancels on the int8 one and stays on the float one (as a uint8 transpose at
    the convolution's output, or past a fork as a float transpose behind the branch's DequantizeLinear wrapped in a
    Q/DQ pair). Checked against ONNX Runtime 1.32's optimized graphs: exact on LeNet-5 / MobileNetV2-style plans,
    a few Transpose/Q/DQ nodes off on some ResNet plans with int8 residual blocks (not modelled further).
    """
    convs = [op for op in ops if op.op == "QLinearConv"]
    if not convs:
        return ops
    uses = _Uses(ops, outputs)
    need_in = {id(c): True for c in convs}
    need_out = {id(c): True for c in convs}
    after: dict[int, list[Op]] = {}  # ops to insert after a given op

    def from_nhwc(t: str) -> bool:
        """Whether ``t`` comes from a QLinearConv through single-input layout-agnostic ops (a QLinearAdd of two
        such tensors runs NHWC: the transposes of both inputs move past it)."""
        for _ in range(16):
            prod = uses.producer.get(t)
            if prod is None:
                return False
            if prod.op == "QLinearConv":
                return True
            if not (prod.op in ("QuantizeLinear", "DequantizeLinear") or (prod.op == "MaxPool" and prod.u8)
                    or (prod.op in UNARY_ELEMENTWISE and prod.layer is None)):
                return False
            t = prod.inputs[0]
        return False

    def chain(start: Op) -> tuple[list[Op], Op | None]:
        """Ops from ``start`` on through single-use Q/DQ/uint8 MaxPool, and the QLinearConv it reaches."""
        links, cur = [], start
        while True:
            if cur.op == "QLinearConv":
                return links, cur
            if not (cur.op in ("QuantizeLinear", "DequantizeLinear") or (cur.op == "MaxPool" and cur.u8)
                    or (cur.op.startswith("QLinear") and cur.layer is None
                        and (len(cur.inputs) == 1 or all(from_nhwc(i) for i in cur.inputs if i)))
                    or (cur.op in UNARY_ELEMENTWISE and cur.layer is None)):
                return links, None
            links.append(cur)
            t = cur.outputs[0]
            if uses.count(t) != 1 or t in outputs:
                return links, None
            cur = uses.consumers[t][0]

    def explore(t: str, depth: int = 0) -> tuple[list[tuple[list[Op], Op]], list[tuple[str, Op | None]]]:
        """From tensor ``t`` (NHWC): the QLinearConvs reached through layout-agnostic chains (with the chain) and
        the float branches ``(tensor they leave from, their first op)``; chains fork at multi-use tensors."""
        reached: list[tuple[list[Op], Op]] = []
        floats: list[tuple[str, Op | None]] = [(t, None)] if t in outputs else []
        for nxt in uses.consumers.get(t, []):
            links, end = chain(nxt)
            if end is not None and end.inputs[0] == (links[-1].outputs[0] if links else t):
                reached.append((links, end))
                continue
            last = links[-1].outputs[0] if links else None
            if last is not None and end is None and depth < 4 and uses.count(last) > 1 and last not in outputs:
                sub_reached, sub_floats = explore(last, depth + 1)
                if sub_reached:
                    reached.extend((links + sub, e) for sub, e in sub_reached)
                    floats.extend(sub_floats)
                    continue
            floats.append((t, nxt))
        return reached, floats

    def _joins_nhwc(dq: Op) -> bool:
        """A float branch whose DequantizeLinear feeds an op that also reads another QLinearConv's output."""
        for op in uses.consumers.get(dq.outputs[0], []):
            if any(i != dq.outputs[0] and from_nhwc(i) for i in op.inputs if i):
                return True
        return False

    for c in convs:
        c.nhwc = True
        t = c.outputs[0]
        if t in outputs:
            continue
        reached, floats = explore(t)
        if not reached:
            continue
        need_out[id(c)] = False
        for links, end in reached:
            need_in[id(end)] = False
            for m in links:
                if m.op == "MaxPool":
                    m.op, m.nhwc = "NhwcMaxPool", True
        for bt, first in floats:
            if bt == t or first is None or first.op != "DequantizeLinear" or _joins_nhwc(first):
                # the float branch keeps a (uint8) transpose of its own
                after.setdefault(id(c), []).append(Op(op="Transpose", inputs=[f"{bt}::nhwc"], outputs=[bt], u8=True))
                shapes.alias(f"{bt}::nhwc", bt)
            else:
                # past a fork the runtime moves the transpose behind the branch's DequantizeLinear and wraps it in
                # a Q/DQ pair of its own (seen on ResNet stems and shortcuts)
                y = first.outputs[0]
                ops_after = [Op(op="Transpose", inputs=[f"{y}::nhwc"], outputs=[f"{y}::t"]),
                             Op(op="QuantizeLinear", inputs=[f"{y}::t"], outputs=[f"{y}::tq"], scale=first.scale),
                             Op(op="DequantizeLinear", inputs=[f"{y}::tq"], outputs=[f"{y}::tdq"],
                                scale=first.scale)]
                for name in (f"{y}::nhwc", f"{y}::t", f"{y}::tq", f"{y}::tdq"):
                    shapes.alias(name, y)
                after.setdefault(id(first), []).extend(ops_after)
    out: list[Op] = []
    transposed: set[str] = set()  # one Transpose per tensor, shared by the convolutions reading it
    for op in ops:
        if op.op == "QLinearConv" and need_in[id(op)] and op.inputs[0] not in transposed:
            transposed.add(op.inputs[0])
            out.append(Op(op="Transpose", inputs=[op.inputs[0]], outputs=[f"{op.inputs[0]}::nhwc"], u8=True))
        out.append(op)
        if op.op == "QLinearConv" and need_out[id(op)]:
            out.append(Op(op="Transpose", inputs=[f"{op.outputs[0]}::nhwc"], outputs=[op.outputs[0]], u8=True))
            shapes.alias(f"{op.outputs[0]}::nhwc", op.outputs[0])
        out.extend(after.get(id(op), []))
    for op in out:
        if op.op == "Transpose" and op.u8 and op.outputs[0] not in shapes:
            shapes.alias(op.outputs[0], op.inputs[0])
    return out


# --- kernels -----------------------------------------------------------------------------------------------

@dataclass
class _Structure:
    program: KernelProgram
    aliases: dict[str, str]
    rank_tensors: dict[str, tuple[str, str, bool]]


def fuse_conv_add(ops: list[Op], outputs: list[str], shapes: Shapes) -> list[Op]:
    """ConvAddActivationFusion: a float NCHW Conv (with bias, no activation) whose lone consumer is an Add of two
    same-shape 4-D tensors absorbs the Add, and the Add's lone activation consumer."""
    if not any(op.op == "Conv" for op in ops):
        return ops
    uses = _Uses(ops, outputs)
    dropped: set[int] = set()
    for op in ops:
        if op.op != "Conv" or op.nchwc or op.int8 or len(op.inputs) < 3 or not op.inputs[2] or op.fused_sum:
            continue
        t = op.outputs[0]
        consumers = uses.consumers.get(t, [])
        if len(consumers) != 1 or t in outputs or consumers[0].op != "Add" or len(consumers[0].inputs) != 2:
            continue
        add = consumers[0]
        a, b = (shapes.get(x, ()) for x in add.inputs)
        if len(a) != 4 or a != b or id(add) in dropped:
            continue
        op.op, op.fused_sum = "FusedConv", add.inputs[1] if add.inputs[0] == t else add.inputs[0]
        op.outputs = list(add.outputs)
        dropped.add(id(add))
        nxt = uses.consumers.get(add.outputs[0], [])
        if len(nxt) == 1 and add.outputs[0] not in outputs and nxt[0].op in CONV_ADD_ACTIVATIONS:
            op.attrs["activation"] = nxt[0].op
            op.outputs = list(nxt[0].outputs)
            dropped.add(id(nxt[0]))
    return [op for op in ops if id(op) not in dropped] if dropped else ops


def lower_ops(res: Resolved, *, block: int, align: int = 4) -> list[Op]:
    """All passes: working graph -> int8 QDQ -> NCHWc -> Conv+Add fusion -> NHWC (registers new tensors in
    ``res.shapes``)."""
    ops, shapes = build_ops(res)
    outputs = list(res.variant.graph.outputs)
    ops, outputs = lower_int8(ops, outputs, shapes)
    ops = lower_nchwc(ops, outputs, shapes, block, align)
    ops = fuse_conv_add(ops, outputs, shapes)
    return lower_nhwc(ops, outputs, shapes)


class Lowerer:
    """Lowers plans, caching the kernel structure per structural signature (features are per plan).

    The structure depends only on the student depth, which layers run int8 and which are factorized, and on the
    channel counts' position relative to the NCHWc block (few input channels; pool alignment); two plans that
    agree on these lower to the same kernels with different shapes.
    """

    def __init__(self, *, block: int, align: int = 4, max_entries: int = MAX_STRUCTURES) -> None:
        self.block, self.align = block, align
        self._cache = Programs(max_entries)

    def signature(self, res: Resolved) -> tuple:
        v, b, al = res.variant, self.block, self.align
        parts: list[Any] = [v.uid]
        for layer, ln in v.layers.items():
            w, g = res.weights[layer], res.groups[layer]
            r = res.rank.get(layer)
            cin = w[1] * g if ln.is_conv else w[1]
            item: tuple = (*res.int8[layer], *res.int4.get(layer, (False, False)), r is not None, cin < b, cin % al == 0, w[0] % al == 0,
                           r is not None and r < b, r is not None and r % al == 0)
            if ln.is_conv and g > 1 and not ln.depthwise:
                item += (cin % b == 0 and w[0] % g == 0 and (w[0] // g) % b == 0 and w[1] % b == 0,)
            parts.append(item)
        for t in v.pool_inputs:
            shape = res.shapes.get(t, ())
            parts.append(len(shape) == 4 and shape[1] % b == 0)
        parts.append(grouped_variants(res))
        return tuple(parts)

    def seen(self, res: Resolved) -> bool:
        """Whether ``res``'s kernel structure is compiled already (its prediction only computes features)."""
        return self._cache.get(self.signature(res)) is not None

    def lower(self, res: Resolved) -> Lowered:
        sig = self.signature(res)
        entry = self._cache.get(sig)
        if entry is None:
            ops = lower_ops(res, block=self.block, align=self.align)
            program = KernelProgram([(op, None) for op in ops], res, self.block,
                                    int8_nodes=sum(op.op in INT8_KERNELS for op in ops), terms=self._cache.terms(res))
            entry = self._cache.put(sig, _Structure(program=program, aliases=dict(res.shapes.aliases),
                                                    rank_tensors=dict(res.shapes.rank_tensors)))
        else:  # the tensors the lowering registered, for whoever reads this plan's shapes next
            res.shapes.aliases.update(entry.aliases)
            res.shapes.rank_tensors.update(entry.rank_tensors)
        return entry.program.lower(res)


def lower(res: Resolved, *, block: int, align: int = 4) -> Lowered:
    """Lower one plan without caching."""
    return Lowerer(block=block, align=align).lower(res)
