"""Figure data for the dashboard: plain functions, tables in, JSON-ready dicts and lists out.

Nothing here reads storage or draws. :class:`StudyData` holds what :mod:`autocompress.dashboard.source` read
from a study; :func:`dashboard_data` turns it into the one JSON document the page draws from (the static HTML
embeds it, the live server sends it again on every poll).
"""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from ..compress import registry
from ..front import (
    COST_OBJECTIVES,
    HV_REFERENCE,
    Front,
    hypervolume,
    metric_reference,
    normalised,
    objective_column,
)
from ..plan import CompressionPlan

# The three measured objectives, recorded on every completed trial whatever the study optimises.
METRICS = ("accuracy", "latency_ms", "size_bytes")
DEFAULT_DIRECTIONS = {"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"}
LABELS = {"accuracy": "accuracy (validation)", "latency_ms": "latency (ms)", "size_bytes": "size (bytes)"}
# Constraint name -> (metric, bound): ``constraints`` user attrs store ``limit - value`` or ``value - limit``.
CONSTRAINTS = {"min_accuracy": ("accuracy", "min"), "min_metric": ("accuracy", "min"), "max_metric": ("accuracy", "max"),
               "max_latency_ms": ("latency_ms", "max"),
               "max_size_bytes": ("size_bytes", "max")}
# Trial user attrs drawn only where a study records them (multi-fidelity search, latency predictor).
EXTRA_ATTRS = ("fidelity", "latency_predicted_ms", "latency_measured_ms", "proxy_accuracy", "full_accuracy")
LATENCY_BAND = 0.10
STATUS = ("front", "feasible", "infeasible")  # trial status codes 0, 1, 2 in the trial columns


@dataclass
class StudyData:
    """What the dashboard needs from a study.

    ``attrs`` has one row per finished trial (complete, failed or pruned) with the columns ``trial``, ``state``,
    ``cost_s``, ``constraints`` (a dict) and each of ``EXTRA_ATTRS`` that any trial records.
    ``layers`` is the study's ``layers`` user attr (model order); ``n_running`` counts unfinished trials;
    ``sensitivity`` the study's per-layer scores (``search.sensitivity.Sensitivity.to_dict()``), when it has them.
    """

    front: Front
    attrs: pd.DataFrame
    layers: list[dict[str, Any]] = field(default_factory=list)
    task: str | None = None
    n_running: int = 0
    sensitivity: dict[str, Any] | None = None


def sig(value: Any, digits: int = 6) -> float | None:
    """``value`` rounded to ``digits`` significant digits; None for missing or non-finite values."""
    if value is None:
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(v):
        return None
    return float(f"{v:.{digits}g}")


def _number(value: Any) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) else None


def directions(objectives: dict[str, str], metric: dict[str, Any] | None = None) -> dict[str, str]:
    """The direction of each metric: the study's where it optimises it, the natural one otherwise (the task's
    metric, stored as ``accuracy``: its own direction)."""
    out = {m: objectives.get(m, DEFAULT_DIRECTIONS[m]) for m in METRICS}
    if metric is not None:
        out["accuracy"] = metric.get("direction", "maximize")
    return out


def labels(metric: dict[str, Any] | None = None) -> dict[str, str]:
    """Axis labels; the task's metric under its own name."""
    name = (metric or {}).get("name", "accuracy")
    return {**LABELS, "accuracy": f"{name} (validation)", "test_accuracy": f"{name} (test)"}


