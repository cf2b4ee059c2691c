"""Kernels: the records a lowering works on (:class:`Op`), what it produces (:class:`Kernel`, :class:`Lowered`),
and each kernel's kind and :data:`FEATURES` under a plan.

A lowering's kernel list depends on a plan only through its structural signature (which layers run int8, which
are factorized, ...); the numbers in the features (channel counts, shapes, sparsity, ranks) change with every plan.
So a structure is compiled once into a :class:`KernelProgram`: every kernel's kind and, for each of its features,
which entries of the plan's flat dimension vectors (tensor shapes, parameter shapes, ranks) it multiplies. Per plan
the program gathers those entries and computes every kernel's features at once with a few array operations.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np

if TYPE_CHECKING:
    from .analysis import Resolved

# per kernel: a constant (launch), multiply-accumulates, elements read / written, weights, MACs on non-zero weights
# (what sparse kernels would do), output positions (rows of a GEMM), positions x kernel taps, im2col elements (as
# is and with channels padded to 8, what vectorized im2col does with few channels)
# and min(MACs, 1e4 / 1e5 / 1e6): with non-negative coefficients the cost is a concave, increasing function of the
# MACs (small kernels run at lower efficiency), learned from the measurements
# and weights beyond 64 Ki / 256 Ki elements (convex: a matrix that no longer fits a cache level streams slower)
FEATURES = ("one", "macs", "in_elems", "out_elems", "weight_elems", "nz_macs", "pixels", "pixels_k", "im2col",
            "im2col_pad8", "macs_lo4", "macs_lo5", "macs_lo6", "weight_over_64k", "weight_over_256k")
MAC_KNOTS = (1e4, 1e5, 1e6)
WEIGHT_KNOTS = (65536.0, 262144.0)
LAYER_CONVS = ("Conv", "FusedConv", "QLinearConv")
POOLS = frozenset({"MaxPool", "AveragePool", "NhwcMaxPool", "QLinearAveragePool"})
LINEAR_KINDS = {"Gemm": "Gemm", "FusedGemm": "Gemm", "QGemm": "QGemm", "QLinearMatMul": "QLinearMatMul/w",
                "MatMulNBits": "MatMulNBits"}


@dataclass(eq=False)
class Op:
    """A node of the working graph (identity-compared)."""

    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, Any] = field(default_factory=dict)
    layer: str | None = None              # compute op of this teacher layer
    part: int = 0                         # 0: the layer (or its first low-rank factor), 1: the second factor
    weight: tuple[int, ...] = ()          # weight shape of a compute op (after pruning / factorization)
    groups: int = 1
    int8: bool = False                    # compute op lowered to int8
    int4: bool = False                    # Linear lowered to int4 weight-only MatMulNBits
    u8: bool = False                      # data op running on uint8 (Q/DQ dropped around it)
    nchwc: bool = False
    direct: bool = False                  # NCHWc conv reading an NCHW input directly (few input channels)
    fused_sum: str | None = None          # NCHWc conv accumulating this tensor (fused Add)
    nhwc: bool = False
    scale: str | None = None              # Q/DQ: the tensor whose calibrated scale it uses


@dataclass
class Kernel:
    """One kernel the runtime runs: ``kind`` and its :data:`FEATURES` vector."""

    kind: str
    features: np.ndarray
    name: str = ""


class Lowered:
    """The kernels of one plan (kinds, and features as one matrix, a row per kernel), plus what the prediction
    reports. ``kinds`` is shared by every plan of one structure (the cost model caches its coefficient rows by it)."""

    def __init__(self, kernels: list[Kernel] | None = None, *, int8_nodes: int, input_elems: int,
                 output_elems: int, skipped: dict[str, str], kinds: tuple[str, ...] | None = None,
                 features: np.ndarray | None = None, names: tuple[str, ...] | None = None) -> None:
        if kernels is not None:
            kinds = tuple(k.kind for k in kernels)
            names = tuple(k.name for k in kernels)
            features = np.stack([k.features for k in kernels]) if kernels else np.zeros((0, len(FEATURES)))
        assert kinds is not None and features is not None and names is not None
        self.kinds, self.features, self.names = kinds, features, names
        self.int8_nodes, self.input_elems, self.output_elems, self.skipped = (int8_nodes, input_elems,
                                                                                 output_elems, skipped)

    @property
    def kernels(self) -> list[Kernel]:
        return [Kernel(kind=k, features=f, name=n) for k, f, n in zip(self.kinds, self.features, self.names,
                                                                         strict=True)]


def _elems(shape: tuple[int, ...]) -> int:
    return int(math.prod(shape)) if shape else 0


def layer_weight(op: Op, res: Resolved) -> tuple[tuple[int, ...], int]:
    """Weight shape and groups of a compute op under ``res`` (after pruning and low rank)."""
    layer = op.layer
    assert layer is not None
    w = res.weights[layer]
    r = res.rank.get(layer)
    if r is None:
        return w, res.groups[layer]
    if res.variant.layers[layer].is_conv:
        return ((r, *w[1:]) if op.part == 0 else (w[0], r, *([1] * (len(w) - 2)))), 1
    return ((r, w[1]) if op.part == 0 else (w[0], r)), 1


def _conv_variant(w: tuple[int, ...], groups: int) -> str:
    o, cg = w[0], w[1]
    if groups > 1:
        return "dw" if cg == 1 and o == groups else "grouped"
    if all(k == 1 for k in w[2:]):
        return "1x1"
    return "kxk"


def _set(feats: np.ndarray, macs: float, in_elems: float, out_elems: float, weight: float, nz_macs: float,
         pixels: float = 0.0, pixels_k: float = 0.0, im2col: float = 0.0, im2col_pad8: float = 0.0) -> None:
    feats[1:] = (macs, in_elems, out_elems, weight, nz_macs, pixels, pixels_k, im2col, im2col_pad8,
                 *(min(macs, k) for k in MAC_KNOTS), *(max(0.0, weight - k) for k in WEIGHT_KNOTS))


def grouped_variants(res: Resolved) -> tuple[str, ...]:
    """The kernel variant of every grouped or depthwise convolution layer under ``res``: the part of a kernel
    structure's kinds that pruning can change (a depthwise layer cut to one channel runs as a plain convolution);
    part of every lowering's structural signature."""
    return tuple(_conv_variant(res.weights[layer], res.groups[layer]) for layer, ln in res.variant.layers.items()
                 if ln.is_conv and ln.groups > 1 and layer not in res.rank)


