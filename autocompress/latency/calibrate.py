"""Few-shot calibration of a latency profile to one study's model (``autocompress profile --calibrate CONFIG``).

A profile's kernel regressions come from micro-benchmarks and a few whole models of its own. A user's model adds
what those never showed: per-model overhead of its graph, the memory traffic between its kernels, how much of it
stays in cache. As few-shot device adaptation does in the literature (HELP, LitePred: about ten measurements on
the new target), this measures the study's teacher and a few candidates sampled from the study's own search space
end to end (materialized, lowered and timed as the search times them, relative to the reference workload) and
refits the profile's per-model ``offset`` and ``scale`` on them (scipy ``least_squares`` on relative error with
a soft-L1 loss, so one plan the profile gets badly wrong does not steer the fit), or the scale alone when that has
the lower leave-one-out error (ten points of a similar size cannot tell an offset from a scale). The kernel
coefficients are left as measured. The error after is in-sample; the leave-one-out error is reported beside it
and is the figure to trust.

The calibrated profile is written to ``<study dir>/latency_profile.json`` (or ``-o``); a study whose config sets
no ``latency.predictor`` and does not set ``measure: true`` uses it over this machine's default profile, and
records which profile and calibration it used in the study attribute ``latency_reference`` (``profile``).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import optuna
from scipy.optimize import least_squares

from ..plan import CompressionPlan
from .measure import measure_plan
from .predictor import LatencyPredictor
from .profile import LatencyProfile, ProfileError

log = logging.getLogger(__name__)

CALIBRATED_FILE = "latency_profile.json"


ROBUST_SCALE = 0.05  # relative errors beyond about 5 % count less and less (soft L1): one odd plan cannot steer


def fit_offset_scale(raw: np.ndarray, measured: np.ndarray, *, offset: bool = True) -> tuple[float, float]:
    """``offset, scale`` minimizing a robust (soft L1) loss of the relative error of ``offset + scale * raw``
    against ``measured`` (``offset=False``: scale only, at least 3 points for both); scale is kept positive."""
    w = 1.0 / measured
    scale0 = float(np.sum(raw * w) / np.sum((raw * w) ** 2))  # the least-squares scale: the starting point
    if not (offset and len(raw) >= 3):
        fit = least_squares(lambda p: (p[0] * raw - measured) * w, [scale0], bounds=([1e-9], [np.inf]),
                            loss="soft_l1", f_scale=ROBUST_SCALE)
        return 0.0, float(fit.x[0])
    fit = least_squares(lambda p: (p[0] + p[1] * raw - measured) * w, [0.0, scale0],
                        bounds=([-np.inf, 1e-9], [np.inf, np.inf]), loss="soft_l1", f_scale=ROBUST_SCALE)
    return float(fit.x[0]), float(fit.x[1])


def _leave_one_out(raw: np.ndarray, measured: np.ndarray, *, offset: bool) -> np.ndarray:
    """Relative error on each measurement of a fit made without it."""
    out = []
    for k in range(len(raw)):
        keep = np.arange(len(raw)) != k
        o, s = fit_offset_scale(raw[keep], measured[keep], offset=offset)
        out.append(_errors(o, s, raw[k:k + 1], measured[k:k + 1])[0])
    return np.array(out)


def _errors(offset: float, scale: float, raw: np.ndarray, measured: np.ndarray) -> np.ndarray:
    return (offset + scale * raw - measured) / measured


def _summary(err: np.ndarray) -> dict[str, float]:
    return {"rmspe": float(np.sqrt(np.mean(err ** 2))), "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
            "max_abs": float(np.max(np.abs(err)))}


def sample_plans(space, n: int, seed: int) -> list[CompressionPlan]:
    """The empty plan (the teacher) and ``n - 1`` random plans of ``space`` (an in-memory Optuna study with the
    random sampler does the sampling, so every knob's choices are exactly the search's)."""
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no "study created" / "trial pruned" lines
    try:
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
        plans, seen = [CompressionPlan()], {CompressionPlan().summary()}
        for _ in range(20 * n):
            if len(plans) >= n:
                break
            trial = study.ask()
            plan = space.suggest(trial)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)  # a sample, never scored
            if plan.summary() not in seen:
                seen.add(plan.summary())
                plans.append(plan)
    finally:
        optuna.logging.set_verbosity(verbosity)
    return plans


def calibrate_profile(profile: LatencyProfile, teacher, example_input, plans: list[CompressionPlan], *,
                      batch_size: int = 1, label: str | None = None, calibration=None, runs: int = 100,
                      progress: Callable[[str], None] | None = None) -> LatencyProfile:
    """A copy of ``profile`` with offset and scale refitted on end-to-end measurements of ``plans`` applied to
    ``teacher`` (see the module docstring); ``info["calibration"]`` holds the plans, measurements and errors."""
    say = progress or (lambda msg: None)
    if profile.reference_ms is None:
        raise ProfileError("the profile has no reference speed (made before speed normalization); re-run "
                           "`autocompress profile`")
    start = time.perf_counter()
    predictor = LatencyPredictor(teacher, example_input, profile, batch_size=batch_size)
    model = profile.model
    rows: list[dict[str, Any]] = []
    n = len(plans)
    for i, plan in enumerate(plans):
        try:
            lowered = predictor.lower(plan)
            raw = model.raw_lowered(lowered, where=f"calibration plan {i}")
            m = measure_plan(teacher, plan, example_input, backend=profile.backend, calibration=calibration,
                             threads=profile.threads, batch_size=batch_size, runs=runs, rounds=3,
                             kinds=predictor.kinds)  # the kernels it was predicted with
        except Exception as e:  # a plan the exporter or the predictor refuses: skip it, say so
            log.warning("calibration plan %d skipped: %s: %s", i, type(e).__name__, e)
            continue
        if m.normalized is None:
            raise ProfileError("the measurement was timed without the reference workload")
        rows.append({"plan": plan.to_dict(), "raw_ms": raw, "measured_ms": m.normalized * profile.reference_ms,
                     "absolute_ms": m.latency_ms, "reference_ms": m.reference_ms})
        say(f"calibration {len(rows)}/{n}: {'teacher' if i == 0 else plan.summary()[:60]}: measured "
            f"{rows[-1]['measured_ms']:.3f} ms, profile {model.offset + model.scale * raw:.3f} ms")
    if len(rows) < 2:
        raise ProfileError(f"only {len(rows)} calibration measurement(s) succeeded; need at least 2")
    raw_v = np.array([r["raw_ms"] for r in rows])
    meas = np.array([r["measured_ms"] for r in rows])
    # Two parameters from ten points are ill-conditioned when the points span a narrow range (an offset trades
    # against the scale): the form with the lower leave-one-out error is kept, scale alone on a tie.
    loo = {form: _leave_one_out(raw_v, meas, offset=form == "offset+scale") for form in ("scale", "offset+scale")}
    form = min(loo, key=lambda f: (float(np.sqrt(np.mean(loo[f] ** 2))), f != "scale"))
    offset, scale = fit_offset_scale(raw_v, meas, offset=form == "offset+scale")
    calibrated = copy.deepcopy(profile)
    calibrated.model.offset, calibrated.model.scale = offset, scale
    calibrated.path = None
    calibrated.info = {**profile.info, "calibration": {
        "base_profile": str(profile.path) if profile.path else None, "base_fingerprint_id": profile.fingerprint_id,
        "model": label, "n": len(rows), "form": form, "offset": offset, "scale": scale,
        "before": _summary(_errors(model.offset, model.scale, raw_v, meas)),
        "after_in_sample": _summary(_errors(offset, scale, raw_v, meas)),
        "after_leave_one_out": _summary(loo[form]),
        "seconds": round(time.perf_counter() - start, 1), "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "measurements": rows}}
    return calibrated


def calibrated_path(study_dir: Path) -> Path:
    """Where ``profile --calibrate`` writes a study's calibrated profile (and where the study looks for it)."""
    return Path(study_dir) / CALIBRATED_FILE


__all__ = ["CALIBRATED_FILE", "calibrate_profile", "calibrated_path", "fit_offset_scale", "sample_plans"]