def trial_columns(trials: pd.DataFrame) -> dict[str, Any]:
    """Completed trials as columns sorted by trial number; ``status`` codes index ``STATUS``.

    Plan summaries are stored once each (``summaries``) and referenced by index (``summary``).
    """
    df = trials.sort_values("trial")
    status = np.where(df["on_front"].astype(bool), 0, np.where(df["feasible"].astype(bool), 1, 2))
    summaries: list[str] = []
    index: dict[str, int] = {}
    refs = []
    for s in df["plan_summary"].astype(str):
        if s not in index:
            index[s] = len(summaries)
            summaries.append(s)
        refs.append(index[s])
    out: dict[str, Any] = {"trial": [int(t) for t in df["trial"]]}
    for col in ("accuracy", "test_accuracy", "latency_ms", "compression_ratio", "cost_s"):
        out[col] = [sig(v) for v in df[col]]
    out["size_bytes"] = [None if sig(v) is None else int(v) for v in df["size_bytes"]]
    out["status"] = [int(s) for s in status]
    out["summary"] = refs
    out["summaries"] = summaries
    return out


def constraint_thresholds(attrs: pd.DataFrame, trials: pd.DataFrame) -> list[dict[str, Any]]:
    """The limits behind the stored constraint values, e.g. ``min_accuracy`` 0.95 on accuracy.

    Each completed trial stores ``limit - accuracy`` (min) or ``value - limit`` (max); the limit is recovered
    as the median over trials. Constraints on anything but the three metrics are left out (no line to draw).
    """
    if attrs.empty or trials.empty or "constraints" not in attrs:
        return []
    merged = trials[["trial", *METRICS]].merge(attrs[["trial", "constraints"]], on="trial")
    found: dict[str, list[float]] = {}
    for _, row in merged.iterrows():
        cons = row["constraints"]
        if not isinstance(cons, dict):
            continue
        for name, value in cons.items():
            if name not in CONSTRAINTS or _number(value) is None:
                continue
            metric, bound = CONSTRAINTS[name]
            measured = _number(row[metric])
            if measured is None:
                continue
            found.setdefault(name, []).append(value + measured if bound == "min" else measured - value)
    return [{"name": name, "metric": CONSTRAINTS[name][0], "bound": CONSTRAINTS[name][1],
             "value": sig(float(np.median(values)), 10)}
            for name, values in found.items()]


def pareto_2d(trials: pd.DataFrame, x: str, y: str, dirs: dict[str, str]) -> list[int]:
    """Trial numbers on the feasible Pareto front of the pair (``x``, ``y``) alone, sorted by ``x`` ascending.

    Of points with equal coordinates only the lowest trial number is kept.
    """
    df = trials[trials["feasible"].astype(bool)][["trial", x, y]].dropna()
    if df.empty:
        return []
    sx = -1.0 if dirs[x] == "maximize" else 1.0
    sy = -1.0 if dirs[y] == "maximize" else 1.0
    pts = pd.DataFrame({"trial": df["trial"].astype(int), "a": sx * df[x].astype(float),
                        "b": sy * df[y].astype(float)}).sort_values(["a", "b", "trial"])
    keep, best = [], math.inf
    for trial, a, b in pts.itertuples(index=False):
        if b < best:
            keep.append((trial, a))
            best = b
    raw = {t: v for t, v in zip(df["trial"].astype(int), df[x].astype(float), strict=True)}
    return [t for t, _ in sorted(keep, key=lambda k: (raw[k[0]], k[0]))]


def pair_fronts(trials: pd.DataFrame, dirs: dict[str, str]) -> dict[str, list[int]]:
    """:func:`pareto_2d` for every pair of metrics, keyed ``"x|y"`` (metrics in ``METRICS`` order)."""
    out = {}
    for i, x in enumerate(METRICS):
        for y in METRICS[i + 1:]:
            out[f"{x}|{y}"] = pareto_2d(trials, x, y, dirs)
    return out


def layer_order(layers: list[dict[str, Any]], plans: list[CompressionPlan]) -> list[dict[str, Any]]:
    """Layers in model order (the study's ``layers`` attr), then any layer only the plans name."""
    out = [{"name": str(i["name"]), "type": str(i.get("type", ""))} for i in layers if "name" in i]
    seen = {i["name"] for i in out}
    for plan in plans:
        for name in plan.layers:
            if name not in seen:
                seen.add(name)
                out.append({"name": name, "type": ""})
    return out


