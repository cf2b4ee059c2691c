"""The latency model: per-kernel-kind regressions fitted on measurements, plus a per-model term.

A model's predicted latency is

    offset + scale * (overhead . [1, input_elems, output_elems, weight bytes streamed (conv, GEMM)]
                      +  sum over kernels of coef[kind] . features)

with :data:`~autocompress.latency.kernels.FEATURES` (a constant, MACs, elements read and written, weights, MACs
on non-zero weights, output positions, im2col sizes, concave MAC hinges, convex weight-size hinges). Every
coefficient is non-negative (non-negative least squares on relative error), so a kernel kind only costs what the
measurements show: whether unstructured zeros speed up a dense kernel (the "MACs on non-zero weights" column) or
an int8 kernel is slower than its float twin is learned, not assumed. The per-model overhead is fitted together
with the kernels, on the micro-benchmarks and (weighted up) the whole-model calibration measurements;
``offset``/``scale`` stay 0/1 unless set (``autocompress profile --calibrate`` sets them). All parameters are
plain numbers (JSON).

A data-movement or elementwise kernel kind the profile never measured (the Cast / Equal / Where / Expand chain a
Hugging Face model builds its attention mask with, a Split of fused QKV) costs the median coefficients of the
measured ones (:meth:`CostModel.fallback_kinds` names them, the benchmark reports their share); an unmeasured
compute kind (convolution, GEMM, MatMul, their quantized forms) is still an :class:`UnsupportedOpError`: those
carry the cost, and a guess there would be a number nobody measured.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import AutocompressError
from .kernels import FEATURES, MAX_STRUCTURES, Kernel, Lowered

OVERHEAD = ("one", "input_elems", "output_elems")
# A model whose weights no longer fit the last-level cache reads all of them from memory on every call, not just
# the bytes beyond the cache: the cache keeps little of a cyclic sweep larger than itself. Measured here
# (2026-12-02, benchmarks/weight_streaming.py --channels 128,192 --layers 1,4,8,12,16,20,24,32,48 --h 3): stacks
# of 3x3 convolutions of 0.6 / 1.3 MB a layer (each fits the L2 cache alone) take the same time per layer up to
# 10.6-14.2 MB of weights in all, then 31-95 % more per layer from 15.9-21 MB on (21-24 us per MB of *all* the
# weights at 21-64 MB). So the last per-model term is the model's weight bytes, phased in
# linearly between STREAM_PHASE x a knot (half the last-level cache: 10.5-19 MB of this machine's 32 MiB L3, which
# other tenants share; streamed_bytes()): memory bandwidth, not a kernel's arithmetic. Stacks of Linear layers over
# 64 tokens (the same benchmark with --channels 512,384 --layers 1,4,6,8,10,12,16,24,32 --tokens 64) slow down
# earlier and more: +8-11 % at 8.4-9.5 MB, +20-30 % from 10.5-14 MB on, 45-48 us per MB of all weights. So the
# weights of MatMul / Gemm kernels have a term of their own, phased in earlier (STREAM_PHASE["gemm"]); both
# phases run on the model's total weight bytes (one cache).
STREAMED = ("weight_bytes_streamed", "gemm_weight_bytes_streamed")
MODEL_OVERHEAD = (*OVERHEAD, *STREAMED)
GEMM_OPS = frozenset({"MatMul", "FusedMatMul", "Gemm", "FusedGemm", "QGemm", "QLinearMatMul", "MatMulNBits",
                      "MatMulInteger", "DynamicQuantizeMatMul"})
HINGES = ("weight_over_64k", "weight_over_256k")  # the convex weight-size terms (see kernels.FEATURES)
STREAM_KNOT_BYTES = 16 * 2**20  # default: half a 32 MiB last-level cache (profiles record their machine's)
# the weight streaming terms phase in between these multiples of the knot: convolutions and other kernels, GEMMs
STREAM_PHASE = {"conv": (0.625, 1.125), "gemm": (0.42, 0.85)}
_WEIGHT = FEATURES.index("weight_elems")
INT8_OPS = ("QLinearConv", "QGemm", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeMatMul")
MIN_HINGE_SUPPORT = 8
# op types whose kernels carry a model's compute: never priced by the data-op fallback
COMPUTE_OPS = frozenset({"Conv", "FusedConv", "QLinearConv", "ConvInteger", "Gemm", "FusedGemm", "QGemm", "MatMul",
                         "FusedMatMul", "QLinearMatMul", "MatMulInteger", "MatMulNBits", "DynamicQuantizeMatMul",
                         "Attention", "MultiHeadAttention", "ConvTranspose"})


def is_compute_kind(kind: str) -> bool:
    return kind.split("/")[0] in COMPUTE_OPS

# kernel kinds each backend's predictor scores (see autocompress.runtime.resolve_kernels); a profile without int4
# MatMul samples scores int4 layers as float (LatencyPredictor.kinds)
PREDICTED_KINDS = {"onnxruntime": frozenset({"int8", "int4", "float"}), "openvino": frozenset({"int8", "float"}),
                   "torch": frozenset({"float"})}


class UnsupportedOpError(AutocompressError, ValueError):
    """The predictor has no measurements for a kernel the plan needs."""

    exit_code = 2

    def __init__(self, kinds: Sequence[str], supported: Sequence[str], *, where: str = "") -> None:
        self.kinds, self.supported = list(kinds), sorted(supported)
        at = f" ({where})" if where else ""
        super().__init__(
            f"the latency profile has no measurements for kernel kind(s) {', '.join(sorted(set(kinds)))}{at}. "
            f"Supported kinds: {', '.join(self.supported)}. Re-run `autocompress profile` (after adding a micro-"
            f"benchmark for the op) or fall back to measurement with `latency: {{fallback: measure}}` (or "
            f"`{{measure: true}}`) in the study config.")


@dataclass
class Sample:
    """One measured graph: its kernels, its per-model features and the latency (ms) the model is fitted on.

    In a profile ``latency_ms`` is the measured time relative to the reference workload, in ms at the profile's
    reference speed (:func:`at_reference_speed`); the absolute figure and the reference's time are in ``spec``."""

    kernels: list[tuple[str, list[float]]]
    overhead: list[float]
    latency_ms: float
    tag: str = ""
    group: str = "micro"          # "micro" (kernel fit) or "calibration" (whole models: offset/scale)
    spec: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_lowered(cls, lowered: Lowered, latency_ms: float, **kw: Any) -> Sample:
        return cls(kernels=[(k.kind, [float(v) for v in k.features]) for k in lowered.kernels],
                   overhead=overhead_features(lowered), latency_ms=float(latency_ms), **kw)

    @classmethod
    def measured(cls, lowered: Lowered, timing: Any, **kw: Any) -> Sample:
        """A sample of a measurement (a :class:`~autocompress.runtime.Timing` or
        :class:`~autocompress.latency.measure.Measurement`): absolute ms, round medians, normalized time and the
        reference's time go in ``spec``."""
        spec = {**kw.pop("spec", {}), "rounds_ms": timing.rounds_ms, "absolute_ms": timing.latency_ms,
                "normalized": timing.normalized, "reference_ms": timing.reference_ms}
        if getattr(timing, "op_ms", None):
            spec["op_ms"] = timing.op_ms
        if getattr(timing, "parts", None):
            spec["reference_parts"] = timing.parts
        return cls.from_lowered(lowered, timing.latency_ms, spec=spec, **kw)

    def to_dict(self) -> dict[str, Any]:
        return {"kernels": self.kernels, "overhead": self.overhead, "latency_ms": self.latency_ms,
                "tag": self.tag, "group": self.group, "spec": self.spec}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sample:
        return cls(kernels=[(str(k), [float(x) for x in f]) for k, f in d["kernels"]],
                   overhead=[float(x) for x in d["overhead"]], latency_ms=float(d["latency_ms"]),
                   tag=str(d.get("tag", "")), group=str(d.get("group", "micro")), spec=dict(d.get("spec", {})))


