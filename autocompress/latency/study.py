"""How a study gets its latencies: predicted from a profile, or measured; and the end-of-study check.

The study config's ``latency`` section decides (see :class:`autocompress.config.LatencyConfig`):

- ``{predictor: PATH}``: predict every candidate from that profile (a relative path is looked up beside the
  config, then in the current directory); a profile made on another machine is used with a warning;
- ``{measure: true}``: measure every candidate (materialized, lowered, timed in ONNX Runtime, or in eager PyTorch
  with ``backend: torch``, which then also needs a ``--backend torch`` profile to predict);
- neither (default): predict when this machine has a profile (``autocompress profile`` writes it to
  ``$AUTOCOMPRESS_CACHE/profiles/<fingerprint>.json``, matched on CPU, cores, threads and runtime version),
  otherwise measure.

A plan needing a kernel kind the profile has no measurements of raises
:class:`~autocompress.latency.model.UnsupportedOpError` naming it, unless ``fallback: measure`` (then that
candidate is measured; the default mode falls back on its own).

**One speed per study.** The worker that starts a study times the reference workload
(:mod:`autocompress.runtime.reference`) and stores it as the study attribute ``latency_reference``; every worker
and resumed run reads it (:func:`study_reference`). Every latency of the study is in ms at that speed: a measured
one is its time relative to the reference (timed around each round) times the study's reference time, a predicted
one is the profile's prediction scaled from the profile's reference speed to the study's. A slow spell of the
machine while one candidate is measured therefore does not make it look slow. Studies made before this record
absolute ms (no ``latency_reference``) and keep doing so.

Trials record ``latency_source`` ("predicted"/"measured"), ``latency_predicted_ms`` and, when measured,
``latency_measured_ms`` (both when a measured trial also has a prediction), ``latency_absolute_ms`` (the
measurement's absolute median) and ``latency_reference_ms`` (the reference's time meanwhile: how the machine's
speed drifted over the study; timed for predicted trials too). When the study's latencies were
predicted, :func:`latency_check` measures every front member at the end and stores predicted vs measured as the
study attribute ``latency_check`` = ``{trial number: {predicted_ms, measured_ms, error}}`` (finished trials
cannot be changed), with a summary in ``latency_check_summary``.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..evaluate.candidate import Candidate, baked_teacher
from ..front import Front
from ..plan import CompressionPlan
from ..runtime import Backend, BackendError, Kernels, TimingSpec, backend_for
from ..runtime.reference import REFERENCE_VERSION, reference, reference_ms
from .analysis import AnalysisError
from .model import PREDICTED_KINDS, UnsupportedOpError
from .predictor import LatencyPredictor
from .profile import ProfileError, default_profile_path, load_profile

log = logging.getLogger(__name__)

CHECK_ATTR, CHECK_SUMMARY_ATTR = "latency_check", "latency_check_summary"
SPEED_ATTR = "latency_reference"


@dataclass
class LatencyMode:
    """What a study uses for latency. ``predictor`` may be set in measured mode too (to record both)."""

    source: str                      # "predicted" or "measured"
    reason: str
    predictor: Any = None            # LatencyPredictor | None
    profile_path: Path | None = None
    fallback: str = "error"
    warned: set[str] = field(default_factory=set)
    backend: Backend | None = None   # what candidates are lowered to and measured on
    reference_ms: float | None = None  # the study's reference speed (see the module docstring); None: absolute ms

    def at_reference(self, ms: float | None) -> None:
        """Put every latency of this mode at the speed where the reference takes ``ms`` (None: absolute ms)."""
        self.reference_ms = ms
        if self.predictor is not None:
            self.predictor.at_reference(ms)

    @property
    def kinds(self) -> frozenset[str]:
        """Kernel kinds candidates are scored with: the backend's, and only those the predictor scores when
        latency is predicted (so a predicted front member exports with the kernels it was predicted with)."""
        kinds = self.backend.kinds if self.backend is not None else frozenset({"float"})
        return kinds & self.predictor.kinds if self.source == "predicted" else kinds


_MODES: dict[tuple, LatencyMode] = {}


_CALIBRATED: dict[int, Path] = {}   # teacher id -> the study's calibrated profile (``profile --calibrate``)


def _key(task, cfg) -> tuple:
    paths = [default_profile_path(threads=cfg.threads, backend=cfg.backend), _CALIBRATED.get(id(task.model))]
    # a profile written since changes it
    return (id(task.model), cfg.model_dump_json(),
            *[(str(p), p.stat().st_mtime_ns if p.is_file() else None) for p in paths if p is not None])


def _resolve_path(raw: str, base: Path | None) -> Path:
    path = Path(raw).expanduser()
    if path.is_absolute():
        return path
    for folder in ([base] if base else []) + [Path.cwd()]:
        if (folder / path).is_file():
            return (folder / path).resolve()
    return (base / path) if base else path


def check_latency_backend(cfg, *, config_file: str | None = None) -> Backend:
    """The study's latency backend, or a :class:`~autocompress.errors.ConfigError` on ``latency.backend`` naming
    the known and installed backends and the extra to install."""
    try:
        return backend_for(cfg)
    except BackendError as e:
        raise ConfigError(str(e), file=config_file, field="latency.backend") from None


def resolve_mode(task, cfg, *, base: Path | None = None, config_file: str | None = None) -> LatencyMode:
    """The latency mode of a study (cached per teacher and latency config)."""
    key = _key(task, cfg)
    if key in _MODES:
        return _MODES[key]
    backend = check_latency_backend(cfg, config_file=config_file)
    mode = _build_mode(task, cfg, base=base, config_file=config_file)
    mode.backend = backend
    _MODES[key] = mode
    return mode


def _build_mode(task, cfg, *, base: Path | None, config_file: str | None) -> LatencyMode:
    fallback, raw, measure = cfg.fallback, cfg.predictor, cfg.measure
    calibrated = _CALIBRATED.get(id(task.model))
    if not raw and measure is not True and calibrated is not None and calibrated.is_file():
        # the study's own calibration (`autocompress profile --calibrate`) goes first, falling back on measurement
        # for a kernel it lacks as the machine's default profile does
        raw, fallback = str(calibrated), ("measure" if measure is None else fallback)
    if cfg.backend not in PREDICTED_KINDS:
        if raw or measure is False:
            raise ConfigError(f"latency backend {cfg.backend!r} has no latency predictor yet (predicted: "
                              f"{', '.join(PREDICTED_KINDS)}); leave `latency.predictor` and `latency.measure: false` "
                              "out to measure every candidate", file=config_file,
                              field="latency.predictor" if raw else "latency.measure")
        return LatencyMode("measured", f"no latency predictor for backend {cfg.backend}", fallback=fallback)
    if raw:
        path = _resolve_path(raw, base)
        try:
            profile = load_profile(path)
        except ProfileError as e:
            raise ConfigError(str(e), file=config_file, field="latency.predictor") from None
        if profile.backend != cfg.backend:
            raise ConfigError(f"the profile {path} was measured for backend {profile.backend!r} but the study's "
                              f"latency backend is {cfg.backend!r}; run `autocompress profile --backend "
                              f"{cfg.backend}`", file=config_file, field="latency.predictor")
        if profile.threads != cfg.threads:
            raise ConfigError(f"the profile {path} was measured at {profile.threads} thread(s) but the study times "
                              f"at {cfg.threads}; run `autocompress profile --threads {cfg.threads}`",
                              file=config_file, field="latency.predictor")
        if profile.batch_size != cfg.batch_size:
            log.warning("latency profile %s was measured at batch %d; predicting at batch %d extrapolates",
                        path, profile.batch_size, cfg.batch_size)
        try:
            predictor = _checked_predictor(task, profile, cfg)
        except AnalysisError as e:
            if fallback == "measure":
                log.warning("latency predictor unavailable (%s); measuring instead", e)
                return LatencyMode("measured", f"predictor unavailable: {e}", fallback=fallback)
            raise ConfigError(f"the latency predictor cannot follow this model: {e}. Use `latency: {{measure: "
                              f"true}}` or `fallback: measure`", file=config_file, field="latency.predictor") from None
        return LatencyMode("predicted", f"profile {path}", predictor, path, fallback)
    path = default_profile_path(threads=cfg.threads, backend=cfg.backend)
    if measure is False and not path.is_file():
        raise ConfigError(f"`latency.measure: false` needs a latency profile, but this machine has none at {path}; "
                          f"run `autocompress profile` or set `latency.predictor`", file=config_file,
                          field="latency.measure")
    if not path.is_file():
        return LatencyMode("measured", "no latency profile for this machine", fallback=fallback)
    try:
        profile = load_profile(path)
        predictor = _checked_predictor(task, profile, cfg, backend=cfg.backend)
    except (ProfileError, AnalysisError) as e:
        if measure is False:
            raise ConfigError(f"the latency predictor is unavailable: {e}", file=config_file,
                              field="latency.measure") from None
        log.warning("this machine's latency profile %s is not usable (%s); measuring latency instead", path, e)
        return LatencyMode("measured", f"profile unusable: {e}", fallback=fallback)
    if measure is True:  # measured, with predictions recorded beside the measurements
        return LatencyMode("measured", "latency.measure: true", predictor, path, fallback)
    return LatencyMode("predicted", f"profile {path}", predictor, path, "measure" if measure is None else fallback)


def _checked_predictor(task, profile, cfg, *, backend: str | None = None) -> LatencyPredictor:
    """The study's predictor, its teacher analysed and predicted once: a model the analysis cannot follow raises
    :class:`AnalysisError` here, before any trial, whatever went wrong (the study then measures, or says why not)."""
    try:
        predictor = LatencyPredictor(task.model, task.example_input, profile, batch_size=cfg.batch_size,
                                     backend=backend)
        predictor.analysis.variant(1.0)
        try:
            predictor.predict(CompressionPlan())
        except UnsupportedOpError:
            pass  # a kernel the profile lacks: each trial's prediction says so (or measures, with fallback: measure)
    except (AnalysisError, ProfileError):
        raise
    except Exception as e:  # an unforeseen model structure: the study measures instead of failing every trial
        raise AnalysisError(f"the analysis of the teacher failed ({type(e).__name__}: {e})") from e
    return predictor


def prepare(loaded, task) -> LatencyMode:
    """Load the study's latency profile once (before any trial) and say which mode the study uses: the study's
    calibrated profile (``<study dir>/latency_profile.json``) when there is one and the config names none."""
    from .calibrate import calibrated_path

    _CALIBRATED[id(task.model)] = calibrated_path(loaded.study_dir)
    mode = resolve_mode(task, loaded.config.latency, base=loaded.config_path.parent,
                        config_file=str(loaded.config_path))
    log.info("latency: %s (%s)", mode.source, mode.reason)
    return mode


def study_reference(study, mode: LatencyMode, cfg) -> dict[str, Any] | None:
    """The study's reference speed (see the module docstring): measured and stored by the worker that starts the
    study (call it under the study lock, before the teacher is measured), read by every other one; ``mode`` is set
    to it. None for a study made before speed normalization (its latencies stay absolute)."""
    record = study.user_attrs.get(SPEED_ATTR)
    if record is None and "teacher" in study.user_attrs:
        mode.at_reference(None)
        return None
    if record is None:
        profile = mode.predictor.profile if mode.predictor is not None else None
        record = {"reference_ms": reference_ms(cfg.threads), "version": REFERENCE_VERSION, "threads": cfg.threads,
                  "profile": None if profile is None else {
                      "path": str(mode.profile_path), "fingerprint_id": profile.fingerprint_id,
                      "reference_ms": profile.reference_ms,
                      "calibration": {k: v for k, v in (profile.info.get("calibration") or {}).items()
                                      if k != "measurements"} or None}}
        study.set_user_attr(SPEED_ATTR, record)
    if record.get("version") != REFERENCE_VERSION:
        log.warning("the study's reference speed was timed with reference workload version %s (this autocompress "
                    "has %s): its latencies are kept in absolute ms", record.get("version"), REFERENCE_VERSION)
        mode.at_reference(None)
        return None
    mode.at_reference(float(record["reference_ms"]))
    return record


@dataclass
class CandidateLatency:
    """A candidate's latency as the study scores it (ms at the study's speed), with the kernels it was scored with;
    ``absolute_ms`` and ``reference_ms``: the measurement's absolute median and the reference's time meanwhile."""

    latency_ms: float
    p10_ms: float
    p90_ms: float
    source: str                      # "predicted" or "measured"
    backend: str
    kernels: Kernels
    absolute_ms: float | None = None
    reference_ms: float | None = None


def scored_ms(timing, mode: LatencyMode) -> float:
    """A measurement as the study scores it: at the study's reference speed (absolute without one)."""
    return timing.at_speed(mode.reference_ms)


