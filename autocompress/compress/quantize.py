"""Per-layer fake quantization and unstructured magnitude pruning, trainable with straight-through gradients.

Weights: symmetric per-output-channel quantization to b bits (integer levels -(2^(b-1)-1) .. 2^(b-1)-1, so a
channel has at most 2^b - 1 distinct values), applied on top of a fixed magnitude-pruning mask. Both live in one
``torch.nn.utils.parametrize`` parametrization, so fine-tuning sees the compressed weight and ``bake`` writes it
into the plain parameter.

k-means weight sharing (Han et al., ICLR 2016): the layer's non-zero weights are clustered into 2^b centroids
(linear initialisation over [min, max], then Lloyd's algorithm), each weight is tied to its centroid
(assignments fixed from then on) and the weight becomes ``centroids[assignment] * mask``; fine-tuning first
retrains the pruned float weights, then re-clusters them and trains the centroids, each receiving the sum of its
weights' gradients (see :class:`SharedWeight`). Centroids and assignments are module state
(``state_dict``), so a candidate replayed from its plan and loaded with the trained state is the same model.

Activations: the layer's input is fake-quantized (8 bits asymmetric, as ONNX Runtime's uint8 activations; 16
bits symmetric) with a range calibrated on training batches, then frozen.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .method import Heatmap, Knob, Method


def _ste_round(x: torch.Tensor) -> torch.Tensor:
    return x + (torch.round(x) - x).detach()


def quantize_weight(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Symmetric per-output-channel fake quantization (straight-through gradient); 32 bits = unchanged."""
    if bits >= 32:
        return w
    qmax = 2 ** (bits - 1) - 1
    flat = w.reshape(w.shape[0], -1)
    scale = (flat.detach().abs().amax(dim=1) / qmax).clamp_min(1e-12)
    shape = (-1,) + (1,) * (w.dim() - 1)
    q = torch.clamp(_ste_round(w / scale.reshape(shape)), -qmax, qmax)
    return q * scale.reshape(shape)


def weight_scale(w: torch.Tensor, bits: int) -> torch.Tensor:
    """Per-output-channel scale of symmetric ``bits``-bit quantization (as :func:`quantize_weight`)."""
    qmax = 2 ** (bits - 1) - 1
    flat = w.detach().reshape(w.shape[0], -1)
    return (flat.abs().amax(dim=1) / qmax).clamp_min(1e-12)


