"""Run a study's trials on a Ray cluster with Ray Tune, writing to the same Optuna storage as the local driver.

``autocompress search STUDY --backend ray [--address auto|HOST:PORT] [--trial-cpus N]``

How it works: the driver (this process) prepares the study exactly as the local driver does (teacher measured,
warm-start plans queued), then asks Ray Tune for one Tune trial per missing study trial, each reserving
``trial_cpus`` CPUs, so the cluster's resources set how many run at once. A Ray worker process prepares the study
once (:func:`autocompress.search.study.prepare_study`, kept for the Tune trials it runs next) and each Tune trial
runs exactly one study trial with the local executor's loop (:func:`autocompress.search.local.run_trials`): it
samples with the study's sampler from the shared storage, scores the plan with the same
:class:`~autocompress.search.trial.TrialRunner` and stores the trial with the same user attributes. ``front``, ``dashboard`` and ``export`` therefore work the same whichever backend ran
the study; Tune's own results (under ``<study folder>/ray/``) are only a log.

Faults: a lost worker node kills its Tune trials; Tune runs them again (``max_failures``) while the study trial
that was running there is failed with its reason (its process is gone, or its heartbeat stopped) and queued
again once, as with the local driver. A trial that raises, returns NaN, runs out of memory or exceeds
``trial_timeout_s`` is recorded failed and the study goes on.

Storage: every node must reach the study's storage. Use a PostgreSQL URL (``--storage postgresql://...``) for a
multi-machine cluster; the default SQLite file works only when every Ray worker runs on this machine. The
autocompress package and a user task's module must be importable on every node.

CPUs and latency: Ray gives each trial ``trial_cpus`` CPUs (default: the config's ``latency.threads``, usually 1)
and sets its thread count to match; latency is measured with ``latency.threads`` threads inside that
reservation. Give ``--trial-cpus 2`` to leave a measurement a core to itself, at half the concurrency.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import optuna
import torch
from ray import tune

from ..config import LoadedStudy
from ..errors import AutocompressError, ConfigError
from . import workers
from .local import run_trials
from .study import PreparedStudy, prepare_study

log = logging.getLogger(__name__)

MAX_FAILURES = 3  # Tune runs a Tune trial again this often when its worker or node dies
ROUNDS = 3  # Tune runs at most this many rounds to fill in trials lost to faults


def _check_address(address: str | None) -> None:
    if address in (None, "auto"):
        return
    assert address is not None
    bare = address.removeprefix("ray://")
    host, _, port = bare.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError("must be `auto`, HOST:PORT (a Ray head node's GCS port, usually 6379) or "
                          "ray://HOST:PORT (Ray Client)", field="--address", value=address)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=5).close()
    except OSError as e:
        raise ConfigError(f"cannot reach a Ray cluster there ({e.strerror or e}). Start one with "
                          "`ray start --head` on the head node, or leave --address out to start Ray on this machine",
                          field="--address", value=address) from None


def _pythonpath() -> str:
    """This process's import path (minus the interpreter's own), for workers to import a user task's module."""
    own = (sys.base_prefix, sys.prefix)
    paths = [os.path.abspath(p or ".") for p in sys.path
             if "site-packages" not in p and "dist-packages" not in p and not p.startswith(own)]
    extra = os.environ.get("PYTHONPATH", "")
    return os.pathsep.join(dict.fromkeys([*paths, *([extra] if extra else [])]))


@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


