"""A compression plan is data: per-layer decisions keyed by the teacher's qualified module names.

Saved as versioned JSON ``{"type": "CompressionPlan", "version": 1, "data": {...}}`` and loaded only into the
classes below (no pickle), so a plan from a study can be replayed on the teacher at any time.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from .compress import registry
from .compress.method import Knob

PLAN_VERSION = 1


INT4_MAX_BITS = 4  # weight-only layers with <= 4-bit weights may run int4 kernels


class _LayerPlanRules:
    """Behaviour of :class:`LayerPlan`; its fields come from the method registry."""

    def __post_init__(self) -> None:
        why = registry.check_values(dataclasses.asdict(self))  # type: ignore[call-overload]
        if why:
            raise ValueError(why)

    @property
    def is_identity(self) -> bool:
        return self == UNCHANGED

    @property
    def int8_kernel(self) -> bool:
        """Whether the layer can run on a backend's int8 kernels: <= 8-bit weights on a uniform grid, 8-bit inputs.

        The plan's side of :func:`autocompress.runtime.resolve_kernels` (the one kernel decision), which the
        latency predictor reads too.
        """
        return self.weight_bits <= 8 and self.activation_bits == 8 and not self.weight_sharing  # type: ignore[attr-defined]

    @property
    def int4_kernel(self) -> bool:
        """Whether a Linear layer can run a backend's int4 weight-only kernels (``MatMulNBits``): <= 4-bit weights
        on a uniform grid with float or 16-bit inputs (8-bit inputs take the int8 kernels). The plan's side of
        :func:`autocompress.runtime.resolve_kernels`, which the latency predictor reads too."""
        return self.weight_bits <= INT4_MAX_BITS and not self.int8_kernel and not self.weight_sharing  # type: ignore[attr-defined]


def _field(knob: Knob) -> tuple[str, type, Any]:
    return knob.name, knob.type, dataclasses.field(default=knob.default)


# What happens to one Conv/Linear layer: one field per knob of the registered compression methods
# (:mod:`autocompress.compress.registry`), each defaulting to "unchanged". Plans written before a knob existed
# read with it at its default.
LayerPlan = dataclasses.make_dataclass(
    "LayerPlan", [_field(k) for k in registry.KNOBS.values()], bases=(_LayerPlanRules,), frozen=True,
    kw_only=True)
LayerPlan.__module__ = __name__  # (make_dataclass's `module` argument needs Python 3.12)
LayerPlan.__doc__ = "What happens to one Conv/Linear layer. Fields (the registered methods' knobs):\n\n" + \
    "\n".join(f"    {k.name}: {k.doc}" for k in registry.KNOBS.values())
UNCHANGED = LayerPlan()  # frozen: one shared instance (the predictor asks for thousands of them per second)


@dataclass(frozen=True, kw_only=True)
class StudentPlan:
    """Whole-model student size. width scales every hidden layer's channels; depth the repeatable blocks;
    channel_multiple: pruned channel counts are rounded to multiples of it (runtimes compute channels in blocks
    of 8 or 16, so an unaligned count runs as slowly as the next aligned one or slower; see
    :func:`autocompress.compress.structured.channel_target`). 1 = exact counts (plans written before it)."""

    width: float = 1.0
    depth: float = 1.0
    channel_multiple: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.channel_multiple, int) or isinstance(self.channel_multiple, bool) \
                or self.channel_multiple < 1:
            raise ValueError(f"`channel_multiple` must be an integer >= 1, but got {self.channel_multiple!r}")

    @property
    def is_identity(self) -> bool:
        """The teacher's size (the channel multiple rounds only what is pruned)."""
        return self.width == 1.0 and self.depth == 1.0


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

    @property
    def is_identity(self) -> bool:
        """Nothing compressed: every layer unchanged and the student the teacher's size."""
        return all(lp.is_identity for lp in self.layers.values()) and self.student.is_identity

    def layer(self, name: str) -> LayerPlan:
        """The plan for ``name``; layers the plan does not mention stay as they are."""
        return self.layers.get(name, UNCHANGED)

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
        if not self.student.is_identity:
            parts.append(f"student w{self.student.width:g} d{self.student.depth:g}")
        if self.student.channel_multiple > 1 and (self.student.width < 1 or any(
                lp.channel_keep < 1 for lp in self.layers.values())):
            parts.append(f"channels in multiples of {self.student.channel_multiple}")
        for name, lp in self.layers.items():
            bits = registry.summary(dataclasses.asdict(lp))
            if bits:
                parts.append(f"{name}:" + "/".join(bits))
        return "; ".join(parts) or "(uncompressed)"
