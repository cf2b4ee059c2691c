"""The ``openvino`` backend's kernels: the exported ONNX graph as OpenVINO's CPU plugin compiles it, for the latency
predictor (its profile is measured on OpenVINO, :func:`autocompress.latency.profile.build_profile`).

The model follows what the compiled model's runtime graph shows (``OpenVINOBackend.runtime_precisions``): a
session is compiled for one static input shape, so everything computed from shapes and constants is folded away;
``Reshape``/``Flatten``/``Squeeze``/``Unsqueeze`` are views; each convolution and each Linear (``FullyConnected``)
is one kernel that absorbs the activations after it (ReLU, clip, sigmoid, SiLU's product, GELU) and one residual
or bias addition as post-ops; BatchNorm is folded by the exporter already. An int8 layer (its Q/DQ pair folded
into the kernel by OpenVINO's low-precision transformations) reads uint8: its input is quantized by a
``FakeQuantize`` kernel unless it comes straight from another int8 layer, which then writes uint8 itself; an int8
layer followed by an activation other than ReLU (ReLU6's clip, SiLU, GELU) runs it as a kernel of its own
(``Requantize/<activation>``: in the runtime graph a convert plus a FakeQuantize, or an eltwise). Matrix
products of two activations (attention) stay float. Other nodes run as one kernel each, named by their ONNX op.
What this leaves out (the runtime's own reorders between layouts, precision conversions) is left to the fitted
per-model terms and reported as the predictor's measured error (``benchmarks/latency_predictor.py --backend
openvino``).
"""

from __future__ import annotations

from typing import Any

from .analysis import Resolved
from .kernels import Op, _conv_variant, layer_weight
from .torch_backend import TorchLowerer

VIEWS = frozenset({"Identity", "Constant", "Dropout", "Reshape", "Flatten", "Squeeze", "Unsqueeze"})
POST_OPS = frozenset({"Relu", "Clip", "Sigmoid", "Tanh", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Softplus",
                      "Gelu"})