def layer_heatmaps(front: pd.DataFrame, plans: dict[int, CompressionPlan],
                   layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-layer decisions of each front member: one row per layer (model order), one column per member.

    Columns follow ``front``'s row order; a layer a plan does not mention keeps its defaults (no sparsity,
    32-bit weights, every channel kept).
    """
    members = [int(t) for t in front["trial"]]
    member_plans = [plans.get(t, CompressionPlan()) for t in members]
    order = layer_order(layers, member_plans)
    out: dict[str, Any] = {"layers": [i["name"] for i in order], "layer_types": [i["type"] for i in order],
                           "members": members,
                           "student_width": [p.student.width for p in member_plans],
                           "student_depth": [p.student.depth for p in member_plans]}
    out["specs"] = []
    for knob in registry.KNOBS.values():  # every knob a method marks for a heatmap
        if knob.heatmap is None:
            continue
        h = knob.heatmap
        out["specs"].append({"field": knob.name, "title": h.title, "zmin": h.zmin, "zmax": h.zmax, "log2": h.log2,
                             "reverse": h.reverse})
        out[knob.name] = [[sig(getattr(p.layer(i["name"]), knob.name)) for p in member_plans] for i in order]
    return out


def sensitivity_heatmap(sens: dict[str, Any] | None, layers: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The study's one-layer divergences: one row per section (layers in model order, then shared groups), one
    column per knob value (``weight_bits=4``); None when the study did not score its layers."""
    scores = (sens or {}).get("scores")
    if not scores:
        return None
    order = [i["name"] for i in layers if i.get("name") in scores] + \
        [name for name in scores if name not in {i.get("name") for i in layers}]
    knobs = list(registry.KNOBS)
    choices = sorted({(knob, value) for per in scores.values() for knob, vals in per.items() for value in vals},
                     key=lambda kv: (knobs.index(kv[0]) if kv[0] in knobs else len(knobs), kv[0],
                                     _number(kv[1]) if _number(kv[1]) is not None else 0.0, kv[1]))
    z = [[sig(scores[name].get(knob, {}).get(value)) for knob, value in choices] for name in order]
    return {"sections": order, "choices": [f"{k}={v}" for k, v in choices], "z": z,
            "probes": sens.get("probes"), "seconds": sens.get("seconds")}


def checkpoints(n: int, max_points: int) -> list[int]:
    """Prefix lengths 1..n at which a per-trial series is evaluated: all of them, or ``max_points`` spread."""
    if n <= 0:
        return []
    if n <= max_points:
        return list(range(1, n + 1))
    return sorted({int(round(v)) for v in np.linspace(1, n, max_points)})


def hypervolume_series(trials: pd.DataFrame, objectives: dict[str, str], teacher: dict[str, Any], *,
                       max_points: int = 400, metric: dict[str, Any] | None = None) -> dict[str, Any]:
    """Hypervolume of the feasible front after each completed trial, in trial-number order.

    Same normalisation and reference point as :attr:`Front.hypervolume`, so the last value equals it. With more
    than ``max_points`` trials it is evaluated at ``max_points`` evenly spread trials (``sampled`` is True).
    """
    objs = list(objectives)
    columns = [objective_column(o) for o in objs]
    missing = [o for o in objs if o in COST_OBJECTIVES and not _number(teacher.get(o))]
    if not objs or missing:
        why = "the study records no teacher reference" if missing else "no objective with a hypervolume reference"
        return {"trial": [], "hypervolume": [], "sampled": False, "note": f"hypervolume unavailable: {why}"}
    df = trials.sort_values("trial").reset_index(drop=True)
    ok = df["feasible"].astype(bool).to_numpy() & df[columns].notna().all(axis=1).to_numpy()
    points = np.zeros((len(df), len(objs)))
    if ok.any():
        points[ok] = normalised(df[ok], objs, teacher, metric)
    marks = checkpoints(len(df), max_points)
    front_idx: list[int] = []
    xs, ys, value, changed, prefix = [], [], 0.0, False, 0
    for mark in marks:
        while prefix < mark:
            i = prefix
            prefix += 1
            if not ok[i]:
                continue
            if front_idx:
                current = points[front_idx]
                p = points[i]
                if np.any(np.all(current <= p, axis=1)):  # weakly dominated: adds no volume
                    continue
                front_idx = [j for j, q in zip(front_idx, current, strict=True) if not np.all(p <= q)]
            front_idx.append(i)
            changed = True
        if changed:
            value = hypervolume(df.iloc[front_idx], objs, teacher, metric)
            changed = False
        xs.append(int(df["trial"].iloc[mark - 1]))
        ys.append(sig(value, 8))
    return {"trial": xs, "hypervolume": ys, "sampled": len(marks) < len(df), "note": None,
            "reference": {o: HV_REFERENCE[o] if o in COST_OBJECTIVES else metric_reference(metric) for o in objs}}


