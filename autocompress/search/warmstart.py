"""Budgeted warm starts from per-layer sensitivity, and the choices a study leaves out on that evidence.

From the one-layer probes of :mod:`.sensitivity`, each section of the search space (a layer, or a group sharing
its values) gets a list of options: one combination of its channel keep, rank, N:M, sparsity, weight bits and
input bits, with

- its predicted **divergence** (the sum of its knobs' one-layer scores),
- its **weight bits**: the storage formula of :mod:`autocompress.evaluate.size` at the option's shape and
  density (quantization scales included, a low-rank pair as two weights),
- its **latency cost**: multiply-accumulates at the option's shape times a per-MAC cost of its kernel (float or
  int8), with a fixed per-model overhead. The three coefficients are fitted (non-negative least squares) on three
  plans scored as trials score them (predicted from the study's profile or measured on its backend): the teacher,
  uniform int8 and uniform channel pruning. It chooses warm starts only; every warm start is then a trial, and
  its latency is predicted or measured like any other.

Coupling between layers is first-order: pruning a section's output channels also thins the inputs of the layers
after it (the MACs this removes there were measured by its probe), counted at half, since those layers may be
pruned or run int8 themselves; sizes count the section's own weights only.

For each of a spread of budgets (:data:`BUDGETS`: lower latency, smaller, or both) the options of least total
divergence within it are found exactly as a multiple-choice knapsack: one binary variable per section and option,
one option per section, each bound of the budget as a linear constraint, solved by ``scipy.optimize.milp`` (HiGHS).
Only options on their section's Pareto front of (divergence, bits, cost) are offered, which keeps the problem to a
few hundred variables on a 50-layer network.

On a deep network the same scores first tie layers (:func:`ties`): layers of one per-layer group that scored alike
and cost alike share their parameters, so the sampler learns a few sections instead of every layer; the options,
budgets and narrowing below are then those of the tied sections (a tied section's divergence is its layers' sum).

The same evidence narrows the space the sampler explores (:func:`restrictions`): a choice whose divergence *alone*
exceeds the total divergence of the most aggressive budgeted plan is far beyond any budget the study targets, and
is left out for that section (the teacher's value and failed probes always stay), so the sampler does not spend
trials on it. Size knobs (sparsity, bits) are narrowed on the evidence of a solved size budget, latency knobs
(channel keep, rank, input bits) only of a solved latency budget: on a model whose every layer is too cheap for any
latency budget to be reachable (LeNet-5), the size plans say nothing about what a faster plan would need. How much this leaves out depends on the model: what a study left is stored beside its scores.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
from scipy.cluster.hierarchy import fcluster, linkage
from scipy.optimize import Bounds, LinearConstraint, milp, nnls

from ..compress import registry
from ..compress.layers import get_module
from ..compress.lowrank import resolve_rank
from ..config import StudyConfig
from ..evaluate.candidate import Candidate
from ..evaluate.size import dense_size_bytes, layout_bits
from ..evaluate.zero_cost import macs_by_layer
from ..latency.study import candidate_latency, resolve_mode
from ..plan import CompressionPlan
from ..space import SearchSpace, Section
from ..tasks import Task
from . import sensitivity
from .sensitivity import Sensitivity, key

KNAPSACK_KNOBS = ("channel_keep", "rank_ratio", "nm", "sparsity", "weight_bits", "activation_bits")
# Budgets (x times faster, y times smaller; None = no bound) a warm start is solved for; one no plan of the space
# reaches is left out. Joint budgets give plans good on both axes, where a front's hypervolume grows most.
BUDGETS = ((1.5, None), (2.0, None), (3.0, None), (4.0, None), (6.0, None), (None, 4.0), (None, 10.0),
           (None, 20.0), (None, 40.0), (2.0, 10.0), (3.0, 16.0), (4.0, 20.0))
ATTR = "warm_start_plans"         # study attribute: what each budgeted warm start was solved for
RESTRICT_ATTR = "space_restrictions"
TIE_ATTR = "layer_ties"           # study attribute: tied section -> the layers sharing its parameters


@dataclass(frozen=True)
class LayerStats:
    """A teacher layer's weight as a matrix (``rows`` x ``fan_in``), its groups and MACs for one example."""

    rows: int
    fan_in: int
    groups: int
    macs: float
    is_output: bool


@dataclass
class Option:
    values: dict[str, Any]
    divergence: float
    bits: float
    float_macs: float
    int8_macs: float


