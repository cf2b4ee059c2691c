"""What a compression method declares: its per-layer knobs, the rules between them, and how it lands on a layer.

A method is one module of :mod:`autocompress.compress` holding a :class:`Method` and one line in
:data:`autocompress.compress.registry.METHODS`. Everything else reads the registry: the fields of
:class:`~autocompress.plan.LayerPlan` and their JSON, the study config's choice lists and their validation, the
search space's Optuna parameters, plan summaries, the dashboard's per-layer heatmaps, and the weight masks that
:func:`~autocompress.compress.apply` and the latency predictor both use (so they cannot drift).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True, kw_only=True)
class Heatmap:
    """How the dashboard draws a knob across front members: title, colour range, log2 scale, and ``reverse`` when
    low values are the aggressive ones (darker is more aggressive)."""

    title: str
    zmin: float
    zmax: float
    log2: bool = False
    reverse: bool = False


@dataclass(frozen=True, kw_only=True)
class Knob:
    """One per-layer setting a method adds to plans, configs and search spaces.

    type:      ``float``, ``int``, ``bool`` or ``str`` (the plan's field type; a config lists choices of it)
    default:   the value that leaves the layer as the teacher has it
    choices:   the allowed values (empty: any value in ``interval``)
    interval:  ``(lo, hi, brackets)`` with brackets one of ``"[]"``, ``"[)"``, ``"(]"``, ``"()"``
    label:     the plan summary's short form of a non-default value (``s0.5``, ``w4``); None: not shown
    uniform:   the value a warm-start uniform plan targets (None: the default)
    heatmap:   drawn as a dashboard heatmap when set
    """

    name: str
    type: type
    default: Any
    doc: str
    choices: tuple[Any, ...] = ()
    interval: tuple[float, float, str] | None = None
    label: Callable[[Any], str] | None = None
    uniform: Any = None
    heatmap: Heatmap | None = None

    def check(self, value: Any) -> str | None:
        """Why ``value`` is not allowed (one sentence naming the rule), or None."""
        if self.type is bool and not isinstance(value, bool):
            return f"must be true or false, but got {value!r}"
        if self.type in (int, float) and (isinstance(value, bool) or not isinstance(value, int | float)):
            return f"must be a number, but got {value!r}"
        if self.type is int and not float(value).is_integer():
            return f"must be an integer, but got {value!r}"
        if self.type is str and not isinstance(value, str):
            return f"must be a string, but got {value!r}"
        if self.choices and value not in self.choices:
            return f"must be one of {list(self.choices)}, but got {value!r}"
        if self.interval is not None:
            lo, hi, br = self.interval
            if not math.isfinite(float(value)) or (value <= lo if br[0] == "(" else value < lo) or \
                    (value >= hi if br[1] == ")" else value > hi):
                return f"must be in {br[0]}{lo:g}, {hi:g}{br[1]}, but got {value!r}"
        return None

    def allowed(self) -> str:
        if self.choices:
            return ", ".join(str(c) for c in self.choices)
        assert self.interval is not None
        lo, hi, br = self.interval
        return f"{br[0]}{lo:g}, {hi:g}{br[1]}"


class Method:
    """A compression method. Subclasses declare ``name`` and ``knobs`` and override what they use.

    - :meth:`check` / :meth:`check_choices`: rules between knobs, on one layer's values / on a group's choice lists
      (a message, or None);
    - :meth:`weight_mask`: for methods that zero weights: a 0/1 mask of the (already restructured) weight, given
      the masks of the methods registered before it (``mask``, or None), or a skip reason (the layer is then left
      dense by this method and the trial goes on); the masks multiply;
    - :meth:`density`: the share of a weight of that shape the mask keeps (the latency predictor's non-zero MACs;
      1.0 where :meth:`weight_mask` would skip the layer).
    """

    name: str = ""
    knobs: tuple[Knob, ...] = ()

    def check(self, values: Mapping[str, Any]) -> str | None:
        return None

    def check_choices(self, choices: Mapping[str, list[Any]]) -> str | None:
        return None

    def normalize(self, values: Mapping[str, Any]) -> Mapping[str, Any]:
        """The values a sampled combination means (e.g. no weight sharing with float weights)."""
        return values

    def active(self, values: Mapping[str, Any]) -> bool:
        """Whether the method changes a layer with these values (any of its knobs off its default)."""
        return any(values[k.name] != k.default for k in self.knobs)

    def weight_mask(self, weight: torch.Tensor, values: Mapping[str, Any],
                    mask: torch.Tensor | None) -> torch.Tensor | str | None:
        return None

    def density(self, values: Mapping[str, Any], weight_shape: tuple[int, ...]) -> float:
        return 1.0


__all__ = ["Heatmap", "Knob", "Method"]