def cost_series(attrs: pd.DataFrame) -> dict[str, Any]:
    """Evaluation cost (seconds) of every finished trial, its state, and its fidelity where recorded."""
    if attrs.empty:
        return {"trial": [], "cost_s": [], "state": [], "fidelity": None}
    df = attrs.sort_values("trial")
    out: dict[str, Any] = {"trial": [int(t) for t in df["trial"]],
                           "cost_s": [sig(v, 4) for v in df.get("cost_s", pd.Series([None] * len(df)))],
                           "state": [str(s) for s in df["state"]], "fidelity": None}
    if "fidelity" in df and df["fidelity"].notna().any():
        out["fidelity"] = [_fidelity(v) for v in df["fidelity"]]
    return out


def _fidelity(value: Any) -> Any:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    n = _number(value)
    return sig(n) if n is not None else str(value)


def _pairs(attrs: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    if a not in attrs or b not in attrs:
        return pd.DataFrame(columns=["trial", a, b])
    df = attrs[["trial", a, b]].copy()
    df[a] = df[a].map(_number)
    df[b] = df[b].map(_number)
    return df.dropna().sort_values("trial")


def latency_calibration(attrs: pd.DataFrame, band: float = LATENCY_BAND) -> dict[str, Any] | None:
    """Predicted vs measured latency where both are recorded (None if no trial has both).

    ``within_band`` is the share of trials whose prediction is within ``band`` (relative) of the measurement.
    """
    df = _pairs(attrs, "latency_predicted_ms", "latency_measured_ms")
    df = df[(df["latency_predicted_ms"] > 0) & (df["latency_measured_ms"] > 0)]
    if df.empty:
        return None
    pred = df["latency_predicted_ms"].to_numpy(float)
    meas = df["latency_measured_ms"].to_numpy(float)
    within = np.abs(pred - meas) <= band * meas
    return {"trial": [int(t) for t in df["trial"]], "predicted": [sig(v) for v in pred],
            "measured": [sig(v) for v in meas], "band": band, "n": len(df),
            "within_band": sig(float(within.mean()), 4)}


def spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    """Spearman rank correlation (average ranks for ties); None below 3 points or for a constant input."""
    if len(a) < 3:
        return None
    ra = pd.Series(a).rank().to_numpy()
    rb = pd.Series(b).rank().to_numpy()
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def accuracy_calibration(attrs: pd.DataFrame) -> dict[str, Any] | None:
    """Proxy (low-fidelity) vs full accuracy where both are recorded (None if no trial has both)."""
    df = _pairs(attrs, "proxy_accuracy", "full_accuracy")
    if df.empty:
        return None
    proxy = df["proxy_accuracy"].to_numpy(float)
    full = df["full_accuracy"].to_numpy(float)
    rho = spearman(proxy, full)
    return {"trial": [int(t) for t in df["trial"]], "proxy": [sig(v) for v in proxy],
            "full": [sig(v) for v in full], "n": len(df), "spearman": None if rho is None else sig(rho, 4)}


def export_command(target: str, trial: int, study_name: str | None = None) -> str:
    """The shell command exporting front member ``trial`` of the study named by ``target``."""
    parts = ["autocompress", "export", shlex.quote(target)]
    if study_name:
        parts += ["--study-name", shlex.quote(study_name)]
    parts += ["--trial", str(int(trial)), "-o", shlex.quote(f"exported/trial-{int(trial)}")]
    return " ".join(parts)


def front_rows(front: pd.DataFrame, target: str, study_name: str | None = None) -> list[dict[str, Any]]:
    """One row per front member (``front``'s order) with its metrics, plan summary and export command."""
    rows = []
    for r in front.itertuples(index=False):
        rows.append({"trial": int(r.trial), "accuracy": sig(r.accuracy), "test_accuracy": sig(r.test_accuracy),
                     "latency_ms": sig(r.latency_ms), "size_bytes": None if sig(r.size_bytes) is None
                     else int(r.size_bytes), "compression_ratio": sig(r.compression_ratio, 4),
                     "plan_summary": str(r.plan_summary), "export": export_command(target, r.trial, study_name)})
    return rows


def fingerprint(sd: StudyData) -> str:
    """Changes whenever a trial finishes or starts: the live page redraws only then."""
    finished = sd.attrs["trial"] if not sd.attrs.empty else pd.Series([], dtype=int)
    last = int(finished.max()) if len(finished) else -1
    return f"{len(sd.front.trials)}-{len(finished)}-{last}-{sd.n_running}"


def _n_state(attrs: pd.DataFrame, state: str) -> int:
    return int((attrs["state"] == state).sum()) if "state" in attrs else 0


def _front_hypervolume(front: Front) -> float | None:
    if front.trials.empty:
        return None
    try:
        return sig(front.hypervolume, 8)
    except (KeyError, TypeError, ValueError, ZeroDivisionError):  # no teacher reference for an objective
        return None


def dashboard_data(sd: StudyData, *, target: str, study_name: str | None = None,
                   generated_at: str | None = None, max_hv_points: int = 400) -> dict[str, Any]:
    """Everything the page draws, as one JSON-ready dict (no NaN: missing values are None)."""
    front = sd.front
    trials = front.trials
    dirs = directions(front.objectives, front.metric)
    front_df = front.front if len(trials) else trials  # (Front.front needs at least one row)
    failed_reasons = [str(r) for r in front.failed["reason"]] if not front.failed.empty else []
    teacher = {k: sig(v) for k, v in front.teacher.items() if _number(v) is not None}
    return {
        "study": front.study_name,
        "task": sd.task,
        "target": target,
        "generated_at": generated_at,
        "fingerprint": fingerprint(sd),
        "objectives": dict(front.objectives),
        "directions": dirs,
        "metrics": list(METRICS),
        "labels": labels(front.metric),
        "metric": front.metric,
        "status_names": list(STATUS),
        "teacher": teacher,
        "counts": {"complete": len(trials), "failed": _n_state(sd.attrs, "FAIL"),
                   "pruned": _n_state(sd.attrs, "PRUNED"), "running": sd.n_running,
                   "front": len(front_df), "feasible": int(trials["feasible"].sum()) if len(trials) else 0},
        "last_error": failed_reasons[-1] if failed_reasons else None,
        "hypervolume": _front_hypervolume(front),
        "trials": trial_columns(trials),
        "constraints": constraint_thresholds(sd.attrs, trials),
        "pair_fronts": pair_fronts(trials, dirs),
        "heatmaps": layer_heatmaps(front_df, front.plans, sd.layers),
        "sensitivity": sensitivity_heatmap(sd.sensitivity, sd.layers),
        "hypervolume_series": hypervolume_series(trials, front.objectives, front.teacher,
                                                 max_points=max_hv_points, metric=front.metric),
        "cost": cost_series(sd.attrs),
        "latency_calibration": latency_calibration(sd.attrs),
        "accuracy_calibration": accuracy_calibration(sd.attrs),
        "front_rows": front_rows(front_df, target, study_name),
    }