# --- compiled kernel features --------------------------------------------------------------------------------

CONV, LINEAR, OTHER, CONSTANT = 0, 1, 2, 3
# The per-kernel quantities a program gathers, each a sum of products of plan-vector entries:
#   o, cg      a layer's output channels and input channels per group (a Linear: out and in features)
#   ksize      kernel taps;  spatial, n: output positions per image and batch;  x: elements read (of every data
#              input, for an op outside a layer);  x1: channels of a layer's input (NCHWc pads them)
#   fused      elements of the sum an NCHWc convolution accumulates;  y: elements written (op outside a layer)
#   k          an op outside a layer does y * k MACs (MatMul: the inner dimension; Conv: its weight per output;
#              a pool: its kernel taps)
#   rs, rs1    a layout reorder's tensor: elements and channels (it moves them padded to the block)
SLOTS = ("o", "cg", "ksize", "spatial", "n", "x", "x1", "fused", "y", "k", "rs", "rs1")
# nchwc: an NCHWc convolution; direct: it reads NCHW (channels not padded); dwpad: its input channels are padded
# (neither direct nor depthwise); hasx: its input shape is known; int4: MatMulNBits (dense MACs); reorder: a
# layout reorder; bn: an NCHWc BatchNormalization (one MAC per element)
FLAGS = ("nchwc", "direct", "dwpad", "hasx", "int4", "reorder", "bn")
COL = {name: i for i, name in enumerate(FEATURES)}


class Recipe(NamedTuple):
    """How one kernel's kind and features come from a plan: its kind, its layer (None for other ops), and its row
    of :attr:`Terms.table`: its branch of :meth:`KernelProgram.features` (layer convolution, Linear layer, other
    op, constant), its :data:`FLAGS` and a term id per :data:`SLOTS` entry."""

    kind: str
    layer: str | None
    row: int


