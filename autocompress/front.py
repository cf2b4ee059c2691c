"""The Pareto front of a study as a pandas DataFrame, with hypervolume and picking by constraints."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pandas as pd

from .config import FinetuneConfig
from .errors import AutocompressError, StudyNotFoundError
from .plan import CompressionPlan

# Hypervolume reference point, in the normalised minimisation space the front is scored in: the task's metric
# (objective "accuracy" or whatever the metric is named) as its distance from the best end of its range (accuracy:
# error = 1 - accuracy, worst 1), or, for a metric without a range, as a ratio to the teacher's (worst 2x);
# latency and size as ratios to the teacher (worst 2x and 1x).
HV_REFERENCE = {"accuracy": 1.0, "latency_ms": 2.0, "size_bytes": 1.0}
COST_OBJECTIVES = ("latency_ms", "size_bytes")

# Study attribute: the task's metric (name, direction, range). Trials store its value under "accuracy" and
# "test_accuracy" whatever it is named; a front shows it under its name too.
METRIC_ATTR = "metric"
DEFAULT_METRIC = {"name": "accuracy", "direction": "maximize", "range": [0.0, 1.0]}

COLUMNS = ["trial", "accuracy", "test_accuracy", "latency_ms", "size_bytes", "compression_ratio", "feasible",
           "on_front", "fidelity", "cost_s", "plan_summary"]


def metric_reference(metric: dict[str, Any] | None) -> float:
    """The hypervolume reference of the metric objective (see ``HV_REFERENCE``)."""
    return 1.0 if (metric or DEFAULT_METRIC).get("range") else 2.0


def metric_error(values: np.ndarray, metric: dict[str, Any] | None, teacher_value: float | None) -> np.ndarray:
    """The metric in the hypervolume's minimisation space (0 = best; see ``HV_REFERENCE``)."""
    m = metric or DEFAULT_METRIC
    values = np.asarray(values, dtype=float)
    maximize = m.get("direction", "maximize") == "maximize"
    if m.get("range"):
        lo, hi = (float(v) for v in m["range"])
        return (hi - values) / (hi - lo) if maximize else (values - lo) / (hi - lo)
    ref = float(teacher_value) if teacher_value else 1.0
    with np.errstate(divide="ignore", invalid="ignore"):
        return ref / values if maximize else values / ref


def objective_column(name: str) -> str:
    """The trials' column an objective is read from (the metric is stored as ``accuracy``)."""
    return name if name in COST_OBJECTIVES else "accuracy"


def normalised(df: pd.DataFrame, objectives: list[str], teacher: dict[str, Any],
                metric: dict[str, Any] | None = None) -> np.ndarray:
    cols = []
    for name in objectives:
        if name in COST_OBJECTIVES:
            cols.append(df[name].to_numpy(float) / float(teacher[name]))
        else:
            cols.append(metric_error(df["accuracy"].to_numpy(float), metric, teacher.get("accuracy")))
    return np.stack(cols, axis=1) if cols else np.zeros((len(df), 0))


def hypervolume(df: pd.DataFrame, objectives: list[str], teacher: dict[str, Any],
                metric: dict[str, Any] | None = None) -> float:
    """Hypervolume of ``df``'s feasible rows, objectives normalised (see ``HV_REFERENCE``); 0 if none count."""
    rows = df[df["feasible"]] if "feasible" in df else df
    if rows.empty:
        return 0.0
    points = normalised(rows, objectives, teacher, metric)
    ref = np.array([HV_REFERENCE[o] if o in COST_OBJECTIVES else metric_reference(metric) for o in objectives])
    points = points[np.all(points < ref, axis=1)]
    if len(points) == 0:
        return 0.0
    # Optuna's own WFG implementation (module is private in Optuna 5; it is what its hypervolume plots use).
    from optuna._hypervolume import compute_hypervolume

    return float(compute_hypervolume(points, ref))


# Study user attribute the deployability gate (autocompress.export.gate) writes per trial: finished trials are frozen.
DEPLOY_ATTR = "deploy:{}"
LOST_ATTR = "lost:{}"  # study attribute: why trial <number> was failed for a silent heartbeat
KINDS_ATTR = "kernel_kinds"  # study attribute: the kernel kinds its candidates were scored with (export uses them)
SHORT_LR_ATTR = "short_lr"  # study attribute: the short level's learning rate it chose (search.learning_rate)