def kernels_of(res, kinds: frozenset[str]) -> Kernels:
    """The kernels the predictor scored for a resolved plan (int8 / int4 where it lowers them, float elsewhere)."""
    out = Kernels()
    for layer, (first, second) in res.int8.items():
        mods = [f"{layer}.0", f"{layer}.1"] if layer in res.rank else [layer]
        nbits = res.int4.get(layer, (False, False))
        for mod, int8, int4 in zip(mods, (first, second), nbits, strict=False):
            out.add(mod, "int8" if int8 and "int8" in kinds else "int4" if int4 and "int4" in kinds else "float")
    return out


def predicted_latency(task, plan, cfg) -> CandidateLatency | None:
    """``plan``'s latency predicted from the study's profile, or None when the study measures it."""
    mode = resolve_mode(task, cfg)
    if mode.source != "predicted":
        return None
    try:
        ms, res = mode.predictor.predict_resolved(plan)
    except Exception as e:  # unsupported kernels, a cut the analysis cannot follow, or what nobody foresaw
        if mode.fallback != "measure":
            raise
        kind = type(e).__name__
        if kind not in mode.warned:
            mode.warned.add(kind)
            log.warning("latency prediction unavailable for a candidate (%s: %s); measuring it instead", kind, e)
            log.debug("the prediction's failure", exc_info=e)
        return None
    return CandidateLatency(latency_ms=ms, p10_ms=ms, p90_ms=ms, source="predicted", backend=cfg.backend,
                            kernels=kernels_of(res, mode.kinds))


