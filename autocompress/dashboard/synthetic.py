"""Synthetic studies for demos, tests and benchmarks of the dashboard.

The trials look like those :func:`autocompress.search.driver.run_study` stores (plan dicts, accuracy, latency,
size, constraints, cost, test accuracy) for a LeNet-5-shaped model, with metrics derived from the plan plus
noise, so fronts, heatmaps and hypervolume behave like a real study's. Nothing is trained or measured.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import optuna

from ..plan import CompressionPlan, LayerPlan, StudentPlan

LAYERS = [
    {"name": "features.0", "type": "Conv2d", "out_channels": 6, "is_output": False, "weights": 156},
    {"name": "features.3", "type": "Conv2d", "out_channels": 16, "is_output": False, "weights": 2416},
    {"name": "classifier.1", "type": "Linear", "out_channels": 120, "is_output": False, "weights": 48120},
    {"name": "classifier.3", "type": "Linear", "out_channels": 84, "is_output": False, "weights": 10164},
    {"name": "classifier.5", "type": "Linear", "out_channels": 10, "is_output": True, "weights": 850},
]
TEACHER = {"accuracy": 0.986, "test_accuracy": 0.968, "latency_ms": 0.0344, "size_bytes": 246824}
OBJECTIVES = {"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"}


def _plan(rng: np.random.Generator) -> CompressionPlan:
    layers = {}
    for info in LAYERS:
        layers[info["name"]] = LayerPlan(
            sparsity=float(rng.choice([0.0, 0.5, 0.75, 0.9])),
            weight_bits=int(rng.choice([2, 4, 8, 32])),
            activation_bits=int(rng.choice([8, 32])),
            channel_keep=1.0 if info["is_output"] else float(rng.choice([0.5, 0.75, 1.0])),
            rank_ratio=1.0 if info["type"] != "Linear" else float(rng.choice([0.25, 0.5, 1.0])),
        )
    return CompressionPlan(layers=layers, student=StudentPlan(width=float(rng.choice([0.5, 0.75, 1.0]))))


def _metrics(plan: CompressionPlan, rng: np.random.Generator) -> dict[str, float]:
    size, damage, work = 0.0, 0.0, 0.0
    for info in LAYERS:
        lp = plan.layer(info["name"])
        keep = lp.channel_keep * (plan.student.width if not info["is_output"] else 1.0)
        n = info["weights"] * keep * min(1.0, 2 * lp.rank_ratio)
        size += n * (1 - lp.sparsity) * lp.weight_bits / 8 + (n / 8 if lp.sparsity else 0) + 4 * info["out_channels"]
        fragile = 3.0 if info["is_output"] or info["type"] == "Conv2d" else 1.0
        damage += fragile * (lp.sparsity ** 3 * 0.05 + (8 / lp.weight_bits) ** 2 * 0.002 * (lp.weight_bits < 8)
                             + (1 - keep) ** 2 * 0.04 + (1 - lp.rank_ratio) ** 2 * 0.02)
        work += n * (1.15 if lp.weight_bits <= 8 and lp.activation_bits <= 8 else 1.0)
    accuracy = max(0.05, min(1.0, TEACHER["accuracy"] - 0.3 * damage ** 2 + rng.normal(0, 0.003)))
    latency = TEACHER["latency_ms"] * (0.35 + 0.65 * work / sum(i["weights"] for i in LAYERS)) * rng.lognormal(0, 0.05)
    return {"accuracy": accuracy, "latency_ms": latency, "size_bytes": int(size)}


def make_synthetic_study(storage: str | optuna.storages.BaseStorage, n_trials: int, *, seed: int = 0,
                         study_name: str = "synthetic", min_accuracy: float | None = 0.95,
                         failed_share: float = 0.02, extras: bool = True, batch: int = 500) -> optuna.Study:
    """Create ``study_name`` in ``storage`` holding ``n_trials`` trials (about ``failed_share`` of them failed).

    ``extras`` also records a fidelity level, predicted vs measured latency and proxy vs full accuracy on the
    trials, as a multi-fidelity search would.
    """
    rng = np.random.default_rng(seed)
    study = optuna.create_study(study_name=study_name, storage=storage, directions=list(OBJECTIVES.values()))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.set_metric_names(list(OBJECTIVES))
    study.set_user_attr("objectives", OBJECTIVES)
    study.set_user_attr("teacher", TEACHER)
    study.set_user_attr("task", "synthetic-lenet5")
    study.set_user_attr("layers", [{k: v for k, v in i.items() if k != "weights"} for i in LAYERS])
    pending: list[optuna.trial.FrozenTrial] = []
    for _ in range(n_trials):
        plan = _plan(rng)
        m = _metrics(plan, rng)
        cost = float(rng.lognormal(math.log(6.0), 0.25))
        attrs: dict[str, Any] = {"plan": plan.to_dict(), "cost_s": round(cost, 3), "skipped": {},
                                 "seconds": {"apply": 0.005, "finetune": round(cost - 0.1, 3), "evaluate": 0.07,
                                             "latency": 0.03}}
        if rng.random() < failed_share:
            attrs["error"] = "RuntimeError: simulated failure"
            pending.append(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=attrs))
        else:
            constraints = {"min_accuracy": min_accuracy - m["accuracy"]} if min_accuracy is not None else {}
            attrs.update(m, test_accuracy=m["accuracy"] - abs(rng.normal(0.01, 0.005)),
                         compression_ratio=TEACHER["size_bytes"] / m["size_bytes"], constraints=constraints,
                         int8_nodes=0, latency_p10_ms=m["latency_ms"] * 0.9, latency_p90_ms=m["latency_ms"] * 1.1)
            if extras:
                fidelity = 1.0 if rng.random() < 0.3 else 0.25
                attrs["fidelity"] = fidelity
                attrs["latency_predicted_ms"] = m["latency_ms"] * float(rng.lognormal(0, 0.07))
                attrs["latency_measured_ms"] = m["latency_ms"]
                attrs["proxy_accuracy"] = max(0.0, m["accuracy"] - abs(rng.normal(0.02, 0.015)))
                if fidelity == 1.0:
                    attrs["full_accuracy"] = m["accuracy"]
            pending.append(optuna.trial.create_trial(
                values=[m["accuracy"], m["latency_ms"], m["size_bytes"]], user_attrs=attrs,
                constraints=constraints or None))
        if len(pending) >= batch:
            study.add_trials(pending)
            pending = []
    if pending:
        study.add_trials(pending)
    return study