@dataclass
class CostModel:
    """ms = overhead + c_float * float MACs + c_int8 * int8 MACs (fitted on ``points``: plan, ms, MACs)."""

    overhead: float
    c_float: float
    c_int8: float
    points: list[dict[str, Any]] = field(default_factory=list)

    def ms(self, float_macs: float, int8_macs: float) -> float:
        return self.overhead + self.c_float * float_macs + self.c_int8 * int8_macs


@dataclass
class WarmStart:
    label: str
    params: dict[str, Any]
    predicted: dict[str, float]


def layer_stats(task: Task, space: SearchSpace, macs: dict[str, float] | None = None) -> dict[str, LayerStats]:
    """Each searched layer's weight shape and MACs (``macs``: the teacher's :func:`macs_by_layer`, if at hand)."""
    macs = macs if macs is not None else macs_by_layer(task.model, task.example_input)
    out = {}
    for a in space.assignments:
        w = get_module(task.model, a.layer.name).weight
        out[a.layer.name] = LayerStats(rows=w.shape[0], fan_in=w[0].numel(),
                                       groups=getattr(get_module(task.model, a.layer.name), "groups", 1),
                                       macs=macs.get(a.layer.name, 0.0), is_output=a.layer.is_output)
    return out


def int8_kernel(values: dict[str, Any], kinds: frozenset[str]) -> bool:
    """Whether a layer of these values runs an int8 kernel (as the runtime layer lowers it)."""
    return "int8" in kinds and values["weight_bits"] <= 8 and values["activation_bits"] == 8 \
        and not values.get("weight_sharing", False)


def layer_cost(values: dict[str, Any], s: LayerStats, kinds: frozenset[str]) -> tuple[float, float, float]:
    """``(weight bits, float MACs, int8 MACs)`` of one layer at ``values`` (see the module docstring)."""
    keep = 1.0 if s.is_output else values["channel_keep"]
    rows = max(1, round(s.rows * keep))
    rank, _ = resolve_rank((rows, s.fan_in), values["rank_ratio"], s.groups)
    shapes = [(rows, s.fan_in)] if rank is None else [(rank, s.fan_in), (rows, rank)]
    density = registry.density(values, (rows, s.fan_in))
    bits = 0.0
    for r, c in shapes:
        numel = r * c
        b = values["weight_bits"]
        bits += min(layout_bits(numel, r, round(numel * density), b).values()) + (32 * r if b < 32 else 0)
    macs = s.macs * keep * sum(r * c for r, c in shapes) / (rows * s.fan_in)
    return (bits, 0.0, macs) if int8_kernel(values, kinds) else (bits, macs, 0.0)


def _pareto(options: list[Option], cost) -> list[Option]:
    """Options no other option beats on divergence, bits and latency cost at once."""
    pts = np.array([[o.divergence, o.bits, cost(o)] for o in options])
    keep = []
    for i, p in enumerate(pts):
        dominated = np.all(pts <= p, axis=1) & np.any(pts < p, axis=1)
        if not dominated.any():
            keep.append(options[i])
    unique = {tuple(sorted(o.values.items())): o for o in keep}  # equal points: one of them
    return list(unique.values())


def section_options(section: Section, sens: Sensitivity, stats: dict[str, LayerStats],
                    kinds: frozenset[str]) -> list[Option]:
    """Every valid combination of the section's knapsack knobs whose every value has a probe score."""
    base = registry.defaults()
    for knob, choices in section.choices.items():  # knobs outside the knapsack: their uniform value
        if knob not in KNAPSACK_KNOBS:
            k = registry.KNOBS[knob]
            target = k.default if k.uniform is None else k.uniform
            base[knob] = target if target in choices else choices[0]
    knobs = [k for k in KNAPSACK_KNOBS if k in section.choices]
    out = []
    for combo in itertools.product(*(section.choices[k] for k in knobs)):
        values = base | dict(zip(knobs, combo, strict=True))
        if registry.check_values(values):
            continue
        scores = [sens.score(section.name, k, v) for k, v in zip(knobs, combo, strict=True)]
        if any(s is None for s in scores):
            continue
        normal = registry.normalize(values)
        bits = fm = im = 0.0
        for layer in section.layers:
            b, f, i = layer_cost(normal, stats[layer.name], kinds)
            bits, fm, im = bits + b, fm + f, im + i
        # the thinned inputs of later layers, counted at half (those layers may be pruned or int8 themselves)
        fm -= 0.5 * sens.coupled_macs.get(section.name, {}).get(key(values["channel_keep"]), 0.0)
        out.append(Option(values=dict(zip(knobs, combo, strict=True)), divergence=float(sum(scores)), bits=bits,
                          float_macs=fm, int8_macs=im))
    return out


