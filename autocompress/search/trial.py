"""One trial of a study: sample a plan, climb the fidelity ladder, measure, record everything on the trial.

Backends (the local Optuna loop, Ray workers) all call :class:`TrialRunner`, so every trial carries the same
user attributes whichever backend ran it:

plan, rung:<level> ([accuracy, latency_ms, size_bytes] at each rung reached), fidelity (level of the reported
accuracy), accuracy / test_accuracy (the task's metric on validation / test, whatever its name: the study attribute
``metric`` says its name and direction), latency_ms (+ p10/p90, int8_nodes, latency_source, latency_backend and kernels: the
int8 / int4 / float kernel of each module it was scored with, which export lowers), size_bytes, compression_ratio, skipped,
seconds (per phase), cost_s, constraints; self-check trials add proxy_accuracy, full_accuracy and
full_test_accuracy (accuracy and test_accuracy stay at the proxy level); stopped trials
(successive halving) add stopped; failed trials add error.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import optuna

from ..config import LoadedStudy
from ..evaluate.candidate import Candidate
from ..front import objective_column
from ..latency.study import candidate_latency, latency_attrs
from ..space import SearchSpace
from ..tasks import Task
from .fidelity import promote, rungs, self_check_numbers, steps_for
from .objective import TeacherReference


def constraint_values(loaded: LoadedStudy, metrics: dict[str, float]) -> dict[str, float]:
    """Optuna constraint values (<= 0 is feasible) for the config's constraints (``metrics["accuracy"]``: the
    task's metric, whatever its name)."""
    c = loaded.config.constraints
    out = {}
    if c.min_accuracy is not None:
        out["min_accuracy"] = c.min_accuracy - metrics["accuracy"]
    if c.min_metric is not None:
        out["min_metric"] = c.min_metric - metrics["accuracy"]
    if c.max_metric is not None:
        out["max_metric"] = metrics["accuracy"] - c.max_metric
    if c.max_latency_ms is not None:
        out["max_latency_ms"] = metrics["latency_ms"] - c.max_latency_ms
    if c.max_size_bytes is not None:
        out["max_size_bytes"] = float(metrics["size_bytes"] - c.max_size_bytes)
    return out