def study_finetune(cfg: FinetuneConfig, study_attrs: dict[str, Any]) -> FinetuneConfig:
    """``cfg`` with ``short_lr: auto`` replaced by the rate the study chose (a study without a choice: ``lr``):
    what its trials trained with, so what export trains with."""
    if cfg.short_lr != "auto":
        return cfg
    chosen = (study_attrs.get(SHORT_LR_ATTR) or {}).get("chosen")
    return cfg.model_copy(update={"short_lr": float(chosen) if chosen is not None else cfg.lr})


def is_deployable(study_attrs: dict[str, Any], trial: optuna.trial.FrozenTrial) -> bool:
    """False when the deployability gate (or the trial itself) marked the trial not deployable."""
    record = study_attrs.get(DEPLOY_ATTR.format(trial.number)) or {}
    return trial.user_attrs.get("deployable", True) is not False and record.get("deployable", True) is not False


def deployable_front(study: optuna.Study, complete: list[optuna.trial.FrozenTrial]) -> set[int]:
    """Numbers of the Pareto-front trials (``study.best_trials``: feasible, non-dominated), computed without the
    trials marked not deployable, so members they were hiding come back on the front."""
    attrs = study.user_attrs
    keep = [t for t in complete if is_deployable(attrs, t)]
    if len(keep) == len(complete):
        return {t.number for t in study.best_trials}
    if not keep:
        return set()
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        sub = optuna.create_study(directions=study.directions)  # in memory; numbered 0.. in `keep` order
        sub.add_trials(keep)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return {keep[t.number].number for t in sub.best_trials}