def fit_cost(task: Task, space: SearchSpace, cfg: StudyConfig, kinds: frozenset[str]) -> CostModel:
    """The latency cost model, fitted on the teacher, uniform int8 and uniform channel pruning, each scored as a
    trial would be (predicted or measured: the study's latency mode)."""
    plans = {"teacher": CompressionPlan()}
    int8 = space.uniform_params(weight_bits=8, sparsity=0.0, activation_bits=8)
    if "int8" in kinds:
        plans["uniform int8"] = space.suggest(optuna.trial.FixedTrial(int8))
    keeps = [c for s in space.sections() for c in s.choices["channel_keep"] if c < 1.0]
    if keeps:
        params = space.uniform_params(weight_bits=32, sparsity=0.0, activation_bits=32)
        for name in params:
            if name.endswith(":channel_keep"):
                params[name] = min(keeps, key=lambda k: abs(k - 0.5))
        plans["uniform channel pruning"] = space.suggest(optuna.trial.FixedTrial(params))
    points, rows, ms = [], [], []
    for label, plan in plans.items():
        cand = Candidate(task, plan, cfg.finetune, seed=cfg.seed)
        lat = candidate_latency(cand, cfg.latency).latency_ms
        macs = macs_by_layer(cand.cm.model, task.example_input)
        int8_layers = {name for name, lp in plan.layers.items()
                       if int8_kernel(registry.normalize(dataclasses.asdict(lp)), kinds)}
        i8 = sum(v for name, v in macs.items() if name in int8_layers)
        f = sum(macs.values()) - i8
        points.append({"plan": label, "ms": lat, "float_macs": f, "int8_macs": i8})
        rows.append([1.0, f, i8])
        ms.append(lat)
    a, b = np.array(rows), np.array(ms)
    scale = np.maximum(a.max(axis=0), 1e-12)  # columns of very different magnitude: solve in unit columns
    coef, _ = nnls(a / scale, b)
    coef = coef / scale
    overhead, c_float = float(coef[0]), float(coef[1])
    c_int8 = float(coef[2]) if "uniform int8" in plans else c_float
    return CostModel(overhead, c_float, c_int8, points)


def solve(options: list[list[Option]], weights: list[list[np.ndarray]], budgets: list[float]) -> list[int] | None:
    """Index of the chosen option of each section: least total divergence with, for every bound ``j``,
    ``sum(weights[j]) <= budgets[j]`` (``weights[j]``: one array per section); None when no choice fits."""
    sizes = [len(o) for o in options]
    n = sum(sizes)
    c = np.concatenate([[o.divergence for o in opts] for opts in options])
    one = np.zeros((len(options), n))
    start = 0
    for i, k in enumerate(sizes):
        one[i, start:start + k] = 1.0
        start += k
    bounds = [LinearConstraint(np.concatenate(w)[None, :], -np.inf, b) for w, b in zip(weights, budgets, strict=True)]
    res = milp(c, integrality=np.ones(n), bounds=Bounds(0, 1), constraints=[LinearConstraint(one, 1, 1), *bounds])
    if res.x is None:
        return None
    x = np.round(res.x).astype(int)
    out, start = [], 0
    for k in sizes:
        out.append(int(np.argmax(x[start:start + k])))
        start += k
    return out


