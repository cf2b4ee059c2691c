"""What a plan does to the teacher's exported graph, worked out once per teacher without materializing candidates.

Per student depth (the set of removed blocks) a :class:`Variant` holds:

- the float graph as exported (same exporter as the measured path), its tensor shapes at the measured batch size,
  and ONNX Runtime's own fusions of it (:func:`autocompress.latency.graph.runtime_fusions`);
- which graph node holds each compressible layer, and whether the measured path would lower it to int8 (it
  finds a layer's node by the exporter's scope name and weight shape, :func:`autocompress.runtime.onnx.module_nodes`,
  so BatchNorm-folded convolutions and Linears exported as MatMul are found too);
- for every layer, the dependency group Torch-Pruning prunes with it: how one pruned channel changes every
  parameter (found by pruning one channel through the same calls ``compress.structured.prune_channels`` makes) and
  every tensor of the graph (found by one shape-only run of the graph with resized weights). Shapes are linear in
  the number of channels pruned per group, so a plan's shapes are ``base - counts @ deltas``.

:meth:`TeacherAnalysis.resolve` then turns a plan into :class:`Resolved`: shapes, channel counts, low-rank ranks
and per-module precision, ready for :mod:`autocompress.latency.lowering`.
"""

from __future__ import annotations

import contextlib
import copy
import io
import itertools
import logging
import math
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx
import torch
import torch_pruning as tp
from torch import nn

from ..compress import registry
from ..compress.depth import removable_blocks, skip_blocks
from ..compress.heads import HeadGroup, attention_groups, current_heads, group_of, heads_kept
from ..compress.layers import LayerInfo, discover_layers, get_module, out_channels
from ..compress.lowrank import resolve_rank
from ..compress.structured import (
    BREAKS_FORWARD,
    _prune_fn,
    channel_target,
    cut_heads,
    group_skip_reason,
    runs,
)
from ..plan import CompressionPlan
from ..runtime.onnx import export_onnx, node_module
from ..tasks.inputs import Inputs, call, feed, first, repeat_first
from .graph import Fusions, OnnxGraph, model_with_shapes, optimized_graph, runtime_fusions, tensor_shapes

log = logging.getLogger(__name__)