class OpenVinoLowerer(TorchLowerer):
    """Plan -> OpenVINO CPU kernels (see the module docstring). Shares the eager lowering's reading of the graph:
    tensors computed from shapes only, and the exporter's five-node GELU as one op."""

    def ops(self, res: Resolved) -> list[Op]:
        v = res.variant
        static = self._static_tensors(res)
        layer_of_node = {ln.node: ln for ln in v.layers.values()}
        bias_adds = {ln.bias_add: ln for ln in v.layers.values() if ln.bias_add}
        gelus = self._gelus(res)
        alias: dict[str, str] = {}  # a view's output -> the tensor it shows
        ops: list[Op] = []

        def src(t: str) -> str:
            return alias.get(t, t)

        for n in v.graph.nodes:
            if all(t in static for t in n.outputs if t):
                continue
            if n.name in bias_adds:  # MatMul + Add of a Linear on 3-D input: one FullyConnected
                alias[n.outputs[0]] = src(next(t for t in n.inputs if t not in v.graph.initializers))
                continue
            if n.op in VIEWS:
                if n.inputs and n.outputs:
                    alias[n.outputs[0]] = src(n.inputs[0])
                continue
            if n.name in gelus:
                io = gelus[n.name]
                if io is not None:
                    ops.append(Op(op="Gelu", inputs=[src(io[0])], outputs=[io[1]]))
                continue
            ln = layer_of_node.get(n.name)
            inputs = [src(t) for t in n.inputs]
            if ln is None:
                ops.append(Op(op=n.op, inputs=inputs, outputs=list(n.outputs), attrs=dict(n.attrs)))
                continue
            layer = ln.layer
            kind = "Conv" if ln.is_conv else "Gemm"
            out = n.outputs[0]
            int8 = res.int8[layer]
            if layer in res.rank:
                mid = f"{layer}::rank"
                res.shapes.rank_tensor(mid, layer, n.outputs[0], ln.is_conv)
                ops.append(Op(op=kind, inputs=[inputs[0]], outputs=[mid], layer=layer, part=0, int8=int8[0]))
                ops.append(Op(op=kind, inputs=[mid], outputs=[out], layer=layer, part=1, int8=int8[1]))
            else:
                ops.append(Op(op=kind, inputs=[inputs[0]], outputs=[out], layer=layer, int8=int8[0]))
        for op in ops:  # views after an op's output
            op.inputs = [src(t) for t in op.inputs]
        return _fuse_post_ops(ops, {src(t) for t in v.graph.outputs})

    def signature(self, res: Resolved) -> tuple:
        """The eager signature and which layers run int8."""
        return (*super().signature(res), tuple(res.int8.values()))

    def specs(self, res: Resolved) -> list[tuple[Op | None, Any]]:
        ops = self.ops(res)
        producer = {t: op for op in ops for t in op.outputs}
        specs: list[tuple[Op | None, Any]] = []
        quantized: set[str] = set()
        for op in ops:
            if op.layer is not None and op.int8:
                x = op.inputs[0]
                prod = producer.get(x)
                if not (prod is not None and prod.layer is not None and prod.int8) and x not in quantized:
                    quantized.add(x)  # a FakeQuantize writes this layer's uint8 input
                    specs.append((Op(op="FakeQuantize", inputs=[x], outputs=[x]), None))
            if op.layer is not None:
                if op.op == "Conv":
                    w, groups = layer_weight(op, res)
                    kind = f"Convolution/{_conv_variant(w, groups) if len(w) == 4 else '1d'}"
                else:
                    kind = "FullyConnected"
                specs.append((op, kind + ("/int8" if op.int8 else "")))
                act = next((a for a in op.attrs.get("post", ()) if a not in ("Relu", "Add")), None)
                if op.int8 and act:  # an int8 kernel writes uint8; this activation then runs on its own
                    specs.append((Op(op=act, inputs=op.outputs, outputs=op.outputs),
                                  (f"Requantize/{act}", f"{op.outputs[0]}::{act}")))
            else:
                specs.append((op, None))
        return specs


def _fuse_post_ops(ops: list[Op], outputs: set[str]) -> list[Op]:
    """Each compute op absorbs the single-consumer chain after it: activations (SiLU's ``x * sigmoid(x)`` too)
    and at most one addition (a residual or a bias)."""
    consumers: dict[str, list[Op]] = {}
    for op in ops:
        for t in op.inputs:
            consumers.setdefault(t, []).append(op)
    dropped: set[int] = set()
    for op in ops:
        if op.layer is None:
            continue
        added = False
        while True:
            t = op.outputs[0]
            nxt = consumers.get(t, [])
            if t in outputs or not nxt:
                break
            if len(nxt) == 2 and {c.op for c in nxt} == {"Sigmoid", "Mul"}:  # SiLU: Sigmoid(t) and t * Sigmoid(t)
                sig = next(c for c in nxt if c.op == "Sigmoid")
                mul = next(c for c in nxt if c.op == "Mul")
                if sig.outputs[0] in mul.inputs and consumers.get(sig.outputs[0]) == [mul]:
                    dropped.update((id(sig), id(mul)))
                    op.outputs = list(mul.outputs)
                    op.attrs.setdefault("post", []).append("Swish")
                    continue
                break
            if len(nxt) != 1 or id(nxt[0]) in dropped:
                break
            c = nxt[0]
            if c.op == "Add" and not added and len(c.inputs) == 2:
                added = True
            elif not (c.op in POST_OPS and c.inputs[0] == t):
                break
            dropped.add(id(c))
            op.outputs = list(c.outputs)
            op.attrs.setdefault("post", []).append(c.op)
    return [op for op in ops if id(op) not in dropped]


__all__ = ["OpenVinoLowerer"]