def at_reference_speed(samples: Sequence[Sample]) -> float | None:
    """Set every sample's ``latency_ms`` to its normalized time in ms at the samples' median reference speed, and
    return that speed (the reference's ms); None (samples unchanged) when they were timed without reference."""
    refs = [s.spec["reference_ms"] for s in samples if s.spec.get("reference_ms") and s.spec.get("normalized")]
    if not refs or len(refs) < len(samples):
        return None
    ref = float(np.median(refs))
    for s in samples:
        s.latency_ms = float(s.spec["normalized"]) * ref
    return ref


def overhead_features(lowered: Lowered) -> list[float]:
    return [1.0, float(lowered.input_elems), float(lowered.output_elems)]


def weight_bytes_per_elem(kind: str) -> float:
    """Bytes a kernel kind stores per weight element: int8 kernels 1, int4 ``MatMulNBits`` 0.5, float 4."""
    op = kind.split("/", 1)[0]
    if op == "MatMulNBits" or "int4" in kind:
        return 0.5
    return 1.0 if op in INT8_OPS or "u8" in kind.split("/")[1:] or "int8" in kind else 4.0


@functools.cache
def _kind_layout(kind: str) -> tuple[float, bool]:
    return weight_bytes_per_elem(kind), kind.split("/", 1)[0] in GEMM_OPS


