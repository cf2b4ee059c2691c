"""A compression plan is data: per-layer decisions keyed by the teacher's qualified module names.

Saved as versioned JSON ``{"type": "CompressionPlan", "version": 1, "data": {...}}`` and loaded only into the
classes below (no pickle), so a plan from a study can be replayed on the teacher at any time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

PLAN_VERSION = 1


@dataclass(frozen=True, kw_only=True)
class LayerPlan:
    """What happens to one Conv/Linear layer.

    sparsity:        share of the layer's weights zeroed by magnitude, in [0, 1)
    weight_bits:     2-8 for symmetric per-output-channel quantization, 32 for float
    activation_bits: 8 or 16 to quantize the layer's input (calibrated), 32 for float
    channel_keep:    share of output channels kept by structured pruning, in (0, 1]
    rank_ratio:      low-rank factorization keeps this share of the full rank, 1.0 = off
    weight_sharing:  k-means weight sharing (Han et al., 2016) instead of the uniform grid: one codebook of
                     2^weight_bits centroids per layer over its non-zero weights (zeros stay exact through the
                     pruning mask), centroids fine-tuned, assignments fixed. Needs weight_bits <= 8 and float
                     inputs (activation_bits 32): the layer runs float kernels on its decoded weights, it is only
                     smaller on disk.
    entropy_coding:  store the layer's weight codes and sparse index Huffman-coded when that is smaller
                     (lossless; needs weight_bits < 32)

    Plans written before weight_sharing/entropy_coding existed read with both off (the defaults).
    """

    sparsity: float = 0.0
    weight_bits: int = 32
    activation_bits: int = 32
    channel_keep: float = 1.0
    rank_ratio: float = 1.0
    weight_sharing: bool = False
    entropy_coding: bool = False

    def __post_init__(self) -> None:
        if self.weight_sharing and self.weight_bits > 8:
            raise ValueError(f"weight_sharing needs weight_bits <= 8 (a codebook of 2^bits centroids), but "
                             f"weight_bits is {self.weight_bits}")
        if self.weight_sharing and self.activation_bits < 32:
            raise ValueError("weight_sharing runs float kernels on decoded weights: activation_bits must be 32, "
                             f"but is {self.activation_bits}")
        if self.entropy_coding and self.weight_bits >= 32:
            raise ValueError("entropy_coding codes quantized weights: it needs weight_bits < 32")

    @property
    def is_identity(self) -> bool:
        return self == LayerPlan()

    @property
    def int8_kernel(self) -> bool:
        """Whether the layer runs on the backend's int8 kernels: <= 8-bit weights on a uniform grid, 8-bit inputs.

        The one place that decides it: the measured latency path, the latency predictor and export all ask here.
        """
        return self.weight_bits <= 8 and self.activation_bits == 8 and not self.weight_sharing


@dataclass(frozen=True, kw_only=True)
class StudentPlan:
    """Whole-model student size. width scales every hidden layer's channels; depth the repeatable blocks."""

    width: float = 1.0
    depth: float = 1.0


@dataclass(frozen=True, kw_only=True)
class DistillPlan:
    """Knowledge-distillation loss weights for fine-tuning (see :class:`autocompress.config.DistillSpace`)."""

    temperature: float = 4.0
    alpha: float = 0.7
    feature_mse: float = 0.0
    l1: float = 0.0


@dataclass(frozen=True, kw_only=True)
class CompressionPlan:
    """Per-layer decisions plus the student's size and the distillation settings."""

    layers: dict[str, LayerPlan] = field(default_factory=dict)
    student: StudentPlan = field(default_factory=StudentPlan)
    distill: DistillPlan = field(default_factory=DistillPlan)

    def layer(self, name: str) -> LayerPlan:
        """The plan for ``name``; layers the plan does not mention stay as they are."""
        return self.layers.get(name, LayerPlan())

    # --- JSON -------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "type": "CompressionPlan",
            "version": PLAN_VERSION,
            "data": {
                "layers": {k: dataclasses.asdict(v) for k, v in self.layers.items()},
                "student": dataclasses.asdict(self.student),
                "distill": dataclasses.asdict(self.distill),
            },
        }

    def to_json(self, **kwargs: Any) -> str:
        return json.dumps(self.to_dict(), **kwargs)

    @classmethod
    def from_dict(cls, obj: dict[str, Any]) -> CompressionPlan:
        if not isinstance(obj, dict) or obj.get("type") != "CompressionPlan":
            raise ValueError(f"not a CompressionPlan: expected {{'type': 'CompressionPlan', ...}}, got "
                             f"type={obj.get('type') if isinstance(obj, dict) else type(obj).__name__!r}")
        if obj.get("version") != PLAN_VERSION:
            raise ValueError(f"CompressionPlan version {obj.get('version')!r} is not supported; "
                             f"this autocompress reads version {PLAN_VERSION}")
        data = obj.get("data", {})
        try:
            return cls(
                layers={k: LayerPlan(**v) for k, v in data.get("layers", {}).items()},
                student=StudentPlan(**data.get("student", {})),
                distill=DistillPlan(**data.get("distill", {})),
            )
        except (TypeError, ValueError) as e:  # unknown or missing keys, inconsistent values
            raise ValueError(f"malformed CompressionPlan: {e}") from None

    @classmethod
    def from_json(cls, text: str) -> CompressionPlan:
        return cls.from_dict(json.loads(text))

    def summary(self) -> str:
        """One short line for tables: student size plus each changed layer's decisions."""
        parts = []
        if self.student != StudentPlan():
            parts.append(f"student w{self.student.width:g} d{self.student.depth:g}")
        for name, lp in self.layers.items():
            bits = []
            if lp.channel_keep < 1:
                bits.append(f"keep{lp.channel_keep:g}")
            if lp.rank_ratio < 1:
                bits.append(f"rank{lp.rank_ratio:g}")
            if lp.sparsity > 0:
                bits.append(f"s{lp.sparsity:g}")
            if lp.weight_bits < 32:
                bits.append(f"w{lp.weight_bits}")
            if lp.weight_sharing:
                bits.append("km")
            if lp.activation_bits < 32:
                bits.append(f"a{lp.activation_bits}")
            if lp.entropy_coding:
                bits.append("huff")
            if bits:
                parts.append(f"{name}:" + "/".join(bits))
        return "; ".join(parts) or "(uncompressed)"