class TrialRunner:
    """The study's objective: ``runner(trial) -> tuple of objective values`` (raises TrialPruned when stopped)."""

    def __init__(self, *, task: Task, space: SearchSpace, loaded: LoadedStudy, teacher: TeacherReference,
                 horizon: int | None = None, objectives: dict[str, str] | None = None) -> None:
        self.task, self.space, self.loaded, self.teacher = task, space, loaded, teacher
        cfg = loaded.config
        objectives = objectives or cfg.objectives_for(task.metric.name, task.metric.direction)
        self.objectives = list(objectives)
        # minimisation-space sign of each objective's column (rung points are compared there)
        self.signs = {objective_column(o): (-1.0 if d == "maximize" else 1.0) for o, d in objectives.items()}
        self.ladder = rungs(cfg.fidelity)
        self.check = self_check_numbers(cfg.seed, horizon or cfg.n_trials or 100, cfg.fidelity.self_check)
        if cfg.fidelity.proxy == "full":
            self.check = set()  # the proxy already is full fine-tuning

    def _rung_points(self, trial: optuna.Trial, level: str) -> tuple[np.ndarray, int]:
        """Minimisation-space points of every trial scored at ``level``, and this trial's row."""
        rows, index = [], -1
        key = f"rung:{level}"
        for t in trial.study.get_trials(deepcopy=False):
            values = t.user_attrs.get(key)
            if values is None:
                continue
            if t.number == trial.number:
                index = len(rows)
            metrics = dict(zip(("accuracy", "latency_ms", "size_bytes"), values, strict=True))
            rows.append([sign * metrics[column] for column, sign in self.signs.items()])
        return np.asarray(rows, dtype=float), index

    def __call__(self, trial: optuna.Trial) -> tuple[float, ...]:
        t0 = time.perf_counter()
        cfg = self.loaded.config
        try:
            plan = self.space.suggest(trial)
            trial.set_user_attr("plan", plan.to_dict())
            cand = Candidate(self.task, plan, cfg.finetune, seed=cfg.seed + trial.number)
            lat = candidate_latency(cand, cfg.latency)
            size = cand.size_bytes()
            trial.set_user_attr("latency_ms", lat.latency_ms)
            trial.set_user_attr("latency_p10_ms", lat.p10_ms)
            trial.set_user_attr("latency_p90_ms", lat.p90_ms)
            trial.set_user_attr("int8_nodes", len(lat.kernels.int8))
            for key, value in latency_attrs(self.task, plan, lat, cfg.latency).items():
                trial.set_user_attr(key, value)
            trial.set_user_attr("skipped", cand.cm.skipped)
            checking = trial.number in self.check
            accuracy = math.nan
            for i, level in enumerate(self.ladder):
                cand.train_to(steps_for(level, cfg.finetune))
                accuracy = cand.accuracy("val")
                trial.set_user_attr(f"rung:{level}", [accuracy, lat.latency_ms, size])
                if i == len(self.ladder) - 1 or checking:
                    continue
                points, index = self._rung_points(trial, level)
                if not promote(points, index, cfg.fidelity.eta):
                    self._finish(trial, t0, cand, level=level, accuracy=accuracy, size=size)
                    reason = f"stopped at {level}: not in the best 1/{cfg.fidelity.eta} of {len(points)} scored there"
                    trial.set_user_attr("stopped", reason)
                    raise optuna.TrialPruned(reason)
            proxy_level = self.ladder[-1]
            accuracy = trial.user_attrs[f"rung:{proxy_level}"][0] if checking else accuracy
            size = cand.size_bytes()  # trained weights may round to zero differently than at rung 0
            # validation and test at the same (proxy) level; a self-check adds the full-fidelity pair beside
            test_accuracy = cand.accuracy("test") if checking else None
            if checking:
                cand.train_to(steps_for("full", cfg.finetune))
                trial.set_user_attr("proxy_accuracy", accuracy)
                trial.set_user_attr("full_accuracy", cand.accuracy("val"))
                trial.set_user_attr("full_test_accuracy", cand.accuracy("test"))
                trial.set_user_attr("self_check", True)
            metrics = {"accuracy": accuracy, "latency_ms": lat.latency_ms, "size_bytes": size}
            self._finish(trial, t0, cand, level=proxy_level, accuracy=accuracy, size=size,
                         test_accuracy=test_accuracy)
            constraints = constraint_values(self.loaded, metrics)
            trial.set_user_attr("constraints", constraints)
            for key, value in constraints.items():
                trial.set_constraint(key, value)
            values = tuple(float(metrics[objective_column(o)]) for o in self.objectives)
            if not all(math.isfinite(v) for v in values):
                raise ValueError(f"non-finite objective values {dict(zip(self.objectives, values, strict=True))}")
            return values
        except optuna.TrialPruned:
            raise
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {e}")
            trial.set_user_attr("cost_s", round(time.perf_counter() - t0, 3))
            raise

    def _finish(self, trial: optuna.Trial, t0: float, cand: Candidate, *, level: str, accuracy: float,
                size: int, test_accuracy: float | None = None) -> None:
        if test_accuracy is None and level == self.ladder[-1]:
            test_accuracy = cand.accuracy("test")
        attrs: dict[str, Any] = {
            "fidelity": level, "accuracy": accuracy, "size_bytes": size,
            "compression_ratio": self.teacher.size_bytes / size,
            "test_accuracy": test_accuracy,
            "seconds": {k: round(v, 3) for k, v in cand.seconds.items()},
            "cost_s": round(time.perf_counter() - t0, 3),
        }
        for key, value in attrs.items():
            trial.set_user_attr(key, value)
