"""The ``torch`` backend: PyTorch eager on CPU (``torch.inference_mode``, batch 1, ``torch.set_num_threads``).

What runs: every module and tensor op of the model's ``forward``, one kernel each, as written. Compared with ONNX
Runtime there are no graph fusions (a BatchNorm after a convolution runs as its own kernel: eager does not fold
it), no layout changes, and **no int8 or sparse kernels**: a baked candidate's quantized weights are float tensors
on the plan's grid and its zeros are stored zeros, so quantized and sparse layers run the float kernels (the fitted
"MACs on non-zero weights" coefficient says whether sparsity helps; on this backend it does not). Activation
quantizers of a candidate are removed before timing, as a deployed eager model would not call them.

The kernel list of a plan is derived from the same per-teacher analysis as the ONNX Runtime predictor: the
teacher's exported (unoptimized) graph is one node per eager op, except that the exporter folds BatchNorm into
the preceding convolution (re-added here as a ``BatchNormalization`` kernel), computes shapes with
``Shape``/``Gather``/... nodes (Python ints in eager: dropped), writes GELU as five elementwise nodes (one
``Gelu`` kernel here) and splits a Linear on 3-D input into MatMul + Add
(one ``Linear`` kernel here). Low-rank layers are two kernels; every ``nn.Module`` call adds the fixed Python cost
of a module call (``ModuleCall``, counted once per teacher and student depth).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..tasks.inputs import Inputs, call
from .analysis import Resolved
from .kernels import (
    FEATURES,
    KernelProgram,
    Lowered,
    Op,
    Programs,
    _conv_variant,
    grouped_variants,
    layer_weight,
)

SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape"})


def module_calls(model: nn.Module, example_input: Inputs) -> int:
    """How many ``nn.Module`` calls one forward pass makes (containers included)."""
    count = [0]
    handles = [m.register_forward_pre_hook(lambda *_: count.__setitem__(0, count[0] + 1)) for m in model.modules()]
    try:
        with torch.inference_mode():
            call(model, example_input)
    finally:
        for h in handles:
            h.remove()
    return count[0]


class TorchLowerer:
    """Plan -> eager PyTorch kernels (kinds and features, see the module docstring)."""

    def __init__(self, analysis) -> None:
        self.analysis = analysis
        self._calls: dict[int, int] = {}
        self._static: dict[int, set[str]] = {}
        self._gelu: dict[int, dict[str, tuple[str, str] | None]] = {}
        self._cache = Programs()

    def _variant_calls(self, res: Resolved) -> int:
        v = res.variant
        if v.uid not in self._calls:
            model = self.analysis._model(v.removed)
            self._calls[v.uid] = module_calls(model, self.analysis.example_input)
        return self._calls[v.uid]

    def _static_tensors(self, res: Resolved) -> set[str]:
        """Tensors computed from shapes and constants only (Python ints in eager: no kernel)."""
        v = res.variant
        if v.uid not in self._static:
            static = set(v.graph.initializers)
            for n in v.graph.nodes:
                if n.op in SHAPE_OPS or all((not t) or t in static for t in n.inputs):
                    static.update(n.outputs)
            self._static[v.uid] = static
        return self._static[v.uid]

    def _gelus(self, res: Resolved) -> dict[str, tuple[str, str] | None]:
        """The exporter writes ``nn.GELU`` as Div -> Erf -> Add -> Mul -> Mul: node name -> (input, output) of the
        one eager GELU kernel for the Erf node, None for the other nodes of the pattern (per student depth)."""
        v = res.variant
        if v.uid in self._gelu:
            return self._gelu[v.uid]
        out: dict[str, tuple[str, str] | None] = {}
        producers, consumers = v.graph.producers(), v.graph.consumers()
        nodes = v.graph.nodes
        for n in nodes:
            if n.op != "Erf" or n.inputs[0] not in producers:
                continue
            div = nodes[producers[n.inputs[0]]]
            chain, cur = [], n
            for want in ("Add", "Mul", "Mul"):
                nxt = consumers.get(cur.outputs[0], [])
                if len(nxt) != 1 or nodes[nxt[0]].op != want:
                    break
                cur = nodes[nxt[0]]
                chain.append(cur)
            if div.op != "Div" or len(chain) != 3:
                continue
            out[n.name] = (div.inputs[0], chain[-1].outputs[0])
            for m in (div, *chain):
                out[m.name] = None
        self._gelu[v.uid] = out
        return out

    def ops(self, res: Resolved) -> list[Op]:
        v = res.variant
        static = self._static_tensors(res)
        layer_of_node = {ln.node: ln for ln in v.layers.values()}
        bias_adds = {ln.bias_add for ln in v.layers.values() if ln.bias_add}
        add_nodes = {n.name: n for n in v.graph.nodes if n.name in bias_adds}
        gelus = self._gelus(res)
        ops: list[Op] = []
        for n in v.graph.nodes:
            if n.name in bias_adds or n.op in ("Identity", "Constant", "Dropout"):
                continue
            if all(t in static for t in n.outputs if t):
                continue
            if n.name in gelus:
                io = gelus[n.name]
                if io is not None:
                    ops.append(Op(op="Gelu", inputs=[io[0]], outputs=[io[1]]))
                continue
            ln = layer_of_node.get(n.name)
            if ln is None:
                ops.append(Op(op=n.op, inputs=list(n.inputs), outputs=list(n.outputs), attrs=dict(n.attrs)))
                continue
            layer = ln.layer
            kind = "Conv" if ln.is_conv else "Linear"
            out = n.outputs[0]
            if ln.bias_add:  # a Linear on 3-D input: MatMul + Add in the graph, one F.linear in eager
                out = add_nodes[ln.bias_add].outputs[0]
            if layer in res.rank:
                mid = f"{layer}::rank"
                res.shapes.rank_tensor(mid, layer, n.outputs[0], ln.is_conv)
                ops.append(Op(op=kind, inputs=[n.inputs[0]], outputs=[mid], layer=layer, part=0))
                ops.append(Op(op=kind, inputs=[mid], outputs=[out], layer=layer, part=1))
            else:
                ops.append(Op(op=kind, inputs=[n.inputs[0]], outputs=[out], layer=layer))
            if ln.is_conv and ln.weight != f"{layer}.weight":  # BatchNorm folded by the exporter: runs in eager
                ops.append(Op(op="BatchNormalization", inputs=[out], outputs=[out]))
        return ops

    def signature(self, res: Resolved) -> tuple:
        """What the kernel list depends on: the student depth, which layers are factorized and the variants of
        grouped convolutions."""
        return (res.variant.uid, tuple(sorted(res.rank)), grouped_variants(res))

    def specs(self, res: Resolved) -> list[tuple[Op | None, Any]]:
        """The kernels of ``res`` as :class:`~autocompress.latency.kernels.KernelProgram` specs."""
        specs: list[tuple[Op | None, Any]] = []
        for op in self.ops(res):
            if op.layer is not None and op.op == "Conv":
                conv = Op(op="Conv", inputs=op.inputs, outputs=op.outputs, layer=op.layer, part=op.part)
                w, groups = layer_weight(op, res)
                kind = f"Conv/{_conv_variant(w, groups)}" if len(w) == 4 else "Conv/1d"
                if kind in ("Conv/kxk", "Conv/dw", "Conv/grouped"):
                    # eager convolutions change algorithm with the kernel size (a 5x5 costs far more per MAC)
                    kind += f"/{'x'.join(str(d) for d in w[2:])}"
                specs.append((conv, kind))
            elif op.layer is not None:
                specs.append((Op(op="Gemm", inputs=op.inputs, outputs=op.outputs, layer=op.layer, part=op.part),
                              "Linear"))
            else:
                specs.append((op, None))
        calls = self._variant_calls(res) + 2 * len(res.rank)  # a factorized layer: Sequential + second factor
        feats = np.zeros(len(FEATURES))
        feats[0] = float(calls)
        specs.append((None, ("ModuleCall", feats, "(module calls)")))
        return specs

    def seen(self, res: Resolved) -> bool:
        """Whether ``res``'s kernel structure is compiled already (its prediction only computes features)."""
        return self._cache.get(self.signature(res)) is not None

    def lower(self, res: Resolved) -> Lowered:
        sig = self.signature(res)
        program = self._cache.get(sig)
        if program is None:
            specs = self.specs(res)
            int8 = sum(1 for op, _ in specs if op is not None and op.layer is not None and op.int8)
            program = self._cache.put(sig, KernelProgram(specs, res, 1, int8_nodes=int8,
                                                            terms=self._cache.terms(res)))
        return program.lower(res)