def kind_layout(kinds: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """Per kernel: bytes per weight element (:func:`weight_bytes_per_elem`), and whether it is a MatMul / Gemm."""
    layout = [_kind_layout(k) for k in kinds]
    return (np.fromiter((b for b, _ in layout), float, len(layout)),
            np.fromiter((g for _, g in layout), bool, len(layout)))


def streamed_bytes(kinds: Sequence[str], features: np.ndarray, knot_bytes: float,
                   layout: tuple[np.ndarray, np.ndarray] | None = None) -> list[float]:
    """The :data:`STREAMED` per-model terms: the weight bytes (as the kernels store them) of the model's
    convolution and other kernels, and of its MatMul / Gemm kernels, each the share of them phased in linearly
    (0 to 1) between its :data:`STREAM_PHASE` multiples of ``knot_bytes`` by the model's total weight bytes: none
    while the weights fit the cache, all of them once they clearly do not. ``layout``: :func:`kind_layout` of
    ``kinds``, when the caller has it."""
    if len(kinds) == 0:
        return [0.0, 0.0]
    per, gemm = layout if layout is not None else kind_layout(kinds)
    w = np.reshape(features, (len(kinds), -1))[:, _WEIGHT] * per
    total = float(w.sum())
    return [float(w[~gemm].sum()) * stream_share(total, knot_bytes, "conv"),
            float(w[gemm].sum()) * stream_share(total, knot_bytes, "gemm")]


def stream_share(total_bytes: float, knot_bytes: float, part: str) -> float:
    """The share (0 to 1) of a model's ``part`` weights ("conv" or "gemm") that stream at ``total_bytes`` of
    weights in all: linear between the part's :data:`STREAM_PHASE` multiples of ``knot_bytes``."""
    lo, hi = STREAM_PHASE[part]
    return min(1.0, max(0.0, (total_bytes - lo * knot_bytes) / ((hi - lo) * knot_bytes)))


@dataclass
class CostModel:
    """Fitted coefficients (ms per unit of each feature) per kernel kind."""

    coef: dict[str, list[float]]
    overhead: list[float]
    offset: float = 0.0
    scale: float = 1.0
    samples_per_kind: dict[str, int] = field(default_factory=dict)
    stream_knot_bytes: float = STREAM_KNOT_BYTES

    def __post_init__(self) -> None:
        # a model made before the streamed-weights term has no coefficient for it: 0
        self.overhead = [*self.overhead, *[0.0] * (len(MODEL_OVERHEAD) - len(self.overhead))]
        self._matrix = {k: np.asarray(v, dtype=float) for k, v in self.coef.items()}
        data = [v for k, v in self._matrix.items() if not is_compute_kind(k)]
        self._fallback = np.median(np.stack(data), axis=0) if data else None
        # every kind's coefficients as one matrix (the fallback last), for a structure's rows in one indexing
        self._row_of = {k: i for i, k in enumerate(self._matrix)}
        self._all = np.stack([*self._matrix.values(), self._fallback if data else np.zeros(len(FEATURES))]) \
            if self._matrix else np.zeros((1, len(FEATURES)))
        # kinds -> (unsupported, coefficient rows, kind_layout)
        self._rows: dict[tuple[str, ...], tuple[list[str], np.ndarray | None, Any]] = {}

    @property
    def kinds(self) -> list[str]:
        return sorted(self.coef)

    def unsupported(self, kinds: Iterable[str]) -> list[str]:
        """Kinds this model cannot price: unmeasured compute kinds (and every unmeasured kind without a fallback)."""
        return sorted({k for k in kinds if k not in self._matrix and (self._fallback is None or is_compute_kind(k))})

    def fallback_kinds(self, kernels: Sequence[Kernel]) -> list[str]:
        """The unmeasured data-op kinds among ``kernels``, priced by the fallback (see the module docstring)."""
        return sorted({k.kind for k in kernels if k.kind not in self._matrix})

    def _coef(self, kind: str) -> np.ndarray:
        got = self._matrix.get(kind)
        return got if got is not None else self._fallback  # type: ignore[return-value]

    def check(self, kernels: Sequence[Kernel], *, where: str = "") -> None:
        missing = self.unsupported(k.kind for k in kernels)
        if missing:
            raise UnsupportedOpError(missing, self.kinds, where=where)

    def kernel_ms(self, kernel: Kernel) -> float:
        return float(self._coef(kernel.kind) @ kernel.features)

    def per_model(self, kinds: Sequence[str], features: np.ndarray, overhead: Sequence[float],
                  layout: tuple[np.ndarray, np.ndarray] | None = None) -> float:
        """The per-model terms (:data:`MODEL_OVERHEAD`) of a model with these kernels, in ms."""
        return float(np.dot(self.overhead, [*overhead[:len(OVERHEAD)],
                                            *streamed_bytes(kinds, features, self.stream_knot_bytes, layout)]))

    def raw_ms(self, kernels: Sequence[Kernel], overhead: Sequence[float]) -> float:
        """Overhead plus kernel sum, before the calibration's offset and scale."""
        feats = np.array([k.features for k in kernels]) if kernels else np.zeros((0, len(FEATURES)))
        total = self.per_model([k.kind for k in kernels], feats, overhead)
        for k in kernels:
            total += float(self._coef(k.kind) @ k.features)
        return total

    def _kind_rows(self, kinds: tuple[str, ...]) -> tuple[list[str], np.ndarray | None, Any]:
        """The unsupported kinds among ``kinds``, the coefficient matrix (a row per kernel) and the kernels'
        :func:`kind_layout`, computed once per kernel structure (its kinds tuple)."""
        hit = self._rows.get(kinds)
        if hit is None:
            missing = self.unsupported(kinds)
            fallback = len(self._all) - 1
            rows = None if missing else self._all[[self._row_of.get(k, fallback) for k in kinds]]
            if len(self._rows) >= MAX_STRUCTURES:
                self._rows.clear()
            hit = self._rows[kinds] = (missing, rows, kind_layout(kinds))
        return hit

    def raw_lowered(self, lowered: Lowered, *, where: str = "") -> float:
        """:meth:`raw_ms` of a lowered plan, every kernel at once; raises :class:`UnsupportedOpError` for a kind
        it cannot price."""
        missing, rows, layout = self._kind_rows(lowered.kinds)
        if missing or rows is None:
            raise UnsupportedOpError(missing, self.kinds, where=where)
        return self.per_model(lowered.kinds, lowered.features, overhead_features(lowered), layout) + \
            float(np.einsum("ij,ij->", rows, lowered.features))

    def predict(self, lowered: Lowered, *, where: str = "") -> float:
        return self.offset + self.scale * self.raw_lowered(lowered, where=where)

    def predict_sample(self, s: Sample) -> float:
        kernels = [Kernel(kind=k, features=np.asarray(f)) for k, f in s.kernels]
        self.check(kernels, where=s.tag)
        return self.offset + self.scale * self.raw_ms(kernels, s.overhead)

    def to_dict(self) -> dict[str, Any]:
        return {"features": list(FEATURES), "overhead_features": list(MODEL_OVERHEAD),
                "coef": {k: [float(x) for x in v] for k, v in sorted(self.coef.items())},
                "overhead": [float(x) for x in self.overhead], "offset": float(self.offset),
                "scale": float(self.scale), "samples_per_kind": dict(sorted(self.samples_per_kind.items())),
                "stream_knot_bytes": float(self.stream_knot_bytes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> CostModel:
        # a model fitted before the streamed-weights term has the first three per-model features only
        if list(d.get("features", [])) != list(FEATURES) or \
                list(d.get("overhead_features", [])) not in (list(MODEL_OVERHEAD), list(OVERHEAD)):
            raise ValueError(f"the cost model's features {d.get('features')} / {d.get('overhead_features')} are not "
                             f"this version's {list(FEATURES)} / {list(MODEL_OVERHEAD)}")
        coef = {str(k): [float(x) for x in v] for k, v in d["coef"].items()}
        for k, v in coef.items():
            if len(v) != len(FEATURES) or not all(np.isfinite(v)):
                raise ValueError(f"coefficients of kind {k!r} are malformed: {v}")
        return cls(coef=coef, overhead=[float(x) for x in d["overhead"]], offset=float(d.get("offset", 0.0)),
                   scale=float(d.get("scale", 1.0)),
                   samples_per_kind={str(k): int(v) for k, v in d.get("samples_per_kind", {}).items()},
                   stream_knot_bytes=float(d.get("stream_knot_bytes", STREAM_KNOT_BYTES)))


def _design(samples: Sequence[Sample], kinds: list[str], knot_bytes: float) -> np.ndarray:
    """A row per sample: its kernels' features summed per kind, then its per-model terms (:data:`MODEL_OVERHEAD`)."""
    index = {k: i for i, k in enumerate(kinds)}
    nf, no = len(FEATURES), len(MODEL_OVERHEAD)
    x = np.zeros((len(samples), len(kinds) * nf + no))
    for i, s in enumerate(samples):
        for kind, feats in s.kernels:
            j = index[kind] * nf
            x[i, j:j + nf] += feats
        names = [k for k, _ in s.kernels]
        x[i, -no:] = [*s.overhead[:len(OVERHEAD)],
                      *streamed_bytes(names, np.array([f for _, f in s.kernels], dtype=float), knot_bytes)]
    return x


def _nnls(x: np.ndarray, y: np.ndarray, weights: np.ndarray, kinds: list[str], ridge: float) -> np.ndarray:
    from scipy.optimize import nnls

    nf = len(FEATURES)
    x = x.copy()
    # a size term is fitted only on evidence: a kind with fewer than MIN_HINGE_SUPPORT samples beyond a knot gets
    # no hinge term, nor the streamed-weights term with fewer such models (one extreme sample would otherwise set a
    # slope every larger layer inherits)
    cols = [k * nf + FEATURES.index(f) for k in range(len(kinds)) for f in HINGES] + \
        [x.shape[1] - 1 - i for i in range(len(STREAMED))]
    for col in cols:
        if np.count_nonzero(x[:, col]) < MIN_HINGE_SUPPORT:
            x[:, col] = 0.0
    w = weights / y
    # columns are scaled by the largest value of their feature over every kind, not per kind: a per-unit slope
    # fitted where a kind's feature never varied (a Concat of shape scalars, 2-4 elements) is then as expensive
    # to the ridge as the effect it would have at real sizes, and the constant term explains such a kind instead
    # (per-kind scaling let a 4-element Concat set 83 ns per element, 1 ms for a ViT's class-token Concat)
    scale = np.abs(x).max(axis=0)
    k = len(kinds) * nf
    per_feature = scale[:k].reshape(len(kinds), nf).max(axis=0)
    scale[:k] = np.tile(per_feature, len(kinds))
    scale[scale == 0] = 1.0
    a = x * w[:, None] / scale
    b = weights.astype(float)
    if ridge > 0:  # a little shrinkage keeps collinear columns (kinds that always appear together) tame
        a = np.vstack([a, np.sqrt(ridge) * np.eye(a.shape[1])])
        b = np.concatenate([b, np.zeros(a.shape[1])])
    theta, _ = nnls(a, b, maxiter=50 * a.shape[1])
    return theta / scale


def fit(samples: Sequence[Sample], *, calibration: Sequence[Sample] = (), calibration_weight: int = 5,
        ridge: float = 1e-4, robust_iters: int = 4, robust_c: float = 2.5,
        stream_knot_bytes: float = STREAM_KNOT_BYTES) -> CostModel:
    """Non-negative least squares on relative error.

    The per-kernel coefficients and the per-model overhead are fitted together on the micro-benchmark ``samples``
    and the whole-model ``calibration`` samples (each of those counted ``calibration_weight`` times: they carry the
    per-model overhead and how kernels add up in complete models). Iteratively reweighted so the odd disturbed
    measurement (far off the fit, in units of the median error) counts less. ``stream_knot_bytes``: the weight
    bytes beyond which a model's weights stream from memory (:data:`STREAMED`).
    """
    if not samples:
        raise ValueError("no samples to fit")
    everything = list(samples) + list(calibration)
    kinds = sorted({k for s in everything for k, _ in s.kernels})
    nf = len(FEATURES)
    counts: dict[str, int] = {}
    for s in everything:
        for kind in {k for k, _ in s.kernels}:
            counts[kind] = counts.get(kind, 0) + 1
    x = _design(everything, kinds, stream_knot_bytes)
    y = np.array([s.latency_ms for s in everything], dtype=float)
    # a calibration sample counts as calibration_weight copies of itself (its squared error that many times)
    base = np.sqrt([1.0] * len(samples) + [float(max(0, calibration_weight))] * len(calibration))
    weights = base.copy()
    model = None
    for _ in range(max(1, robust_iters)):
        theta = _nnls(x, y, weights, kinds, ridge)
        model = CostModel(coef={k: theta[i * nf:(i + 1) * nf].tolist() for i, k in enumerate(kinds)},
                          overhead=theta[-len(MODEL_OVERHEAD):].tolist(), samples_per_kind=counts,
                          stream_knot_bytes=stream_knot_bytes)
        err = (x @ theta - y) / y
        spread = 1.4826 * float(np.median(np.abs(err[base > 0]))) + 1e-9
        r = np.abs(err) / (robust_c * spread)
        weights = base * np.where(r <= 1.0, 1.0, 1.0 / np.maximum(r, 1e-9))
    assert model is not None
    return model


def errors(model: CostModel, samples: Sequence[Sample]) -> np.ndarray:
    """Relative errors (predicted - measured) / measured, of the samples whose kinds the model knows."""
    return np.array([(model.predict_sample(s) - s.latency_ms) / s.latency_ms for s in samples
                     if not model.unsupported(k for k, _ in s.kernels)])