def weight_codes(w: torch.Tensor, bits: int,
                 scale: torch.Tensor | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(codes q as int64 of w's shape, float32 scales)`` of a baked weight, with ``q * scale == w`` exactly
    (checked; ``scale``: the fake quantizer's own, else derived from the weight). Raises ValueError off-grid."""
    shape = (-1,) + (1,) * (w.dim() - 1)
    candidates = [scale] if scale is not None else []
    candidates.append(weight_scale(w, bits))  # derived from the baked weight: exact up to rounding of the scale
    qmax = 2 ** (bits - 1) - 1
    last_err = 0.0
    for i, candidate in enumerate(candidates):
        s = candidate.detach().to(torch.float32)
        q = torch.clamp(torch.round(w.detach() / s.reshape(shape)), -qmax, qmax)
        rebuilt = q * s.reshape(shape)
        if torch.equal(rebuilt, w.detach()):
            return q.to(torch.int64).numpy(), s.numpy()
        last_err = float((rebuilt - w.detach()).abs().max())
        if i == len(candidates) - 1 and last_err <= 1e-6 * (float(w.detach().abs().max()) or 1.0):
            return q.to(torch.int64).numpy(), s.numpy()
    raise ValueError(f"weight is not on a {bits}-bit per-channel grid (max error {last_err:.3g}); was it baked?")


def magnitude_mask(w: torch.Tensor, sparsity: float, keep: torch.Tensor | None = None) -> torch.Tensor:
    """A 0/1 mask zeroing exactly ``round(sparsity * n)`` smallest-magnitude weights (ties by position) of the
    ``n`` weights ``keep`` (an earlier mask; default: all) keeps; what ``keep`` zeroed stays zero."""
    scores = w.detach().abs().flatten().clone()
    dropped = 0
    if keep is not None:
        gone = keep.flatten() == 0
        scores[gone] = -1.0  # sorts first: already zero
        dropped = int(gone.sum())
    k = round(sparsity * (w.numel() - dropped))
    mask = torch.ones(w.numel(), dtype=w.dtype)
    if k + dropped > 0:
        order = torch.argsort(scores, stable=True)
        mask[order[:k + dropped]] = 0
    return mask.reshape(w.shape)


class CompressedWeight(nn.Module):
    """Parametrization ``w -> quantize(w * mask, bits)``."""

    def __init__(self, mask: torch.Tensor | None, bits: int) -> None:
        super().__init__()
        self.bits = bits
        self.register_buffer("mask", mask if mask is not None else torch.empty(0), persistent=False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if self.mask.numel():
            w = w * self.mask
        return quantize_weight(w, self.bits)


@torch.no_grad()
def kmeans_1d(values: torch.Tensor, k: int, iters: int = 50) -> tuple[torch.Tensor, torch.Tensor]:
    """``(centroids (k,), assignment of every value)``: Lloyd's algorithm in one dimension, linear init.

    Hand-written rather than scikit-learn's KMeans: Han et al. initialise the centroids linearly over
    [min, max], which in one dimension makes Lloyd's algorithm a sort-free loop of ``bucketize`` on the
    centroids' midpoints (exact nearest-centroid assignment) and ``index_add`` (means): O(n log k) per step,
    deterministic, and no OpenMP thread pool started per candidate.

    Empty clusters are relocated to the values farthest from their centroids (as scikit-learn's KMeans does):
    pruning leaves a gap around zero, and linearly spaced centroids falling in it would otherwise stay unused.
    """
    x = values.detach().reshape(-1).to(torch.float64)
    if x.numel() == 0:
        return torch.zeros(k), torch.zeros(0, dtype=torch.long)
    c = torch.linspace(float(x.min()), float(x.max()), k, dtype=torch.float64)

    def assign(c: torch.Tensor) -> torch.Tensor:
        return torch.bucketize(x, (c[1:] + c[:-1]) / 2)

    for _ in range(iters):
        a = assign(c)
        sums = torch.zeros(k, dtype=torch.float64).index_add_(0, a, x)
        counts = torch.bincount(a, minlength=k)
        new = torch.where(counts > 0, sums / counts.clamp_min(1), c)
        empty = torch.nonzero(counts == 0).flatten()
        if empty.numel():
            far = torch.topk((x - new[a]).abs(), min(empty.numel(), x.numel())).indices
            new[empty[: far.numel()]] = x[far]
        new = new.sort().values
        if torch.equal(new, c):
            break
        c = new
    return c.to(torch.float32), assign(c)


class SharedWeight(nn.Module):
    """Parametrization ``w -> centroids[assign] * mask``: k-means weight sharing with ``2**bits`` centroids.

    Clustered at apply time from the layer's (teacher) weight. Fine-tuning follows Han et al.'s order (see
    :func:`autocompress.compress.distill.finetune`): :meth:`release` lets the pruned float weights (``original *
    mask``) retrain, :meth:`cluster` then re-runs k-means on them, after which only ``centroids`` train
    (assignments fixed). Every fine-tuning call ends clustered. ``centroids``, ``assign`` and ``clustered`` are
    module state (``state_dict``), so a replayed plan loaded with the trained state is the same model.
    """

    def __init__(self, w: torch.Tensor, mask: torch.Tensor | None, bits: int) -> None:
        super().__init__()
        if not 1 <= bits <= 8:
            raise ValueError(f"k-means weight sharing needs 1..8 bits, but got {bits}")
        self.bits = bits
        self.centroids = nn.Parameter(torch.zeros(2**bits, dtype=w.dtype))
        self.register_buffer("assign", torch.zeros(w.shape, dtype=torch.long))
        self.register_buffer("clustered", torch.ones((), dtype=torch.bool))
        self.register_buffer("mask", mask if mask is not None else torch.empty(0), persistent=False)
        self.cluster(w)

    @torch.no_grad()
    def cluster(self, w: torch.Tensor) -> None:
        """k-means (linear init) on the non-zero (unmasked) entries of ``w``; fixes the assignments."""
        w = w.detach()
        keep = self.mask.reshape(-1).bool() if self.mask.numel() else torch.ones(w.numel(), dtype=torch.bool)
        centroids, idx = kmeans_1d(w.reshape(-1)[keep], 2**self.bits)
        assign = torch.zeros(w.numel(), dtype=torch.long)
        assign[keep] = idx
        self.centroids.copy_(centroids.to(self.centroids.dtype))
        self.assign.copy_(assign.reshape(w.shape))
        self.clustered.fill_(True)

    def release(self) -> None:
        """Back to the pruned float weight (``original * mask``) until the next :meth:`cluster`."""
        self.clustered.fill_(False)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        out = self.centroids[self.assign] if bool(self.clustered) else w
        if self.mask.numel():
            out = out * self.mask
        return out


class InputQuantizer:
    """Forward pre-hook that fake-quantizes a layer's input.

    While ``calibrating`` it records the running min/max of inputs and passes them through unchanged.
    Afterwards the range is fixed and inputs are quantized with a straight-through gradient.
    """

    def __init__(self, bits: int) -> None:
        self.bits = bits
        self.calibrating = True
        self.enabled = True
        self.lo, self.hi = float("inf"), float("-inf")

    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...] | None:
        x = args[0]
        if not self.enabled:
            return None
        if self.calibrating:
            self.lo = min(self.lo, float(x.detach().min()))
            self.hi = max(self.hi, float(x.detach().max()))
            return None
        return (self.fake_quant(x),) + tuple(args[1:])

    def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
        if self.lo > self.hi:
            raise RuntimeError("InputQuantizer used before calibration")
        if self.bits == 8:  # asymmetric uint8, the range always holding 0
            lo, hi = min(self.lo, 0.0), max(self.hi, 0.0)
            scale = max(hi - lo, 1e-12) / 255.0
            zero = round(-lo / scale)
            q = torch.clamp(_ste_round(x / scale) + zero, 0, 255)
            return (q - zero) * scale
        qmax = 2 ** (self.bits - 1) - 1
        scale = max(abs(self.lo), abs(self.hi), 1e-12) / qmax
        return torch.clamp(_ste_round(x / scale), -qmax, qmax) * scale


# --- the methods this module implements (registered in autocompress.compress.registry) -----------------------

WEIGHT_BITS = (2, 3, 4, 5, 6, 7, 8, 32)
ACTIVATION_BITS = (8, 16, 32)


class MagnitudePruning(Method):
    """Unstructured sparsity: the smallest-magnitude weights are zeroed (a fixed mask; zeros stay exact)."""

    name = "magnitude_pruning"
    knobs = (Knob(name="sparsity", type=float, default=0.0, interval=(0.0, 1.0, "[)"),
                  doc="share of the layer's weights zeroed by magnitude (of those an earlier mask, e.g. N:M, keeps)",
                  label=lambda v: f"s{v:g}",
                  heatmap=Heatmap(title="sparsity (share of weights zeroed)", zmin=0, zmax=1)),)

    def weight_mask(self, weight, values, mask):
        return magnitude_mask(weight, values["sparsity"], mask) if values["sparsity"] > 0 else None

    def density(self, values, weight_shape):
        return 1.0 - values["sparsity"]


class WeightQuantization(Method):
    """Symmetric per-output-channel weights on a 2-8 bit grid, or a k-means codebook of 2^bits values."""

    name = "weight_quantization"
    knobs = (
        Knob(name="weight_bits", type=int, default=32, choices=WEIGHT_BITS,
             doc="2-8 for symmetric per-output-channel quantization, 32 for float", label=lambda v: f"w{v}",
             heatmap=Heatmap(title="weight bits (32 = float)", zmin=1, zmax=5, log2=True, reverse=True)),
        Knob(name="weight_sharing", type=bool, default=False,
             doc="k-means weight sharing (Han et al., 2016) instead of the uniform grid: one codebook of "
                 "2^weight_bits centroids per layer over its non-zero weights, centroids fine-tuned, assignments "
                 "fixed. Needs weight_bits <= 8 and float inputs (activation_bits 32): the layer runs float "
                 "kernels on its decoded weights, it is only smaller on disk", label=lambda v: "km"),
    )

    def check(self, values):
        if values["weight_sharing"] and values["weight_bits"] > 8:
            return (f"weight_sharing needs weight_bits <= 8 (a codebook of 2^bits centroids), but weight_bits is "
                    f"{values['weight_bits']}")
        if values["weight_sharing"] and values["activation_bits"] < 32:
            return ("weight_sharing runs float kernels on decoded weights: activation_bits must be 32, but is "
                    f"{values['activation_bits']}")
        return None

    def check_choices(self, choices):
        if True in choices["weight_sharing"]:
            if any(b < 32 for b in choices["activation_bits"]):
                return ("`weight_sharing` may be true, so `activation_bits` must be [32] (a k-means shared layer "
                        f"runs float kernels on its decoded weights), but got {choices['activation_bits']}")
            if not any(b <= 8 for b in choices["weight_bits"]):
                return ("`weight_sharing` needs a `weight_bits` choice <= 8 (a codebook of 2^bits centroids), but "
                        f"got {choices['weight_bits']}")
        return None

    def normalize(self, values):
        return {**values, "weight_sharing": False} if values["weight_bits"] >= 32 else values


class ActivationQuantization(Method):
    """The layer's input fake-quantized with a calibrated range (8-bit runs the runtime's int8 kernels)."""

    name = "activation_quantization"
    knobs = (Knob(name="activation_bits", type=int, default=32, choices=ACTIVATION_BITS,
                  doc="8 or 16 to quantize the layer's input (calibrated), 32 for float", label=lambda v: f"a{v}"),)


class EntropyCoding(Method):
    """Huffman-coded storage of a layer's weight codes and sparse index (lossless; coded in
    :mod:`autocompress.evaluate.entropy`, counted by the size objective, written by export)."""

    name = "entropy_coding"
    knobs = (Knob(name="entropy_coding", type=bool, default=False, uniform=True,
                  doc="store the layer's weight codes and sparse index Huffman-coded when that is smaller "
                      "(lossless; needs weight_bits < 32)", label=lambda v: "huff"),)

    def check(self, values):
        if values["entropy_coding"] and values["weight_bits"] >= 32:
            return "entropy_coding codes quantized weights: it needs weight_bits < 32"
        return None

    def check_choices(self, choices):
        if True in choices["entropy_coding"] and not any(b < 32 for b in choices["weight_bits"]):
            return ("`entropy_coding` codes quantized weights and needs a `weight_bits` choice < 32, but got "
                    f"{choices['weight_bits']}")
        return None

    def normalize(self, values):
        return {**values, "entropy_coding": False} if values["weight_bits"] >= 32 else values