def candidate_latency(cand: Candidate, cfg) -> CandidateLatency:
    """The latency a study scores ``cand`` with: predicted from its profile, or measured on its backend (the
    kernels :func:`study_kinds` allows, lowered and timed by :mod:`autocompress.runtime`)."""
    predicted = predicted_latency(cand.task, cand.plan, cfg)
    if predicted is not None:
        return predicted
    mode = resolve_mode(cand.task, cfg)
    timing, kernels = cand.measure_latency(mode.backend, TimingSpec.of(cfg), kinds=mode.kinds)
    ms = scored_ms(timing, mode)
    scale = ms / timing.latency_ms if timing.latency_ms > 0 else 1.0
    return CandidateLatency(latency_ms=ms, p10_ms=timing.p10_ms * scale, p90_ms=timing.p90_ms * scale,
                            source="measured", backend=cfg.backend, kernels=kernels,
                            absolute_ms=timing.latency_ms, reference_ms=timing.reference_ms)


def measure_model(task, cfg) -> float:
    """The teacher's latency (ms) measured on the study's backend, as candidates are (at the study's speed)."""
    timing, _ = backend_for(cfg).measure(baked_teacher(task), task.example_input, [], TimingSpec.of(cfg))
    return scored_ms(timing, resolve_mode(task, cfg))


