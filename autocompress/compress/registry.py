"""The compression methods, registered once: a new method is one module plus one line in :data:`METHODS`.

The order is the order of the knobs in plans, configs and summaries. What reads the registry: plans
(:class:`~autocompress.plan.LayerPlan`'s fields, their checks and summaries), study configs (a group's choice
lists and their validation), the search space (one Optuna parameter per knob), the dashboard (heatmaps),
:func:`~autocompress.compress.apply` and the latency predictor (weight masks and their density).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .lowrank import LowRank
from .method import Knob, Method
from .nm import NMSparsity
from .quantize import ActivationQuantization, EntropyCoding, MagnitudePruning, WeightQuantization
from .structured import ChannelPruning

METHODS: tuple[Method, ...] = (
    ChannelPruning(),
    LowRank(),
    NMSparsity(),
    MagnitudePruning(),
    WeightQuantization(),
    ActivationQuantization(),
    EntropyCoding(),
)

KNOBS: dict[str, Knob] = {k.name: k for m in METHODS for k in m.knobs}
if len(KNOBS) != sum(len(m.knobs) for m in METHODS):
    raise RuntimeError("two registered compression methods declare a knob of the same name")


def defaults() -> dict[str, Any]:
    """Every knob at the value that leaves a layer as the teacher has it."""
    return {k.name: k.default for k in KNOBS.values()}


def check_values(values: Mapping[str, Any]) -> str | None:
    """Why one layer's knob values are not allowed (each knob's rule, then each method's), or None."""
    for knob in KNOBS.values():
        why = knob.check(values[knob.name])
        if why:
            return f"`{knob.name}` {why}"
    for method in METHODS:
        why = method.check(values)
        if why:
            return why
    return None


def normalize(values: Mapping[str, Any]) -> dict[str, Any]:
    """What a combination of sampled values means (each method's :meth:`~.method.Method.normalize`)."""
    out: Mapping[str, Any] = values
    for method in METHODS:
        out = method.normalize(out)
    return dict(out)


def density(values: Mapping[str, Any], weight_shape: tuple[int, ...]) -> float:
    """Share of a weight of ``weight_shape`` its masks keep (every masking method's density, multiplied)."""
    d = 1.0
    for method in METHODS:
        d *= method.density(values, weight_shape)
    return d


def summary(values: Mapping[str, Any]) -> list[str]:
    """The plan summary's short forms of the non-default values (``keep0.5``, ``s0.9``, ``w4``, ...)."""
    return [k.label(values[k.name]) for k in KNOBS.values() if k.label and values[k.name] != k.default]


def mask_methods() -> list[Method]:
    """Methods that zero weights, in order (their masks multiply)."""
    return [m for m in METHODS if type(m).weight_mask is not Method.weight_mask]


__all__ = ["METHODS", "KNOBS", "defaults", "check_values", "normalize", "density", "summary", "mask_methods"]
