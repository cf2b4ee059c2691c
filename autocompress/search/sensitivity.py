"""Per-layer sensitivity: how far the teacher's outputs move when one part of the search space alone changes.

For every section of the search space (a layer of a per-layer group, or a group sharing its values: see
:meth:`~autocompress.space.SearchSpace.sections`) and every value of each of its knobs other than the teacher's,
one zero-shot probe: the plan changing only that, materialized exactly as a trial's candidate is (BatchNorm
statistics re-estimated where they moved, activation ranges calibrated), run on the study's calibration batches.
Its score (``divergence``) is the task's distillation loss between the probe's outputs and the teacher's with the
teacher term alone (``alpha`` 1, temperature 1: KL divergence for classifiers and language models, mean squared
error for regression), minus that of the teacher against itself. 0 means the outputs did not move; larger is
worse. Scores of one section's knobs, and of different sections, are treated as adding up (a first-order view:
it ranks layers, :mod:`.warmstart` builds plans from it, and every plan is still scored by a real trial).

Why one-layer probes and not a gradient (Fisher) score: they need no backward pass, work the same for every
method (channel pruning, low rank and 2-bit weights are far from the small perturbations a Taylor expansion
assumes) and measure the very candidate a trial would build. One probe is one candidate and one forward pass
over the calibration batches; a study records how long the pass took (``seconds``) beside its trials' cost.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm import tqdm

from ..compress import registry
from ..config import FinetuneConfig
from ..evaluate.candidate import Candidate, first_batches
from ..evaluate.zero_cost import macs_by_layer
from ..plan import CompressionPlan, LayerPlan, StudentPlan
from ..space import SearchSpace, Section
from ..tasks import Task
from ..tasks.inputs import call

log = logging.getLogger(__name__)

ATTR = "sensitivity"  # study attribute holding Sensitivity.to_dict()


@dataclass
class Sensitivity:
    """``scores[section][knob][value] = divergence`` (values as strings, JSON keys); ``errors`` likewise holds
    the message of a probe that failed (its value is left out of warm starts, never dropped on no evidence)."""

    scores: dict[str, dict[str, dict[str, float]]] = field(default_factory=dict)
    errors: dict[str, dict[str, dict[str, str]]] = field(default_factory=dict)
    # channel pruning thins the inputs of the layers after it: MACs (one example) it removes outside its section
    coupled_macs: dict[str, dict[str, float]] = field(default_factory=dict)
    seconds: float = 0.0
    probes: int = 0
    samples: int = 0

    def score(self, section: str, knob: str, value: Any) -> float | None:
        """Divergence of ``knob = value`` alone in ``section``: 0 for the teacher's value, None when unknown."""
        if value == registry.KNOBS[knob].default:
            return 0.0
        return self.scores.get(section, {}).get(knob, {}).get(key(value))

    def to_dict(self) -> dict[str, Any]:
        return {"scores": self.scores, "errors": self.errors, "coupled_macs": self.coupled_macs,
                "seconds": round(self.seconds, 3),
                "probes": self.probes, "samples": self.samples}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Sensitivity:
        return cls(scores=d.get("scores", {}), errors=d.get("errors", {}), coupled_macs=d.get("coupled_macs", {}),
                   seconds=float(d.get("seconds", 0.0)),
                   probes=int(d.get("probes", 0)), samples=int(d.get("samples", 0)))

    def merged(self, ties: dict[str, list[str]]) -> Sensitivity:
        """The scores of a space whose layers ``ties[name]`` share parameters (see
        :meth:`~autocompress.space.SearchSpace.tie`): a tied section's divergence is the sum of its layers' (the
        first-order view of the module docstring), its coupled MACs likewise; a value that failed on any of its
        layers is a failed value of the tied section."""
        scores = {s: v for s, v in self.scores.items()}
        errors = {s: v for s, v in self.errors.items()}
        coupled = {s: v for s, v in self.coupled_macs.items()}
        for name, members in ties.items():
            total: dict[str, dict[str, float]] = {}
            failed: dict[str, dict[str, str]] = {}
            macs: dict[str, float] = {}
            for m in members:
                for knob, vals in scores.pop(m, {}).items():
                    for v, d in vals.items():
                        total.setdefault(knob, {})[v] = total.get(knob, {}).get(v, 0.0) + d
                for knob, vals in errors.pop(m, {}).items():
                    for v, e in vals.items():
                        failed.setdefault(knob, {}).setdefault(v, f"{m}: {e}")
                for v, c in coupled.pop(m, {}).items():
                    macs[v] = macs.get(v, 0.0) + c
            for knob, vals in failed.items():
                for v in vals:
                    total.get(knob, {}).pop(v, None)
            scores[name], errors[name], coupled[name] = total, failed, macs
        return dataclasses.replace(self, scores=scores, errors=errors, coupled_macs=coupled)

    def table(self) -> list[dict[str, Any]]:
        """One row per section, knob and value, most sensitive first (failed probes last)."""
        rows = [{"section": s, "knob": k, "value": v, "divergence": d}
                for s, knobs in self.scores.items() for k, vals in knobs.items() for v, d in vals.items()]
        rows += [{"section": s, "knob": k, "value": v, "divergence": math.nan, "error": e}
                 for s, knobs in self.errors.items() for k, vals in knobs.items() for v, e in vals.items()]
        return sorted(rows, key=lambda r: -r["divergence"] if math.isfinite(r["divergence"]) else math.inf)