class RayExecutor:
    """Trials on a Ray cluster (started on this machine when no address is given), through Ray Tune."""

    name = "ray"

    def __init__(self, *, trial_cpus: int, started: bool, cluster_cpus: float, nodes: int,
                 trial_gpus: float = 0.0) -> None:
        self.trial_cpus, self.started, self.cluster_cpus, self.nodes = trial_cpus, started, cluster_cpus, nodes
        self.trial_gpus = trial_gpus

    @classmethod
    def connect(cls, address: str | None, *, trial_cpus: int, trial_gpus: float = 0.0) -> RayExecutor:
        """Join the cluster at ``address`` (``None``: start Ray here, bound to 127.0.0.1). Raises ConfigError
        naming the flag when the address cannot be reached or no node has ``trial_cpus`` CPUs (``trial_gpus``
        GPUs)."""
        if not isinstance(trial_cpus, int) or trial_cpus < 1:
            raise ConfigError("must be a whole number of CPUs, at least 1", field="--trial-cpus", value=trial_cpus)
        _check_address(address)
        local = address is None
        # A Ray instance started here listens on 127.0.0.1 only (Ray's own switch for single-machine use).
        with _env(**({"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"} if local else {})):
            import ray
            from ray._private import ray_constants

            started = False
            patched = ray_constants.ENABLE_RAY_CLUSTER
            try:
                if local:
                    ray_constants.ENABLE_RAY_CLUSTER = False
                if not ray.is_initialized():
                    ray.init(address=address, include_dashboard=False, log_to_driver=False,
                             logging_level=logging.WARNING,
                             runtime_env={"env_vars": {"PYTHONPATH": _pythonpath()}})
                    started = True
            except Exception as e:
                raise ConfigError(f"cannot connect to Ray: {type(e).__name__}: {str(e).splitlines()[0]}",
                                  field="--address", value=address or "(start Ray on this machine)") from None
            finally:
                ray_constants.ENABLE_RAY_CLUSTER = patched
        nodes = [n for n in ray.nodes() if n.get("Alive")]
        per_node = [float(n.get("Resources", {}).get("CPU", 0)) for n in nodes]
        session = cls(trial_cpus=trial_cpus, started=started and local, cluster_cpus=sum(per_node),
                      nodes=len(nodes), trial_gpus=trial_gpus)
        gpus = [float(n.get("Resources", {}).get("GPU", 0)) for n in nodes]
        if trial_gpus > max(gpus, default=0):
            session.close()
            raise ConfigError(f"no node of the Ray cluster has that many GPUs (largest: {max(gpus, default=0):g})",
                              field="--trial-gpus", value=trial_gpus)
        if trial_cpus > max(per_node, default=0):
            session.close()
            raise ConfigError(f"no node of the Ray cluster has that many CPUs (largest: {max(per_node, default=0):g})",
                              field="--trial-cpus", value=trial_cpus)
        log.info("Ray: %d node(s), %g CPUs: up to %d trials at once (%d CPU each)", len(nodes), sum(per_node),
                 sum(int(c // trial_cpus) for c in per_node), trial_cpus)
        return session

    def close(self) -> None:
        import ray

        if self.started and ray.is_initialized():
            ray.shutdown()
        self.started = False

    def run(self, prepared: PreparedStudy, *, remaining: int | None, deadline: float | None, bar: Any) -> bool:
        """Run Tune trials until the study holds its target of counted trials (or ``deadline`` passes).

        Returns True when interrupted (Ctrl-C)."""
        loaded, study, target = prepared.loaded, prepared.study, prepared.target
        trainable = tune.with_resources(
            tune.with_parameters(_tune_trial, loaded=loaded, target=target, deadline=deadline,
                                 threads=self.trial_cpus),
            {"cpu": self.trial_cpus, **({"gpu": self.trial_gpus} if self.trial_gpus else {})})
        progress = _Progress(bar)
        with _env(TUNE_DISABLE_SIGINT_HANDLER="1", RAY_AIR_NEW_OUTPUT="0", TUNE_DISABLE_AUTO_CALLBACK_LOGGERS="1"):
            for _ in range(ROUNDS):
                finished, running = workers.count_trials(study.get_trials(deepcopy=False))
                missing = None if target is None else target - finished
                if (missing is not None and missing <= 0) or (deadline and time.time() >= deadline):
                    break
                stopper = _Stopper(deadline, endless=missing is None, study=study)
                tuner = tune.Tuner(
                    trainable,
                    tune_config=tune.TuneConfig(num_samples=missing if missing is not None else -1,
                                                reuse_actors=True),
                    run_config=tune.RunConfig(
                        name=f"{loaded.study_name}-{time.strftime('%Y%m%d-%H%M%S')}",
                        storage_path=str((loaded.study_dir / "ray").resolve()), verbose=0, stop=stopper,
                        failure_config=tune.FailureConfig(max_failures=MAX_FAILURES), callbacks=[progress]))
                try:
                    with _quiet("ray.tune.analysis.experiment_analysis"):  # Tune's per-trial logs are off
                        grid = tuner.fit()
                except KeyboardInterrupt:
                    return True
                errors = [e for e in grid.errors if e is not None]
                for e in errors[:3]:
                    log.warning("a Ray trial failed %d times: %s", MAX_FAILURES + 1, _first_line(e))
                if errors and len(errors) == len(grid) and progress.reported == 0:
                    raise AutocompressError(f"every Ray trial failed, e.g. {_first_line(errors[0])} (Tune's logs: "
                                            f"{loaded.study_dir / 'ray'})")
                if stopper.reached:
                    break
        return False


@contextlib.contextmanager
def _quiet(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    lines = [ln for ln in text if ln.strip() and not ln.startswith((" ", "Traceback"))]
    return (lines[-1] if lines else type(error).__name__)[:300]


class _Stopper(tune.stopper.Stopper):
    """Notes when a worker found the study full or its time up. An endless (time-bound) Tune run is then ended
    once no study trial is running any more, so trials started before the deadline finish."""

    def __init__(self, deadline: float | None, *, endless: bool, study: optuna.Study | None = None) -> None:
        self.deadline, self.endless, self.reached, self.study = deadline, endless, False, study
        self.checked = 0.0

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its stoppers; the study (a database) stays here
        return {**self.__dict__, "study": None}

    def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
        if result.get("budget_reached"):
            self.reached = True
        return False

    def stop_all(self) -> bool:
        if self.deadline is not None and time.time() >= self.deadline:
            self.reached = True
        # A run for n_trials ends by itself (the last Tune trials find the study full and return at once).
        if not (self.endless and self.reached):
            return False
        if self.study is None or time.time() - self.checked < 2.0:
            return self.study is None
        self.checked = time.time()
        running = [t for t in self.study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                   if workers.WORKER_ATTR in t.system_attrs]
        return not running


class _Progress(tune.Callback):
    """Driver-side Tune callback: the progress bar shows trials finishing on the cluster."""

    def __init__(self, bar: Any) -> None:
        self.bar, self.reported = bar, 0

    def __getstate__(self) -> dict[str, Any]:  # Tune saves its callbacks; the bar stays here
        return {"bar": None, "reported": self.reported}

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict[str, Any], **info: Any) -> None:
        if result.get("optuna_trial", -1) < 0:
            return
        self.reported += 1
        if self.bar is not None:
            self.bar.update(1)
            if result.get("state") == "COMPLETE":
                self.bar.set_postfix_str(f"last: #{result['optuna_trial']} acc={result.get('accuracy', 0):.3f} "
                                         f"lat={result.get('latency_ms', 0):.3f}ms size={result.get('size_bytes')}B")
            else:
                self.bar.set_postfix_str(f"last: #{result['optuna_trial']} {result.get('state')} "
                                         f"{str(result.get('error', ''))[:40]}")


# --- the worker side -----------------------------------------------------------------------------------------

_TASKS: dict[str, Any] = {}  # task per worker process (Ray reuses its actors between trials)


_PREPARED: dict[str, PreparedStudy] = {}  # per worker process (Ray reuses its actors between Tune trials)


def _tune_trial(config: dict[str, Any], *, loaded: LoadedStudy, target: int | None, deadline: float | None,
                threads: int) -> None:
    """One Tune trial: one study trial, run by the local executor's loop in this Ray worker."""
    torch.set_num_threads(threads)
    cfg = loaded.config
    key = json.dumps([loaded.storage_url, loaded.study_name, cfg.task, cfg.task_options], sort_keys=True, default=str)
    if key not in _PREPARED:
        # The study folder is the driver's; a worker on another machine has no business writing there.
        worker_loaded = loaded.model_copy(update={"study_dir": Path(tempfile.gettempdir()) / "autocompress-ray-worker"})
        _PREPARED[key] = prepare_study(worker_loaded, n_trials=target, create=False)
    record: dict[str, Any] = {}

    def remember(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        ua = trial.user_attrs
        record.update(optuna_trial=trial.number, state=trial.state.name, cost_s=ua.get("cost_s"))
        if trial.state == optuna.trial.TrialState.COMPLETE:
            record.update({k: ua.get(k) for k in ("accuracy", "latency_ms", "size_bytes")})
        elif "error" in ua:
            record["error"] = ua["error"]

    run_trials(_PREPARED[key], max_trials=1, deadline=deadline, callbacks=[remember])
    tune.report(record or {"optuna_trial": -1, "state": "NONE", "budget_reached": True})


__all__ = ["RayExecutor"]