def latency_attrs(task, plan, lat: CandidateLatency, cfg) -> dict[str, Any]:
    """Trial user attributes saying where ``lat`` came from (and the prediction beside a measurement), and the
    kernels it was scored with (``kernels``: what export lowers)."""
    out: dict[str, Any] = {"kernels": lat.kernels.to_dict(), "latency_backend": lat.backend}
    if lat.source == "predicted":
        return out | {"latency_source": "predicted", "latency_predicted_ms": lat.latency_ms,
                      "latency_reference_ms": reference(cfg.threads).block()}
    out |= {"latency_source": "measured", "latency_measured_ms": lat.latency_ms,
            "latency_absolute_ms": lat.absolute_ms, "latency_reference_ms": lat.reference_ms}
    mode = resolve_mode(task, cfg)
    if mode.predictor is not None:
        try:
            out["latency_predicted_ms"] = mode.predictor.predict(plan)
        except Exception as e:  # a prediction beside a measurement is informative only
            log.debug("no prediction beside the measurement: %s", e)
    return out


def latency_check(study, task, loaded) -> None:
    """Post-study step: measure every front member whose latency was predicted (lowered with the kernels it was
    predicted with, as export ships it); store predicted vs measured."""
    cfg = loaded.config
    mode = resolve_mode(task, cfg.latency, base=loaded.config_path.parent, config_file=str(loaded.config_path))
    if mode.source != "predicted":
        return
    record: dict[str, Any] = dict(study.user_attrs.get(CHECK_ATTR, {}))
    front = Front.from_study(study)
    trials = {t.number: t for t in study.get_trials(deepcopy=False)}
    start = time.perf_counter()
    for number in [int(n) for n in front.front["trial"]]:
        if str(number) in record:
            continue
        trial = trials[number]
        if trial.user_attrs.get("latency_source") != "predicted":
            continue
        predicted = float(trial.user_attrs.get("latency_predicted_ms", trial.user_attrs["latency_ms"]))
        try:
            cand = Candidate(task, front.plans[number], cfg.finetune, seed=cfg.seed + number, warm_student=False)
            measured = scored_ms(cand.measure_latency(mode.backend, TimingSpec.of(cfg.latency),
                                                      kinds=mode.kinds)[0], mode)
        except Exception as e:  # the deployability gate reports unexportable members; keep going
            record[str(number)] = {"predicted_ms": predicted, "error_message": f"{type(e).__name__}: {e}"[:500]}
            continue
        record[str(number)] = {"predicted_ms": predicted, "measured_ms": measured,
                               "error": (predicted - measured) / measured}
        study.set_user_attr(CHECK_ATTR, record)
    study.set_user_attr(CHECK_ATTR, record)
    errs = [v["error"] for v in record.values() if "error" in v]
    if errs:
        summary = {"n": len(errs), "rmspe": math.sqrt(sum(e * e for e in errs) / len(errs)),
                   "max_abs_error": max(abs(e) for e in errs),
                   "within_10pct": sum(abs(e) <= 0.10 for e in errs) / len(errs),
                   "profile": str(mode.profile_path), "seconds": round(time.perf_counter() - start, 2)}
        study.set_user_attr(CHECK_SUMMARY_ATTR, summary)
        if summary["rmspe"] > 0.10:
            log.warning("predicted latencies of the front are off by %.0f %% (RMS) against measurement; consider "
                        "re-running `autocompress profile` or `latency: {measure: true}`", 100 * summary["rmspe"])