def key(value: Any) -> str:
    """A knob value as a JSON object key (``8``, ``0.5``, ``2:4``, ``True``)."""
    return str(value)


# A divergence below this is no change at all; a knob's milder values are then not probed but given its score.
NEGLIGIBLE = 1e-4


def _strength(knob: str, value: Any) -> float:
    """How far ``value`` is from the teacher's (numeric knobs: the distance; others: all equal)."""
    default = registry.KNOBS[knob].default
    if isinstance(value, bool) or not isinstance(value, int | float):
        return 0.0
    return abs(float(value) - float(default))


def probes(section: Section) -> list[tuple[str, Any, LayerPlan]]:
    """``(knob, value, layer plan)`` of every one-knob change of ``section`` that changes anything (a value that
    takes effect only with another knob, such as entropy coding without quantized weights, is not probed), the
    strongest value of each knob first."""
    out = []
    base = registry.defaults()
    for knob, choices in section.choices.items():
        for value in sorted(choices, key=lambda v: -_strength(knob, v)):
            if value == base[knob]:
                continue
            values = registry.normalize(base | {knob: value})
            if values == base or registry.check_values(values):
                continue
            out.append((knob, value, LayerPlan(**values)))
    return out


def divergence(task: Task, model: torch.nn.Module, batches, teacher_outs) -> float:
    """The task's distillation loss of ``model`` against ``teacher_outs`` (teacher term only) over ``batches`` of
    ``(inputs, targets)``."""
    loss = task.distill_loss
    total = 0.0
    with torch.no_grad():
        for (x, y), t in zip(batches, teacher_outs, strict=True):
            total += float(loss(call(model, x), t, y, alpha=1.0, temperature=1.0))
    return total / len(batches)


def measure(task: Task, space: SearchSpace, finetune_cfg: FinetuneConfig, *, progress: bool | None = None,
            batches: int = 2) -> Sensitivity:
    """One probe per section and knob value (see the module docstring), scored on the first ``batches``
    training batches of 32 (with the study's calibration batches for BatchNorm and activation ranges)."""
    t0 = time.perf_counter()
    data = first_batches(task, batches)
    teacher = task.model.eval()
    with torch.no_grad():
        teacher_outs = [call(teacher, x) for x, _ in data]
    teacher_macs = macs_by_layer(teacher, task.example_input)
    baseline = divergence(task, teacher, data, teacher_outs)  # 0 for the built-in losses; a user's may differ
    out = Sensitivity(samples=sum(len(y) for _, y in data))
    todo = [(s, knob, value, lp) for s in space.sections() for knob, value, lp in probes(s)]
    # A forward pass on the CPU (no device copies), BatchNorm re-estimated from the first MIN_BN_SAMPLES samples.
    cfg = FinetuneConfig(**(finetune_cfg.model_dump() | {
        "device": "cpu", "calibration_batches": min(finetune_cfg.calibration_batches, max(batches, 2))}))
    for section, knob, value, lp in tqdm(todo, desc="sensitivity", unit="probe",
                                         disable=True if progress is False else None, leave=False):
        known = out.scores.get(section.name, {}).get(knob, {})
        if known and min(known.values()) < NEGLIGIBLE:  # a stronger value of this knob already changed nothing
            known[key(value)] = min(known.values())
            continue
        # a shared group's output layer keeps its channels (its outputs are the model's)
        plan = CompressionPlan(layers={layer.name: lp for layer in section.layers
                                       if not (knob == "channel_keep" and layer.is_output)},
                               student=StudentPlan(channel_multiple=space.config.channel_multiple))
        try:
            cand = Candidate(task, plan, cfg)
            score = divergence(task, cand.cm.model, data, teacher_outs) - baseline
            if not math.isfinite(score):
                raise ValueError(f"the outputs are not finite ({score})")
            out.scores.setdefault(section.name, {}).setdefault(knob, {})[key(value)] = max(0.0, score)
            if knob == "channel_keep":
                own = {layer.name for layer in section.layers}
                after = macs_by_layer(cand.cm.model, task.example_input)
                out.coupled_macs.setdefault(section.name, {})[key(value)] = float(sum(
                    m - after.get(name, 0.0) for name, m in teacher_macs.items() if name not in own))
        except Exception as e:  # a method that cannot handle this layer: recorded, the pass goes on
            out.errors.setdefault(section.name, {}).setdefault(knob, {})[key(value)] = f"{type(e).__name__}: {e}"[:300]
        out.probes += 1
    out.seconds = time.perf_counter() - t0
    log.info("sensitivity: %d probes in %.1f s", out.probes, out.seconds)
    return out


def plan_divergence(sens: Sensitivity, space: SearchSpace, plan: CompressionPlan) -> float:
    """The divergence the scores predict for ``plan``: the sum of its layers' one-knob scores (unknown: 0)."""
    section_of = {a.layer.name: space.section_name(a) for a in space.assignments}
    total = 0.0
    for name, lp in plan.layers.items():
        for knob, value in dataclasses.asdict(lp).items():
            total += sens.score(section_of.get(name, name), knob, value) or 0.0
    return total


__all__ = ["ATTR", "Sensitivity", "divergence", "key", "measure", "plan_divergence", "probes"]