def plan_warm_starts(task: Task, space: SearchSpace, cfg: StudyConfig, sens: Sensitivity, *,
                     teacher_size_bytes: int | None = None) -> tuple[list[WarmStart], CostModel]:
    """The budgeted warm starts (:data:`BUDGETS`; those no plan of the space reaches are left out) and the cost
    model they were chosen with."""
    kinds = resolve_mode(task, cfg.latency).kinds
    all_macs = macs_by_layer(task.model, task.example_input)
    stats = layer_stats(task, space, all_macs)
    model = fit_cost(task, space, cfg, kinds)
    sections = space.sections()

    def cost(o: Option) -> float:
        return model.c_float * o.float_macs + model.c_int8 * o.int8_macs

    options = [_pareto(section_options(s, sens, stats, kinds), cost) for s in sections]
    if any(not o for o in options):
        return [], model
    searched = {a.layer.name for a in space.assignments}
    teacher_bits = 8 * (teacher_size_bytes or dense_size_bytes(task.model))
    fixed_bits = teacher_bits - 32 * sum(s.rows * s.fan_in for s in stats.values())
    fixed_ms = model.ms(sum(v for k, v in all_macs.items() if k not in searched), 0.0)
    teacher_ms = model.ms(sum(all_macs.values()), 0.0)
    ms_w = [np.array([cost(o) for o in opts]) for opts in options]
    bits_w = [np.array([o.bits for o in opts]) for opts in options]
    base = space.uniform_params(weight_bits=32, sparsity=0.0, activation_bits=32)
    dists = space.distributions()
    out: list[WarmStart] = []
    for faster, smaller in BUDGETS:
        weights, bounds, label = [], [], []
        if faster:
            weights.append(ms_w)
            bounds.append(teacher_ms / faster - fixed_ms)
            label.append(f"{faster:g}x faster")
        if smaller:
            weights.append(bits_w)
            bounds.append(teacher_bits / smaller - fixed_bits)
            label.append(f"{smaller:g}x smaller")
        chosen = solve(options, weights, bounds)
        if chosen is None:
            continue
        params = dict(base)
        for s, opts, i in zip(sections, options, chosen, strict=True):
            for knob, value in opts[i].values.items():
                if f"{s.name}:{knob}" in dists:
                    params[f"{s.name}:{knob}"] = value
        if any(params == w.params for w in out):
            continue
        picked = [opts[i] for opts, i in zip(options, chosen, strict=True)]
        ms = fixed_ms + sum(cost(o) for o in picked)
        bits = fixed_bits + sum(o.bits for o in picked)
        out.append(WarmStart("knapsack " + ", ".join(label), params, {"divergence": sum(o.divergence for o in picked),
                                             "speedup": teacher_ms / ms if ms > 0 else math.inf,
                                             "shrink": teacher_bits / bits}))
    return out, model


# Knobs whose choices trade accuracy for size only, and those that (also) buy latency: a choice is left out only on
# the evidence of budgets of its kind (plans solved for a size budget say nothing about what a faster plan needs).
SIZE_KNOBS = frozenset({"sparsity", "weight_bits", "nm", "weight_sharing", "entropy_coding"})
LATENCY_KNOBS = frozenset({"channel_keep", "rank_ratio", "activation_bits"})


def narrowed(space: SearchSpace, sens: Sensitivity, starts: list[WarmStart]) -> dict[str, list]:
    """What a study leaves out (see the module docstring): choices whose divergence alone exceeds the most
    aggressive budgeted plan's, for the size knobs when a size budget was solved and the latency knobs when a
    latency budget was."""
    if not starts:
        return {}
    knobs = (SIZE_KNOBS if any("smaller" in w.label for w in starts) else frozenset()) | \
        (LATENCY_KNOBS if any("faster" in w.label for w in starts) else frozenset())
    return restrictions(space, sens, max(w.predicted["divergence"] for w in starts), knobs=knobs)


def tie_count(n: int) -> int:
    """How many tied sections ``n`` layers of a group become: ``ceil(sqrt(2 n))`` (20 layers: 7; 52: 11); none
    below :data:`MIN_TIED_LAYERS`. A heuristic: enough sections for the warm starts to tell a network's sensitive
    stages from its robust ones, few enough for a sampler to learn each from tens of trials."""
    return n if n < MIN_TIED_LAYERS else math.ceil(math.sqrt(2 * n))


# Groups of fewer layers stay one parameter per layer. Measured (benchmarks/RESULTS.md, search scale): on
# MobileNetV2 (52 convolutions, 215 parameters) tying was level at 30 trials and ahead at 60; on the byte-level
# BERT (12 hidden Linear layers, 72 parameters) it fell behind the untied default (hv@30 0.024 vs 0.039, seed 0).
MIN_TIED_LAYERS = 16