@dataclass
class Front:
    """Completed trials of a study, which of them form the (feasible) Pareto front, and the teacher reference.

    ``trials`` has one row per completed trial with the columns in ``COLUMNS`` (accuracy is on validation, used
    for selection; test_accuracy is reported only). ``front`` is the subset on the Pareto front.
    """

    study_name: str
    objectives: dict[str, str]
    teacher: dict[str, Any]
    trials: pd.DataFrame
    failed: pd.DataFrame
    plans: dict[int, CompressionPlan] = field(default_factory=dict)
    fidelity_summary: dict[str, Any] = field(default_factory=dict)
    metric: dict[str, Any] = field(default_factory=lambda: dict(DEFAULT_METRIC))
    # layers no search group covers, and weighted modules no method handles (by type): what the study left alone
    unassigned: list[str] = field(default_factory=list)
    left_alone: dict[str, list[str]] = field(default_factory=dict)
    short_lr: dict[str, Any] = field(default_factory=dict)  # the short level's learning-rate range test, if run

    @property
    def metric_name(self) -> str:
        return self.metric["name"]

    @property
    def front(self) -> pd.DataFrame:
        if self.trials.empty:
            return self.trials.copy()
        on = self.trials["on_front"].astype(bool)
        return self.trials[on].sort_values("size_bytes").reset_index(drop=True)

    @property
    def hypervolume(self) -> float:
        return hypervolume(self.trials, list(self.objectives), self.teacher, self.metric)

    @classmethod
    def from_study(cls, study: optuna.Study) -> Front:
        objectives = study.user_attrs.get("objectives") or {
            n: "maximize" if d == optuna.study.StudyDirection.MAXIMIZE else "minimize"
            for n, d in zip(study.metric_names or [], study.directions, strict=False)}
        teacher = study.user_attrs.get("teacher", {})
        complete = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
        front_numbers = deployable_front(study, complete) if complete else set()
        rows, plans = [], {}
        for t in complete:
            ua = t.user_attrs
            constraints = ua.get("constraints", {})
            plan = CompressionPlan.from_dict(ua["plan"]) if "plan" in ua else CompressionPlan()
            plans[t.number] = plan
            rows.append({
                "trial": t.number, "accuracy": ua.get("accuracy"), "test_accuracy": ua.get("test_accuracy"),
                "latency_ms": ua.get("latency_ms"), "size_bytes": ua.get("size_bytes"),
                "compression_ratio": ua.get("compression_ratio"),
                "feasible": all(v <= 0 for v in constraints.values()),
                "on_front": t.number in front_numbers, "fidelity": ua.get("fidelity"), "cost_s": ua.get("cost_s"),
                "plan_summary": plan.summary(),
            })
        trials = pd.DataFrame(rows, columns=COLUMNS)
        metric = study.user_attrs.get(METRIC_ATTR) or dict(DEFAULT_METRIC)
        if metric["name"] != "accuracy":  # the metric under its own name too, for pick expressions
            trials[metric["name"]] = trials["accuracy"]
            trials[f"test_{metric['name']}"] = trials["test_accuracy"]
        lost = study.user_attrs  # reasons of trials failed for a silent heartbeat (LOST_ATTR)
        failed_rows = [{"trial": t.number, "state": t.state.name,
                        "reason": t.user_attrs.get("error") or lost.get(LOST_ATTR.format(t.number))
                        or t.user_attrs.get("stopped", "")}
                       for t in study.get_trials(deepcopy=False)
                       if t.state in (optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)]
        return cls(study_name=study.study_name, objectives=objectives, teacher=teacher, trials=trials,
                   failed=pd.DataFrame(failed_rows, columns=["trial", "state", "reason"]), plans=plans,
                   fidelity_summary=study.user_attrs.get("fidelity_summary", {}), metric=metric,
                   unassigned=study.user_attrs.get("unassigned_layers", []),
                   left_alone=study.user_attrs.get("left_alone", {}),
                   short_lr=study.user_attrs.get(SHORT_LR_ATTR) or {})

    def direction(self, column: str) -> str:
        """Whether a larger value of ``column`` is better (``maximize``) or worse."""
        if column in (self.metric_name, "accuracy", f"test_{self.metric_name}", "test_accuracy"):
            return self.metric.get("direction", "maximize")
        return self.objectives.get(column, "minimize" if column in COST_OBJECTIVES else "maximize")

    def pick(self, expr: str, *, by: str | None = None) -> pd.Series:
        """The front member satisfying ``expr`` that is best by ``by`` (default: the task's metric).

        ``expr`` is a pandas query over the front's columns, e.g. ``'latency_ms <= 2 and accuracy >= 0.97'`` (the
        metric is also a column under its own name, e.g. ``perplexity <= 30``).
        Raises :class:`AutocompressError` naming the closest members when nothing matches.
        """
        by = by or self.metric_name
        front = self.front
        if front.empty:
            raise AutocompressError(f"study {self.study_name!r} has no feasible front member to pick from")
        try:
            hits = front.query(expr, engine="python")
        except Exception as e:
            raise AutocompressError(f"cannot evaluate pick expression {expr!r}: {e}; columns are "
                                    f"{', '.join(front.columns)}") from None
        if by not in front.columns:
            raise AutocompressError(f"--by {by!r} is not a column; allowed: {', '.join(front.columns)}")
        ascending = self.direction(by) != "maximize"
        if hits.empty:
            closest = front.sort_values(by, ascending=ascending).head(3)
            shown = closest[["trial", "accuracy", "latency_ms", "size_bytes"]].rename(columns={"accuracy": self.metric_name})
            raise AutocompressError(f"no front member satisfies {expr!r}; closest by {by}:\n"
                                    + shown.to_string(index=False))
        return hits.sort_values(by, ascending=ascending).iloc[0]

    def table(self) -> str:
        """Human-readable front, smallest first."""
        f = self.front
        if f.empty:
            return "(the front is empty: no feasible completed trial)"
        shown = f[["trial", "accuracy", "test_accuracy", "latency_ms", "size_bytes", "compression_ratio",
                   "plan_summary"]].copy()
        shown["accuracy"] = shown["accuracy"].map(lambda v: f"{v:.4f}")
        shown["test_accuracy"] = shown["test_accuracy"].map(lambda v: "" if v is None or math.isnan(v) else f"{v:.4f}")
        shown["latency_ms"] = shown["latency_ms"].map(lambda v: f"{v:.4f}")
        shown["compression_ratio"] = shown["compression_ratio"].map(lambda v: f"{v:.1f}x")
        shown["plan_summary"] = shown["plan_summary"].map(lambda s: s if len(s) <= 70 else s[:67] + "...")
        name = self.metric_name
        return shown.rename(columns={"accuracy": name, "test_accuracy": f"test_{name}"}).to_string(index=False)


def study_names(storage: str) -> list[str]:
    if storage.startswith("sqlite:///"):
        path = storage.removeprefix("sqlite:///")
        if path and path != ":memory:" and not Path(path).is_file():
            raise StudyNotFoundError(f"no study database at {path} (run `autocompress search` first)")
    try:
        return [s.study_name for s in optuna.get_all_study_summaries(storage=storage)]
    except Exception as e:
        raise StudyNotFoundError(f"cannot open storage {storage!r}: {e}") from None


def load_front(storage: str, study_name: str | None = None) -> Front:
    """Read the front of ``study_name`` in ``storage`` (the only study there when no name is given)."""
    names = study_names(storage)
    if study_name is None:
        if len(names) != 1:
            raise StudyNotFoundError(f"storage {storage!r} holds {len(names)} studies ({names}); name one")
        study_name = names[0]
    if study_name not in names:
        raise StudyNotFoundError(f"no study {study_name!r} in {storage!r}; studies there: {names or 'none'}")
    return Front.from_study(optuna.load_study(study_name=study_name, storage=storage))