class Terms:
    """One variant's (student depth's) table of terms: sums of products of entries of the plan vector

        E = [tensor dims | parameter dims | rank of each layer | 1, 0 | constants]

    and the :class:`Recipe` of every op seen so far. A tensor's name says
    which tensor's shape it has (the lowering's new tensors are named after the one they alias), so an op's recipe
    holds for every structure of the variant: a new structure mostly reuses the recipes of ops already seen.
    """

    def __init__(self, res: Resolved) -> None:
        v = res.variant
        self._n_dims, self._n_params = len(v.tensor_base), len(v.param_base)
        self._layers = {layer: i for i, layer in enumerate(v.layers)}
        self.one = self._n_dims + self._n_params + len(self._layers)
        self.zero = self.one + 1
        self._constants: list[int] = []
        self._terms: dict[tuple, int] = {}
        self._arrays: tuple[np.ndarray, ...] | None = None
        self.recipes: dict[tuple, Recipe] = {}
        self.zero_term, self.one_term = self.term([self.zero]), self.term([self.one])
        # every recipe's branch, flags and slots as a row (row 0: a constant kernel's), so a program gathers its
        # kernels' rows with one indexing instead of converting their tuples
        self._rows: list[tuple[int, ...]] = [(CONSTANT, *(0,) * len(FLAGS), *(self.zero_term,) * len(SLOTS))]
        self._table: np.ndarray | None = None

    @property
    def table(self) -> np.ndarray:
        """Recipe rows: branch, :data:`FLAGS`, :data:`SLOTS` (term ids)."""
        if self._table is None or len(self._table) != len(self._rows):
            self._table = np.asarray(self._rows, dtype=np.intp)
        return self._table

    def rank_position(self, layer: str) -> int:
        return self._n_dims + self._n_params + self._layers[layer]

    def constant(self, value: int) -> list[int]:
        """A product of one entry holding ``value`` (a number no plan changes)."""
        self._constants.append(int(value))
        self._arrays = None
        return [self.zero + len(self._constants)]

    def term(self, *products: list[int]) -> int:
        key = tuple(tuple(p) if p else (self.one,) for p in products) or ((self.zero,),)
        got = self._terms.get(key)
        if got is None:
            got = self._terms[key] = len(self._terms)
            self._arrays = None
        return got

    def values(self, res: Resolved) -> np.ndarray:
        """Every term's value under ``res``."""
        if res.params is None:
            raise ValueError("the resolved plan carries no parameter dims (Resolved.params)")
        if self._arrays is None:
            prods = [p for t in self._terms for p in t]
            self._arrays = (np.asarray([e for p in prods for e in p], dtype=np.intp),
                            np.cumsum([0] + [len(p) for p in prods[:-1]], dtype=np.intp),
                            np.cumsum([0] + [len(t) for t in list(self._terms)[:-1]], dtype=np.intp))
        flat, prod_at, term_at = self._arrays
        ranks = np.zeros(len(self._layers), dtype=np.int64)
        for layer, r in res.rank.items():
            ranks[self._layers[layer]] = r
        e = np.concatenate((res.shapes.dims, res.params, ranks, np.asarray([1, 0, *self._constants],
                                                                            dtype=np.int64)))
        return np.add.reduceat(np.multiply.reduceat(e[flat], prod_at), term_at)

    def recipe(self, op: Op, kind: str | None, res: Resolved) -> Recipe:
        """The :class:`Recipe` of ``op``, cached by its fields with each tensor named
        by the one whose shape it has (the lowering numbers the tensors it creates in order, so the same Q/DQ
        tensor has another name in another structure; :class:`KernelProgram` names each kernel after its own op)."""
        aliases, inits = res.shapes.aliases, res.variant.graph.initializers

        def base(t: str) -> str:
            while t in aliases:
                t = aliases[t]
            return t

        # (most tensors have no alias: the membership test is cheaper than a call per tensor)
        ins = tuple([base(t) if t in aliases else t for t in op.inputs])
        outs = tuple([base(t) if t in aliases else t for t in op.outputs])
        variant = (_conv_variant(*layer_weight(op, res)) if op.layer is not None and op.op in LAYER_CONVS
                   else None)  # pruning can change it (a depthwise layer down to one channel)
        key = (op.op, ins, tuple([t in inits for t in op.inputs]), outs,
               op.layer, op.part, op.layer in res.rank, op.nchwc, op.direct, op.fused_sum and base(op.fused_sum),
               op.u8, op.int4, op.attrs.get("transA") if op.attrs else None, variant, kind)
        got = self.recipes.get(key)
        if got is None:
            got = self.recipes[key] = self._compile(op, kind, res)
        return got

    def _dims(self, name: str, res: Resolved) -> list[int] | None:
        """E-indices of a tensor's dims, resolved as ``Shapes.get`` resolves it (None: unknown)."""
        shapes = res.shapes
        if name in shapes.aliases:
            return self._dims(shapes.aliases[name], res)
        if name in shapes.rank_tensors:
            layer, y, is_conv = shapes.rank_tensors[name]
            ys = self._dims(y, res)
            if ys is None:
                raise KeyError(y)
            r = self.rank_position(layer)
            return [ys[0], r, *ys[2:]] if is_conv else [*ys[:-1], r]
        pos = res.variant.tensor_index.get(name)
        return None if pos is None else list(range(pos[0], pos[0] + pos[1]))

    def _weight(self, op: Op, res: Resolved) -> list[int]:
        """E-indices of ``layer_weight(op, res)[0]``."""
        layer = op.layer
        assert layer is not None
        pos, n = res.variant.param_index[f"{layer}.weight"]
        w = [self._n_dims + pos + i for i in range(n)]
        if layer not in res.rank:
            return w
        r = self.rank_position(layer)
        if res.variant.layers[layer].is_conv:
            return [r, *w[1:]] if op.part == 0 else [w[0], r, *([self.one] * (n - 2))]
        return [r, w[1]] if op.part == 0 else [w[0], r]

    def _compile(self, op: Op, override: str | None, res: Resolved) -> Recipe:
        term, inits = self.term, res.variant.graph.initializers
        zero, one = self.zero_term, self.one_term  # the terms 0 and 1 (self.zero, self.one: E entries)
        slot = dict.fromkeys(SLOTS, zero)
        flags = dict.fromkeys(FLAGS, False)
        x = op.inputs[0] if op.inputs else ""
        name = op.outputs[0] if op.outputs else ""
        xs, ys = self._dims(x, res) or [], self._dims(name, res) or []
        layer = op.layer
        if layer is not None and op.op in LAYER_CONVS:
            branch = CONV
            w = self._weight(op, res)
            wv, groups = layer_weight(op, res)
            variant = _conv_variant(wv, groups)
            slot["o"], slot["cg"], slot["ksize"] = term(w[:1]), term(w[1:2]), term(w[2:])
            slot["spatial"] = term(ys[2:]) if len(ys) > 2 else one
            slot["n"] = term(ys[:1]) if ys else one
            slot["x"] = term(xs) if xs else zero
            if op.op == "QLinearConv":
                kind = f"QLinearConv/{variant}"
            elif op.nchwc:
                kind = f"Conv/nchwc/{'direct' if op.direct else variant}"
                flags.update(nchwc=True, direct=op.direct, dwpad=not op.direct and variant != "dw", hasx=bool(xs))
                slot["x1"] = term(xs[1:2]) if xs else one
            else:
                kind = f"Conv/{variant}" if len(wv) == 4 else "Conv/1d"
            if op.fused_sum:
                fs = self._dims(op.fused_sum, res)
                slot["fused"] = term(fs) if fs else zero
        elif layer is not None:
            branch = LINEAR
            w = self._weight(op, res)
            slot["o"], slot["cg"] = term(w[:1]), term(w[1:2])
            slot["x"] = term(xs) if xs else zero
            flags.update(hasx=bool(xs), int4=op.int4)
            kind = LINEAR_KINDS.get(op.op, "MatMul/w")
        else:
            branch = OTHER
            kind = op.op
            # (Shape and Size read only their input's metadata)
            data_in = [] if kind in ("Shape", "Size") else [self._dims(t, res) for t in op.inputs
                                                             if t and t not in inits]
            slot["x"] = term(*[d for d in data_in if d])
            outs = [self._dims(t, res) for t in op.outputs if t]
            slot["y"] = term(*[d for d in outs if d])
            if kind in ("MatMul", "FusedMatMul"):
                a, b = (self._dims(t, res) or [] for t in op.inputs[:2])
                if a and b:
                    slot["k"] = term([a[-1] if not op.attrs.get("transA") else a[-2]])
            if kind in POOLS and op.attrs.get("kernel_shape"):  # a pool compares / adds kernel taps per output
                slot["k"] = term(self.constant(math.prod(op.attrs["kernel_shape"])))
            if kind in ("Conv", "FusedConv") and len(op.inputs) > 1:
                wshape = inits.get(op.inputs[1], ())
                if wshape:
                    slot["k"] = term(self.constant(math.prod(wshape[1:])))
            if op.nchwc and kind not in ("ReorderInput", "ReorderOutput"):
                kind += "/nchwc"
            elif kind in ("ReorderInput", "ReorderOutput"):
                shape = self._dims(x if kind == "ReorderInput" else name, res) or []
                if len(shape) > 1:
                    flags["reorder"] = True
                    slot["rs"], slot["rs1"] = term(shape), term(shape[1:2])
            elif op.u8 and kind not in ("NhwcMaxPool",):
                kind += "/u8"
            flags["bn"] = kind == "BatchNormalization/nchwc"
        self._rows.append((branch, *flags.values(), *slot.values()))
        return Recipe(override or kind, layer, len(self._rows) - 1)


