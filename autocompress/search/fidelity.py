"""The fidelity ladder: cheap accuracy first, expensive accuracy only for promising candidates.

Levels (cumulative fine-tuning of the same candidate):

- ``zero-shot``: the plan applied (to its student size distilled once beforehand, when it has one: see
  :func:`autocompress.evaluate.candidate.distilled_student`), BatchNorm statistics and activation ranges
  recalibrated, no training
- ``short``:     ``finetune.steps`` mini-batches of distillation
- ``full``:      ``finetune.full_steps`` mini-batches (to convergence; what export uses)

Multi-objective successive halving (Optuna's pruners handle one objective only): a candidate is scored at each rung
of the ladder in turn; it goes on to the next rung only if, among every candidate scored at this rung so far, it is
in the best ``1/eta`` by non-dominated sorting of (accuracy at this rung, latency, size), crowding distance
breaking ties within a rank. Decisions are asynchronous (as in ASHA), so they work with any number of workers.
"""

from __future__ import annotations

import math
import random

import numpy as np
from scipy import stats

from ..config import FidelityConfig, FinetuneConfig

LEVELS = ("zero-shot", "short", "full")


def steps_for(level: str, finetune: FinetuneConfig) -> int:
    """Cumulative fine-tuning steps of a level."""
    return {"zero-shot": 0, "short": finetune.steps, "full": finetune.full_steps}[level]


def rungs(fidelity: FidelityConfig) -> list[str]:
    """The levels a candidate climbs, ending at the proxy level (just the proxy when promotion is off)."""
    top = LEVELS.index(fidelity.proxy)
    return list(LEVELS[: top + 1]) if fidelity.promotion else [fidelity.proxy]


def crowding_distance(points: np.ndarray) -> np.ndarray:
    """NSGA-II crowding distance of each row (minimisation space); boundary points get infinity.

    Written here because Optuna's version takes FrozenTrials, and rung values are not trial values.
    """
    n, m = points.shape
    dist = np.zeros(n)
    if n <= 2:
        return np.full(n, np.inf)
    for j in range(m):
        order = np.argsort(points[:, j], kind="stable")
        col = points[order, j]
        span = col[-1] - col[0]
        dist[order[0]] = dist[order[-1]] = np.inf
        if span > 0:
            dist[order[1:-1]] += (col[2:] - col[:-2]) / span
    return dist


def promotion_order(points: np.ndarray) -> np.ndarray:
    """Indices of ``points`` (rows, minimisation) from best to worst: non-domination rank, then crowding."""
    # Optuna's fast non-dominated sort (private module; the same one its NSGA-II sampler uses).
    from optuna.study._multi_objective import _fast_non_domination_rank

    ranks = _fast_non_domination_rank(points)
    crowd = crowding_distance(points)
    return np.lexsort((-crowd, ranks))


def promote(points: np.ndarray, index: int, eta: int) -> bool:
    """Whether row ``index`` of ``points`` is in the best ``ceil(n / eta)`` rows.

    Until ``eta`` candidates have been scored at a rung there is too little to compare with, and every one is
    promoted (the first candidates of a study always reach the top rung).
    """
    n = len(points)
    if n < eta:
        return True
    keep = math.ceil(n / eta)
    return int(np.where(promotion_order(points) == index)[0][0]) < keep


def self_check_numbers(seed: int, horizon: int, k: int) -> set[int]:
    """Trial numbers (among the first ``horizon``) also evaluated at full fidelity: a seeded random sample."""
    if k <= 0 or horizon <= 0:
        return set()
    return set(random.Random(seed).sample(range(horizon), min(k, horizon)))


def rank_agreement(proxy: list[float], full: list[float]) -> dict[str, float | int | None]:
    """Kendall tau and Spearman rho between proxy and full accuracies (None with fewer than 3 pairs)."""
    n = len(proxy)
    if n < 3 or len(set(full)) < 2 or len(set(proxy)) < 2:
        return {"n": n, "kendall_tau": None, "spearman_rho": None}
    tau = stats.kendalltau(proxy, full).statistic
    rho = stats.spearmanr(proxy, full).statistic
    return {"n": n, "kendall_tau": float(tau), "spearman_rho": float(rho)}


def summarize_fidelity(study) -> dict:
    """Study-level record: trials per fidelity level, evaluation cost spent and saved, proxy-vs-full agreement.

    Saved cost is estimated as, for each stopped trial, the mean cost of the trials that reached the top rung
    (self-check trials excluded) minus what the stopped trial cost.
    """
    import optuna

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    stopped = [t for t in trials if t.state == optuna.trial.TrialState.PRUNED]
    plain = [t.user_attrs["cost_s"] for t in complete if "cost_s" in t.user_attrs and not t.user_attrs.get("self_check")]
    mean_top = float(np.mean(plain)) if plain else None
    saved = None
    if mean_top is not None:
        saved = float(sum(max(0.0, mean_top - t.user_attrs.get("cost_s", 0.0)) for t in stopped))
    levels: dict[str, int] = {}
    for t in complete + stopped:
        level = t.user_attrs.get("fidelity")
        if level:
            levels[level] = levels.get(level, 0) + 1
    checked = [t for t in complete if "full_accuracy" in t.user_attrs]
    agreement = rank_agreement([t.user_attrs["proxy_accuracy"] for t in checked],
                               [t.user_attrs["full_accuracy"] for t in checked])
    agreement["trials"] = [t.number for t in checked]
    return {
        "trials_by_level": levels,
        "completed": len(complete),
        "stopped": len(stopped),
        "cost_s_total": float(sum(t.user_attrs.get("cost_s", 0.0) for t in trials)),
        "cost_s_saved_estimate": saved,
        "self_check": agreement,
    }