COMPUTE_OPS = ("Conv", "Gemm", "MatMul")
POOL_OPS = ("MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "Concat")


class AnalysisError(ValueError):
    """The teacher's exported graph cannot be followed by the predictor (the message says where)."""


@dataclass
class LayerNode:
    """Where a compressible layer sits in the exported graph.

    node:     name of the Conv / Gemm / MatMul node holding its weight
    weight:   that node's weight initializer (``<layer>.weight`` unless the exporter folded a BatchNorm into it or
              transposed it for MatMul)
    bias_add: for a Linear exported as MatMul + Add, the Add node adding its bias
    int8_ok:  the measured path lowers it to int8 when the plan allows (its node is the only Conv/Gemm/MatMul of the
              layer's scope, so ``module_nodes`` finds it)
    """

    layer: str
    node: str
    op: str
    weight: str
    bias: str | None
    bias_add: str | None
    int8_ok: bool
    is_conv: bool
    groups: int
    has_bias: bool
    depthwise: bool = False


@dataclass
class GroupProbe:
    """What pruning one output channel of ``layer`` (with its dependency group) changes."""

    layer: str
    skip: str | None = None                   # why prune_channels would leave the layer as it is
    param_delta: np.ndarray | None = None     # per flattened parameter dimension
    tensor_delta: np.ndarray | None = None    # per flattened tensor dimension
    error: str | None = None                  # the graph's shapes could not be followed
    per_head: int = 0                         # an attention block's probe: output channels one head takes from
                                              # each projection (the deltas are of one head); 0: one channel
    _nonzero: tuple | None = field(default=None, repr=False, compare=False)

    def nonzero(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """The deltas' nonzero entries (a cut changes few of the graph's dims): parameter positions and deltas,
        tensor positions and deltas, computed once."""
        if self._nonzero is None:
            assert self.param_delta is not None
            p = np.flatnonzero(self.param_delta)
            t = np.flatnonzero(self.tensor_delta) if self.tensor_delta is not None else np.zeros(0, dtype=np.intp)
            tensor = self.tensor_delta[t] if self.tensor_delta is not None else np.zeros(0, dtype=np.int64)
            self._nonzero = (p, self.param_delta[p], t, tensor)
        return self._nonzero


_UIDS = itertools.count()


@dataclass
class Variant:
    """The teacher with a given set of blocks removed (student depth), analysed."""

    removed: tuple[str, ...]
    graph: OnnxGraph
    fusions: Fusions
    fusions_int8: Fusions                     # of the graph as the int8 path hands it over (with inferred shapes)
    present: list[LayerInfo]
    layers: dict[str, LayerNode]
    modules: dict[str, tuple[int, ...]]       # layer -> weight shape
    tensor_index: dict[str, tuple[int, int]]  # tensor -> (start, length) in the flat dims vector
    tensor_base: np.ndarray
    param_index: dict[str, tuple[int, int]]
    param_base: np.ndarray
    probes: dict[str, GroupProbe] = field(default_factory=dict)
    pool_inputs: list[str] = field(default_factory=list)   # inputs of pools/concats (NCHWc block alignment)
    uid: int = field(default_factory=lambda: next(_UIDS))  # identity for caches (ids of dead objects get reused)
    derived: dict = field(default_factory=dict, repr=False)  # lookups the lowerings derive from it, kept


class Shapes:
    """Tensor shapes of one plan, read lazily from the flat dims vector.

    Tensors the lowering creates are registered as aliases of the tensor whose shape they share (Q/DQ outputs,
    layout copies) or as the rank tensor between two low-rank factors.
    """

    def __init__(self, index: dict[str, tuple[int, int]], dims: np.ndarray, ranks: dict[str, int]) -> None:
        self._index, self._dims, self._ranks = index, dims, ranks
        self.aliases: dict[str, str] = {}
        self.rank_tensors: dict[str, tuple[str, str, bool]] = {}
        self._cache: dict[str, tuple[int, ...]] = {}

    def get(self, name: str, default: tuple[int, ...] = ()) -> tuple[int, ...]:
        hit = self._cache.get(name)
        if hit is not None:
            return hit
        if name in self.aliases:
            value = self.get(self.aliases[name], default)
        elif name in self.rank_tensors:
            layer, y, is_conv = self.rank_tensors[name]
            ys, r = self.get(y), self._ranks[layer]
            value = (ys[0], r, *ys[2:]) if is_conv else (*ys[:-1], r)
        else:
            pos = self._index.get(name)
            if pos is None:
                return default
            value = tuple(int(d) for d in self._dims[pos[0]:pos[0] + pos[1]])
        self._cache[name] = value
        return value

    @property
    def dims(self) -> np.ndarray:
        """The flat dims vector (every tensor of the variant's graph, ``Variant.tensor_index``)."""
        return self._dims

    def __getitem__(self, name: str) -> tuple[int, ...]:
        if name not in self:
            raise KeyError(name)
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        return name in self._index or name in self.aliases or name in self.rank_tensors

    def alias(self, name: str, base: str) -> None:
        self.aliases[name] = base
        self._cache.pop(name, None)

    def rank_tensor(self, name: str, layer: str, output: str, is_conv: bool) -> None:
        self.rank_tensors[name] = (layer, output, is_conv)
        self._cache.pop(name, None)


@dataclass
class Resolved:
    """A plan on one variant: everything the lowering needs, no weights."""

    variant: Variant
    shapes: Shapes
    weights: dict[str, tuple[int, ...]]        # layer -> weight shape after pruning
    groups: dict[str, int]                     # layer -> convolution groups after pruning
    rank: dict[str, int]                       # layer -> low-rank rank (factorized layers only)
    int8: dict[str, tuple[bool, bool]]         # layer -> (first, second) module runs int8 (second only after low rank)
    sparsity: dict[str, float]
    skipped: dict[str, str]
    int4: dict[str, tuple[bool, bool]] = field(default_factory=dict)  # the same for int4 weight-only MatMulNBits
    params: np.ndarray | None = None           # every parameter's dims after pruning (flat, ``variant.param_index``)


def _flat_index(shapes: dict[str, tuple[int, ...]]) -> tuple[dict[str, tuple[int, int]], np.ndarray]:
    index, values, pos = {}, [], 0
    for name, shape in shapes.items():
        index[name] = (pos, len(shape))
        values.extend(shape)
        pos += len(shape)
    return index, np.asarray(values, dtype=np.int64)


def _export(model: nn.Module, example_input: Inputs) -> onnx.ModelProto:

    with tempfile.TemporaryDirectory(prefix="autocompress-predict-") as tmp:
        path = Path(tmp) / "model.onnx"
        export_onnx(model, example_input, path)
        return onnx.load(str(path))


def _map_layers(graph: OnnxGraph, model: nn.Module, present: list[LayerInfo]) -> dict[str, LayerNode]:
    """Compute nodes with a weight initializer, in graph order, matched to the layers in execution order."""

    inits = graph.initializers
    compute = [n for n in graph.nodes if n.op in COMPUTE_OPS and len(n.inputs) > 1 and n.inputs[1] in inits]
    # what the measured path's module_nodes finds: the one Conv/Gemm/MatMul node of a module's scope
    names = [i.name for i in present]
    scopes: dict[str | None, int] = {}
    for n in compute:  # the weighted nodes, resolved to modules as module_nodes resolves them
        scope = node_module(n.name, names)
        scopes[scope] = scopes.get(scope, 0) + 1
    consumers = graph.consumers()
    if len(compute) != len(present):
        raise AnalysisError(f"the exported graph has {len(compute)} Conv/Gemm/MatMul nodes with weights but the "
                            f"model runs {len(present)} compressible layers; a layer called twice or a weight used "
                            f"outside a layer cannot be followed by the latency predictor")
    out: dict[str, LayerNode] = {}
    for node, info in zip(compute, present, strict=True):
        mod = get_module(model, info.name)
        w = tuple(mod.weight.shape)
        init = inits[node.inputs[1]]
        if node.op == "MatMul":
            ok = init == (w[1], w[0])
        elif node.op == "Gemm":
            ok = init == (w if node.attrs.get("transB", 0) else (w[1], w[0]))
        else:
            ok = init == w
        if not ok:
            raise AnalysisError(f"layer {info.name} (weight {w}) does not match the exported node {node.name} "
                                f"(weight {init}); the latency predictor cannot map this model's layers")
        bias_add = None
        has_bias = getattr(mod, "bias", None) is not None
        if node.op == "MatMul" and has_bias:
            for i in consumers.get(node.outputs[0], []):
                cand = graph.nodes[i]
                if cand.op == "Add" and any(inits.get(t) == (w[0],) for t in cand.inputs):
                    bias_add = cand.name
        out[info.name] = LayerNode(
            layer=info.name, node=node.name, op=node.op, weight=node.inputs[1],
            bias=node.inputs[2] if len(node.inputs) > 2 and node.inputs[2] else None, bias_add=bias_add,
            int8_ok=node_module(node.name, names) == info.name and scopes.get(info.name) == 1,
            is_conv=node.op == "Conv", groups=int(node.attrs.get("group", 1)),
            has_bias=has_bias, depthwise=node.op == "Conv" and 1 < int(node.attrs.get("group", 1)) == w[0]
            and w[1] == 1)
    return out


def _param_shapes(model: nn.Module) -> dict[str, tuple[int, ...]]:
    """Every parameter's shape by every name it has (a tied weight, such as a language model's head sharing the
    token embedding, under each module's name: layers are looked up as ``<layer>.weight``)."""
    return {n: tuple(p.shape) for n, p in model.named_parameters(remove_duplicate=False)}


class TeacherAnalysis:
    """Per-teacher analysis, computed lazily per student depth and cached.

    teacher:       the float teacher (not modified)
    example_input: one input batch (shape (1, ...))
    batch_size:    the batch size latency is predicted at
    """

    def __init__(self, teacher: nn.Module, example_input: Inputs, *, batch_size: int = 1,
                 prune_probes: bool = True) -> None:
        self.prune_probes = prune_probes  # False: plans may not prune channels (micro-benchmarks)
        self.teacher = teacher
        self.example_input = first(example_input)
        self.batch_size = batch_size
        self.infos = discover_layers(teacher, self.example_input)
        self.tuple_blocks: set[str] = set()
        self.blocks = removable_blocks(teacher, self.example_input, tuples=self.tuple_blocks)
        self._variants: dict[tuple[str, ...], Variant] = {}
        self._decisions: dict[tuple, tuple] = {}  # (layer, layer plan, weight shape) -> _decide(...)

    # --- depth ---------------------------------------------------------------------------------------------
    def removed_blocks(self, depth: float) -> tuple[str, ...]:
        """The blocks ``compress.depth.drop_blocks`` removes at ``depth`` (same rule)."""
        if depth >= 1.0:
            return ()
        removed: list[str] = []
        for blocks in self.blocks.values():
            removed.extend(blocks[math.ceil(depth * len(blocks)):])
        return tuple(removed)

    def variant(self, depth: float = 1.0) -> Variant:
        key = self.removed_blocks(depth)
        if key not in self._variants:
            self._variants[key] = self._build(key)
        return self._variants[key]

    # --- analysis ------------------------------------------------------------------------------------------
    def _model(self, removed: tuple[str, ...]) -> nn.Module:
        model = copy.deepcopy(self.teacher).eval()
        skip_blocks(model, removed, self.tuple_blocks)  # as compress.depth.drop_blocks does
        # The exporter merges initializers of equal value (the zero biases of a freshly initialized layer, the
        # ones of LayerNorms): one tensor shared by layers that pruning resizes apart, which no probe could follow.
        # The analysis reads shapes only, so every parameter gets its own offset (a tied parameter, listed once,
        # stays tied, as it is in the exported candidate).
        with torch.no_grad():
            for i, param in enumerate(model.parameters()):
                param.add_((i + 1) * 1e-3)
        return model

    def _build(self, removed: tuple[str, ...]) -> Variant:
        model = self._model(removed)
        present = [i for i in self.infos if not any(i.name.startswith(b + ".") for b in removed)]
        onnx_model = _export(model, self.example_input)
        graph = OnnxGraph.from_model(onnx_model)
        arrays = feed(repeat_first(self.example_input, self.batch_size))
        feeds = {name: arrays[name] for name in graph.inputs}
        shapes = tensor_shapes(onnx_model, feeds)
        fusions = runtime_fusions(graph, optimized_graph(onnx_model, "extended"))
        # quantize_int8 hands the runtime a graph with inferred shapes, which enables more fusions (e.g. Add +
        # LayerNormalization -> SkipLayerNormalization): plans with int8 layers lower from that one
        fusions_int8 = runtime_fusions(graph, optimized_graph(onnx.shape_inference.infer_shapes(onnx_model),
                                                              "extended"))
        layers = _map_layers(graph, model, present)
        tensor_index, tensor_base = _flat_index(shapes)
        params = _param_shapes(model)
        param_index, param_base = _flat_index(params)
        variant = Variant(removed=removed, graph=graph, fusions=fusions, fusions_int8=fusions_int8,
                          present=present, layers=layers,
                          modules={i.name: tuple(get_module(model, i.name).weight.shape) for i in present},
                          tensor_index=tensor_index, tensor_base=tensor_base, param_index=param_index,
                          param_base=param_base)
        variant.pool_inputs = [t for n in graph.nodes if n.op in POOL_OPS for t in n.inputs[:1 if n.op != "Concat" else None]
                               if t in shapes]
        if self.prune_probes:
            self._probe(variant, model, onnx_model, feeds, shapes, params)
        return variant

    def _probe(self, variant: Variant, model: nn.Module, onnx_model: onnx.ModelProto,
               feeds: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
               params: dict[str, tuple[int, ...]]) -> None:
        """One pruned channel per layer, through Torch-Pruning as ``prune_channels`` calls it."""
        present = variant.present
        protected = [i.name for i in present if i.is_output]
        work = copy.deepcopy(model)
        dg = None
        before = params
        heads = attention_groups(model)
        for info in present:
            group = group_of(heads, info.name)
            if group is not None:
                self._head_probe(variant, model, group, info.name, protected, onnx_model, feeds, shapes, params)
                continue
            if info.is_output or variant.modules[info.name][0] <= 1:
                continue
            probe = GroupProbe(layer=info.name)
            variant.probes[info.name] = probe
            for attempt in range(2):
                if dg is None:
                    dg = _dependency_graph(work, self.example_input)
                reason, pruned = _prune_one(dg, work, info.name, protected)
                if reason == "retry" and attempt == 0:  # an earlier probe cut this group too far: start afresh
                    work, dg, before = copy.deepcopy(model), None, params
                    continue
                break
            if reason is not None:
                probe.skip = reason if reason != "retry" else "pruning would remove every channel of a coupled layer"
                continue
            if not runs(work, self.example_input):  # as prune_channels: a cut that breaks the forward is not made
                probe.skip = BREAKS_FORWARD
                work, dg, before = copy.deepcopy(model), None, params
                continue
            after = _param_shapes(work)
            delta = np.zeros_like(variant.param_base)
            for name, (pos, n) in variant.param_index.items():
                if name in after and name in before:
                    delta[pos:pos + n] = np.subtract(before[name], after[name])
            before = after
            probe.param_delta = delta
            self._tensor_delta(variant, probe, onnx_model, feeds, shapes, params)

    def _head_probe(self, variant: Variant, model: nn.Module, group: HeadGroup, layer: str, protected: list[str],
                    onnx_model: onnx.ModelProto, feeds: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                    params: dict[str, tuple[int, ...]]) -> None:
        """One head cut from an attention block, as ``prune_channels`` cuts heads, on a copy of the unpruned model
        (the block's members share the probe: any of them cuts the same heads)."""
        first_member = variant.probes.get(group.members[0])
        if first_member is not None:
            variant.probes[layer] = first_member
            return
        if current_heads(model, group) <= 1:
            return
        probe = GroupProbe(layer=layer, per_head=group.per_head)
        variant.probes[layer] = probe
        work = copy.deepcopy(model)
        probe.skip = cut_heads(work, group, (group.heads - 1) * group.per_head, protected, self.example_input)
        if probe.skip:
            return
        if not runs(work, self.example_input):
            probe.skip = BREAKS_FORWARD
            return
        after = _param_shapes(work)
        delta = np.zeros_like(variant.param_base)
        for name, (pos, n) in variant.param_index.items():
            if name in after:
                delta[pos:pos + n] = np.subtract(params[name], after[name])
        probe.param_delta = delta
        self._tensor_delta(variant, probe, onnx_model, feeds, shapes, params)
        if probe.tensor_delta is not None:
            # The teacher's graph may carry the head count as a constant (a reshape to `self.num_heads` heads, which
            # the cut model updates): its resized run then splits heads wrongly without failing. The cut model's
            # own export says what the runtime will see; its activation shapes must be the predicted ones.
            predicted = {name: tuple(int(d) for d in variant.tensor_base[pos:pos + n] - probe.tensor_delta[pos:pos + n])
                         for name, (pos, n) in variant.tensor_index.items()}
            actual = tensor_shapes(_export(work, self.example_input), feeds)
            if _activation_shapes(predicted) != _activation_shapes(actual):
                probe.error = ("the graph keeps its head count as a constant, so cutting heads changes shapes the "
                               "resized teacher graph does not show")

    def _tensor_delta(self, variant: Variant, probe: GroupProbe, onnx_model: onnx.ModelProto,
                      feeds: dict[str, np.ndarray], shapes: dict[str, tuple[int, ...]],
                      params: dict[str, tuple[int, ...]]) -> None:
        """Shapes of every tensor with this group pruned by one channel, from a run with resized weights."""
        assert probe.param_delta is not None
        new_param = {name: tuple(np.subtract(params[name], probe.param_delta[pos:pos + n]).tolist())
                     for name, (pos, n) in variant.param_index.items() if probe.param_delta[pos:pos + n].any()}
        resize: dict[str, tuple[int, ...]] = {}
        per_node: dict[tuple[str, int], tuple[int, ...]] = {}
        groups: dict[str, int] = {}
        inits = variant.graph.initializers
        for name, shape in new_param.items():
            if name in inits:
                resize[name] = shape
        for layer, ln in variant.layers.items():
            wname = f"{layer}.weight"
            if wname not in new_param:
                continue
            w = new_param[wname]
            if ln.depthwise:
                groups[ln.node] = w[0]
            if ln.weight != wname:  # BN-folded conv or MatMul (transposed) weight: give this node its own copy
                per_node[(ln.node, 1)] = (w[1], w[0]) if ln.op == "MatMul" else w
                if ln.bias and ln.bias != f"{layer}.bias":
                    per_node[(ln.node, 2)] = (w[0],)
        try:
            new_shapes = tensor_shapes(model_with_shapes(onnx_model, resize, per_node, groups), feeds)
        except Exception as e:  # the graph hard-codes a size that pruning changes (e.g. a reshape to heads)
            probe.error = f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"
            return
        delta = np.zeros_like(variant.tensor_base)
        for name, (pos, n) in variant.tensor_index.items():
            new = new_shapes.get(name)
            if new is not None and len(new) == n:
                delta[pos:pos + n] = np.subtract(shapes[name], new)
        probe.tensor_delta = delta

    # --- per plan ------------------------------------------------------------------------------------------
    def resolve(self, plan: CompressionPlan) -> Resolved:
        """Channel counts, shapes, ranks and precisions of ``plan`` as ``compress.apply`` + the measured path
        would produce them."""
        unknown = sorted(set(plan.layers) - {i.name for i in self.infos})
        if unknown:
            raise ValueError(f"plan names layers the model does not have: {unknown}; the model's compressible "
                             f"layers are {sorted(i.name for i in self.infos)}")
        v = self.variant(plan.student.depth)
        skipped: dict[str, str] = {}
        counts: dict[str, int] = {}
        params = v.param_base.copy()
        width, multiple = plan.student.width, plan.student.channel_multiple
        for info in v.present:
            lp = plan.layer(info.name)
            target = None if info.is_output else channel_target(info.out_channels, width, lp.channel_keep, multiple)
            if target is None:
                continue
            pos, _ = v.param_index[f"{info.name}.weight"]
            n = int(params[pos])
            if target >= n:
                continue
            probe = v.probes.get(info.name)
            if probe is None:
                if not self.prune_probes:
                    raise AnalysisError("this analysis was built without pruning probes; it cannot predict channel "
                                        f"pruning (layer {info.name})")
                continue
            if probe.skip:
                skipped[info.name] = probe.skip
                continue
            assert probe.param_delta is not None
            k = n - target
            if probe.per_head:  # whole heads (compress.heads): counts and deltas are in heads
                k = n // probe.per_head - heads_kept(target, probe.per_head)
                if k <= 0:
                    continue
            p_idx, p_delta, _, _ = probe.nonzero()
            after = params[p_idx] - k * p_delta
            if (after[p_delta > 0] <= 0).any():
                skipped[info.name] = "pruning would remove every channel of a coupled layer"
                continue
            if probe.error:
                raise AnalysisError(f"pruning layer {info.name} changes tensor shapes the latency predictor cannot "
                                    f"follow ({probe.error}); measure latency instead (latency: {{measure: true}})")
            counts[info.name] = counts.get(info.name, 0) + k
            params[p_idx] = after
        dims = v.tensor_base
        if counts:
            dims = dims.copy()
            for name, k in counts.items():
                _, _, t_idx, t_delta = v.probes[name].nonzero()
                dims[t_idx] -= k * t_delta
        weights, groups = {}, {}
        for layer, ln in v.layers.items():
            pos, n = v.param_index[f"{layer}.weight"]
            weights[layer] = tuple(params[pos:pos + n].tolist())
            groups[layer] = weights[layer][0] if ln.depthwise else ln.groups
        rank: dict[str, int] = {}
        int8: dict[str, tuple[bool, bool]] = {}
        int4: dict[str, tuple[bool, bool]] = {}
        sparsity: dict[str, float] = {}
        decisions = self._decisions
        if len(decisions) > 65536:
            decisions.clear()
        for layer, ln in v.layers.items():
            lp = plan.layer(layer)
            w = weights[layer]
            key = (layer, lp, w)
            decided = decisions.get(key)
            if decided is None:
                decided = decisions[key] = _decide(ln, lp, w)
            r, why, quant, nbits, density = decided
            if why is not None:
                skipped.setdefault(layer, why)
            elif r is not None:
                rank[layer] = r
            # factors <layer>.0 and <layer>.1 are found by their scopes, like the layer itself
            int8[layer] = (quant, quant and layer in rank)
            if nbits:
                int4[layer] = (True, layer in rank)
            sparsity[layer] = 1.0 - density  # the same masks as apply
        return Resolved(variant=v, shapes=Shapes(v.tensor_index, dims, rank), weights=weights, groups=groups, rank=rank, int8=int8, sparsity=sparsity,
                        skipped=skipped, int4=int4, params=params)


def _activation_shapes(shapes: dict[str, tuple[int, ...]]) -> list[tuple[int, ...]]:
    """The shapes of 3-D and larger tensors, sorted (names differ between two exports of one architecture)."""
    return sorted(s for s in shapes.values() if len(s) >= 3)


def _decide(ln: LayerNode, lp, w: tuple[int, ...]) -> tuple[int | None, str | None, bool, bool, float]:
    """A layer's per-plan decisions from its (frozen) layer plan and pruned weight shape, which is all they depend
    on (:meth:`TeacherAnalysis.resolve` caches them): low-rank rank (or why not), int8 and int4 kernels, the density
    of ``apply``'s masks (``registry.density``; the plan's fields are plain values, so ``vars`` is the cheap
    ``asdict``)."""
    r, why = resolve_rank(w, lp.rank_ratio, ln.groups if ln.is_conv else 1) if lp.rank_ratio < 1 else (None, None)
    quant = lp.int8_kernel and ln.int8_ok
    # a Linear's Gemm / MatMul node becomes MatMulNBits (runtime.onnx lowers it so)
    nbits = lp.int4_kernel and ln.int8_ok and not ln.is_conv and ln.op in ("Gemm", "MatMul")
    return r, why, quant, nbits, registry.density(vars(lp), w)


def _dependency_graph(model: nn.Module, example_input: Inputs):
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        return tp.DependencyGraph().build_dependency(model, example_inputs=example_input, forward_fn=call,
                                                     verbose=False)


def _prune_one(dg, model: nn.Module, name: str, protected: list[str]) -> tuple[str | None, bool]:
    """Prune one channel of ``name``'s group, with the checks of ``compress.structured.prune_channels``.

    Returns ``(None, True)`` when pruned, ``(reason, False)`` when prune_channels would skip the layer, and
    ``("retry", False)`` when only the earlier probes made the group too small.
    """

    guarded = {id(get_module(model, n)) for n in protected}
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    mod = get_module(model, name)
    n = out_channels(mod)
    fn = _prune_fn(mod)
    try:
        group = dg.get_pruning_group(mod, fn, idxs=list(range(n)))
        scores = importance(group)
        if scores is None:
            return "no importance for its dependency group", False
        idxs = torch.argsort(scores)[:1].tolist()
        group = dg.get_pruning_group(mod, fn, idxs=idxs)
        why = group_skip_reason(dg, group, guarded)
        if why == "pruning would remove every channel of a coupled layer":
            return "retry", False
        if why:
            return why, False
        group.prune()
    except Exception as e:
        return f"structured pruning unsupported here ({type(e).__name__}: {e})", False
    return None, True