def ties(space: SearchSpace, sens: Sensitivity, macs: dict[str, float]) -> dict[str, list[str]]:
    """Layers of like sensitivity and cost that share their parameters: tied section name -> its layers.

    A per-layer group of a deep network has hundreds of parameters (MobileNetV2: 215), more than a study's tens of
    trials can learn one by one; a sampler then mostly draws plans putting some sensitive layer at 2 bits. The
    layers of each per-layer group (its output layer apart) are clustered (Ward linkage, ``scipy``) on their
    one-layer scores (log divergence of every scored choice) and their log MACs, into :func:`tie_count` clusters;
    the layers of a cluster share ``<group>~<i>:<knob>``. The warm starts and the narrowing are then solved on the
    tied sections, so what the study queues is what its sampler can express."""
    out: dict[str, list[str]] = {}
    for group in space.config.groups:
        if not group.per_layer:
            continue
        layers = [a.layer.name for a in space.assignments if a.group is group and not a.layer.is_output]
        k = tie_count(len(layers))
        if k >= len(layers):
            continue
        columns = sorted({(knob, v) for name in layers for knob, vals in sens.scores.get(name, {}).items()
                          for v in vals})
        x = np.full((len(layers), len(columns) + 1), np.nan)
        for i, name in enumerate(layers):
            for j, (knob, v) in enumerate(columns):
                d = sens.scores.get(name, {}).get(knob, {}).get(v)
                if d is not None:
                    x[i, j] = math.log10(d + sensitivity.NEGLIGIBLE)
            x[i, -1] = math.log10(macs.get(name, 0.0) + 1.0)
        fill = np.nanmean(np.where(np.isnan(x).all(axis=0), 0.0, x), axis=0)  # unscored: the column's mean
        x = np.where(np.isnan(x), fill, x)
        labels = fcluster(linkage(x, method="ward"), t=k, criterion="maxclust")
        members: dict[int, list[str]] = {}
        for name, label in zip(layers, labels, strict=True):
            members.setdefault(int(label), []).append(name)
        for i, names in enumerate(sorted(members.values(), key=lambda m: layers.index(m[0]))):
            if len(names) > 1:
                out[f"{group.name}~{i}"] = names
    return out


def guide(task: Task, space: SearchSpace, cfg: StudyConfig, *, teacher_size_bytes: int | None = None,
          progress: bool | None = None) -> dict[str, Any]:
    """The sensitivity pass and what a study derives from it, as the study attributes it stores:
    :data:`sensitivity.ATTR` (the one-layer scores), :data:`TIE_ATTR` (the layers sharing parameters, with
    ``tie_layers``), :data:`ATTR` (the budgeted plans and the cost model they were chosen with) and
    :data:`RESTRICT_ATTR` (what is left out of the tied space). ``space`` itself is not changed."""
    sens = sensitivity.measure(task, space, cfg.finetune, progress=progress)
    tied = ties(space, sens, macs_by_layer(task.model, task.example_input)) if cfg.tie_layers else {}
    work = SearchSpace(space.config, space.layers)
    work.tie(tied)
    merged = sens.merged(tied)
    starts, cost = plan_warm_starts(task, work, cfg, merged, teacher_size_bytes=teacher_size_bytes)
    return {sensitivity.ATTR: sens.to_dict(), TIE_ATTR: tied,
            ATTR: {"plans": [{"label": w.label, "params": w.params, "predicted": w.predicted} for w in starts],
                   "cost_model": {"overhead_ms": cost.overhead, "ms_per_float_mac": cost.c_float,
                                  "ms_per_int8_mac": cost.c_int8, "points": cost.points}},
            RESTRICT_ATTR: narrowed(work, merged, starts)}


def restrictions(space: SearchSpace, sens: Sensitivity, threshold: float,
                 knobs: frozenset[str] | None = None) -> dict[str, list]:
    """Parameter -> the choices left to it: those whose divergence alone is at most ``threshold`` (the teacher's
    value and values without a score always stay; only ``knobs`` are narrowed, default all)."""
    dists = space.distributions()
    out = {}
    for s in space.sections():
        for knob, choices in s.choices.items():
            name = f"{s.name}:{knob}"
            if name not in dists or (knobs is not None and knob not in knobs):
                continue
            keep = [c for c in choices if (sens.score(s.name, knob, c) or 0.0) <= threshold
                    or sens.score(s.name, knob, c) is None]
            if not keep:
                keep = [min(choices, key=lambda c: sens.score(s.name, knob, c) or 0.0)]
            if len(keep) < len(choices):
                out[name] = keep
    return out


__all__ = ["ATTR", "RESTRICT_ATTR", "TIE_ATTR", "MIN_TIED_LAYERS", "tie_count", "ties", "CostModel", "BUDGETS", "KNAPSACK_KNOBS", "WarmStart",
           "LATENCY_KNOBS", "SIZE_KNOBS", "fit_cost", "guide", "layer_cost", "narrowed", "plan_warm_starts", "restrictions",
           "section_options", "solve"]