class KernelProgram:
    """The kernels of one lowered structure, compiled against the plan ``res`` it was lowered for.

    ``specs``: per kernel, ``(op, kind)`` with ``kind`` None for the kind the ONNX Runtime rules give (a backend
    names its kernels its own way; ``(kind, name)`` names the kernel too), or ``(None, (kind, features, name))``
    for a kernel whose features no plan changes.
    ``terms``: the variant's :class:`Terms` (shared by the programs of one predictor). Plans of the same structure
    (same signature) may then be evaluated: :meth:`features`, :meth:`lower`.
    """

    def __init__(self, specs: list[tuple[Op | None, Any]], res: Resolved, block: int, *, int8_nodes: int = 0,
                 terms: Terms | None = None) -> None:
        self.block, self.int8_nodes = block, int8_nodes
        self.terms = terms if terms is not None else Terms(res)
        recipes: list[Recipe] = []
        names: list[str] = []
        constants: dict[int, np.ndarray] = {}
        for i, (op, extra) in enumerate(specs):
            if op is None:
                kind, feats, name = extra
                constants[i] = np.asarray(feats, dtype=float)
                recipes.append(Recipe(kind, None, 0))  # row 0: a constant kernel's
                names.append(name)
            elif isinstance(extra, tuple):  # (kind, name)
                recipes.append(self.terms.recipe(op, extra[0], res))
                names.append(extra[1])
            else:
                recipes.append(self.terms.recipe(op, extra, res))
                names.append(op.outputs[0] if op.outputs else "")
        self.kinds = tuple(r.kind for r in recipes)
        self.names = tuple(names)
        table = self.terms.table[np.fromiter((r.row for r in recipes), np.intp, len(recipes))]
        branch = table[:, 0]
        self._conv, self._linear = branch == CONV, branch == LINEAR
        flags = table[:, 1:1 + len(FLAGS)].astype(bool)
        (self._nchwc, self._direct, self._dwpad, self._hasx, self._int4, self._reorder,
         self._bn) = flags.T
        self._slots = table[:, 1 + len(FLAGS):].T
        self._layer_rows = [i for i, r in enumerate(recipes) if r.layer is not None]
        self._layer_names = [recipes[i].layer for i in self._layer_rows]
        self._constant_rows = constants

    def lower(self, res: Resolved) -> Lowered:
        """The kernels of ``res`` (a plan of this program's structure)."""
        v = res.variant
        x = v.graph.inputs[0] if v.graph.inputs else ""
        return Lowered(kinds=self.kinds, features=self.features(res), names=self.names, int8_nodes=self.int8_nodes,
                       input_elems=_elems(res.shapes.get(x, ())),
                       output_elems=sum(_elems(res.shapes.get(o, ())) for o in v.graph.outputs),
                       skipped=res.skipped)

    def features(self, res: Resolved) -> np.ndarray:
        """Every kernel's features under ``res`` (a plan of the structure this program was compiled for), one
        array operation per quantity over all kernels (integer dims, floats only where the features are)."""
        vals = self.terms.values(res)
        o, cg, ksize, spatial, n, x, x1_raw, fused, y, k, rs_raw, rs1 = (vals[idx] for idx in self._slots)
        block = self.block
        n_k = len(self.kinds)
        sparsity = np.zeros(n_k)
        if self._layer_rows:
            sparsity[self._layer_rows] = [res.sparsity[layer] for layer in self._layer_names]

        def pad(a: np.ndarray, b: int) -> np.ndarray:
            return a if b <= 1 else -(-a // b) * b

        conv, lin = self._conv, self._linear
        # convolutions of a layer (NCHWc pads output channels, and input channels unless direct or depthwise)
        o_c = np.where(self._nchwc, pad(o, block), o)
        cg_c = np.where(self._dwpad, pad(cg, block), cg)
        x_nchwc = x // np.maximum(x1_raw, 1) * np.where(self._direct, x1_raw, pad(x1_raw, block))
        in_c = np.where(self._nchwc & self._hasx, x_nchwc, x) + fused
        pix_c = n * spatial
        # Linear layers: rows = input elements / input features
        rows = np.where(self._hasx, x // np.maximum(cg, 1), 1)
        # other ops: elements in and out, MatMul / Conv MACs, layout reorders at the padded channel count
        rs = rs_raw // np.maximum(rs1, 1) * pad(rs1, block)
        macs = np.where(conv, n * o_c * spatial * cg_c * ksize, np.where(lin, rows * cg * o, y * k))
        out_e = np.where(conv, n * o_c * spatial, np.where(lin, rows * o, np.where(self._reorder, rs, y)))
        macs = np.where(self._bn, out_e, macs)
        in_e = np.where(conv, in_c, np.where(self._reorder, rs, x))
        weight = np.where(conv, o_c * cg_c * ksize, np.where(lin, cg * o, 0))
        pixels = np.where(conv, pix_c, np.where(lin, rows, 0))
        pixels_k = np.where(conv, pix_c * ksize, np.where(lin, rows, 0))
        im2col = np.where(conv, pix_c * ksize * cg_c, np.where(lin, rows * cg, 0))
        pad8 = np.where(conv, pix_c * ksize * pad(cg_c, 8), np.where(lin, rows * pad(cg, 8), 0))
        macs_f = macs.astype(float)
        feats = np.empty((n_k, len(FEATURES)))
        for name, column in (("one", 1.0), ("macs", macs_f), ("in_elems", in_e), ("out_elems", out_e),
                             ("weight_elems", weight),
                             ("nz_macs", np.where(conv | (lin & ~self._int4), macs_f * (1.0 - sparsity), macs_f)),
                             ("pixels", pixels), ("pixels_k", pixels_k), ("im2col", im2col), ("im2col_pad8", pad8)):
            feats[:, COL[name]] = column
        for name, knot in zip(("macs_lo4", "macs_lo5", "macs_lo6"), MAC_KNOTS, strict=True):
            feats[:, COL[name]] = np.minimum(macs_f, knot)
        w_f = weight.astype(float)
        for name, knot in zip(("weight_over_64k", "weight_over_256k"), WEIGHT_KNOTS, strict=True):
            feats[:, COL[name]] = np.maximum(0.0, w_f - knot)
        for i, row in self._constant_rows.items():
            feats[i] = row
        return feats


# Structures kept compiled per predictor (and coefficient rows per cost model). A structure of a real-size model
# holds 120-210 KB (its program, tensor aliases and coefficient rows: EfficientNet-B0 212 KB, BERT-mini 122 KB,
# measured with tracemalloc over 100 new structures); random per-layer plans rarely repeat a structure, so a larger
# cache buys few hits for hundreds of MB (4096 EfficientNet structures: ~0.9 GB) and slower full garbage collections.
MAX_STRUCTURES = 256


class Programs:
    """Compiled programs per structural signature (the oldest dropped beyond ``max_entries``), and each variant's
    :class:`Terms`."""

    def __init__(self, max_entries: int = MAX_STRUCTURES) -> None:
        self.max_entries = max_entries
        self._cache: dict[tuple, Any] = {}
        self._terms: dict[int, Terms] = {}

    def get(self, signature: tuple) -> Any:
        return self._cache.get(signature)

    def put(self, signature: tuple, entry: Any) -> Any:
        if len(self._cache) >= self.max_entries:
            self._cache.pop(next(iter(self._cache)))
        self._cache[signature] = entry
        return entry

    def terms(self, res: Resolved) -> Terms:
        uid = res.variant.uid
        if uid not in self._terms:
            self._terms[uid] = Terms(res)
        return self._terms[uid]
