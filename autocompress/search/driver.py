"""The Optuna driver: a resumable multi-objective study over compression plans.

Each trial samples a plan (:mod:`autocompress.space`), materializes and measures it
(:mod:`autocompress.search.objective`) and returns the objectives as a tuple. Everything a trial measured is
stored with it as user attributes, so the study's database alone is enough to rebuild the front. Re-running the
same command continues the study until it holds ``n_trials`` finished trials; Ctrl-C stops after marking the
running trial failed, keeping everything completed.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import optuna
from tqdm import tqdm

from ..compress.layers import discover_layers
from ..config import LoadedStudy
from ..errors import ConfigError
from ..export.gate import deployability_gate
from ..front import KINDS_ATTR, Front
from ..latency.study import latency_check
from ..latency.study import prepare as prepare_latency
from ..space import SearchSpace
from ..tasks import Task, load_task
from . import workers
from .fidelity import summarize_fidelity
from .objective import TeacherReference, measure_teacher
from .trial import TrialRunner

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)
# Uniform (weight bits, sparsity) plans queued first in a new study when `warm_start` is on.
WARM_START = ((8, 0.0), (4, 0.0), (4, 0.5), (3, 0.5), (4, 0.75))


@dataclass
class StudyOutcome:
    front: Front
    study_dir: Path
    storage_url: str
    interrupted: bool
    new_trials: int
    seconds: float


class _InterruptGuard:
    """Ctrl-C handling around ``study.optimize``.

    Inside a trial, Ctrl-C interrupts it at once (Optuna marks it failed, nothing completed is lost). Between
    trials (while Optuna is recording a finished trial) it only asks the study to stop, so a trial's result is
    never cut half-written.
    """

    def __init__(self, study: optuna.Study, objective: Callable) -> None:
        self.study, self.objective = study, objective
        self.in_trial = False
        self.interrupted = False

    def __call__(self, trial: optuna.Trial):
        self.in_trial = True
        try:
            return self.objective(trial)
        finally:
            self.in_trial = False

    def _handler(self, signum, frame) -> None:
        self.interrupted = True
        if self.in_trial:
            raise KeyboardInterrupt
        self.study.stop()

    @contextlib.contextmanager
    def installed(self):
        if threading.current_thread() is not threading.main_thread():
            yield
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)


def post_study_steps() -> list[Callable[[optuna.Study, Task, LoadedStudy], None]]:
    """Steps run on a finished (not interrupted) study before its front is reported, in order.

    Each takes ``(study, task, loaded)`` and may record results as study user attributes (finished trials cannot
    be changed): the deployability gate, then the check of predicted latencies against measurement.
    """
    return [deployability_gate, latency_check]


def _sampler(loaded: LoadedStudy, n_existing: int) -> optuna.samplers.BaseSampler:
    cfg = loaded.config
    # A resumed study gets a different seed so it does not replay the first run's random draws.
    seed = cfg.seed + n_existing
    if cfg.sampler == "nsga2":
        pop = cfg.population_size or max(8, min(50, (cfg.n_trials or 60) // 3))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if cfg.sampler == "gp":
        # Gaussian-process sampler: constrained expected hypervolume improvement over the completed trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def _storage(url: str, heartbeat_s: int = 10, file: str | None = None) -> optuna.storages.BaseStorage:
    try:
        # Heartbeats let a later run (or another worker) notice trials whose process died, mark them failed
        # and run them again; see workers.py.
        return workers.make_storage(url, heartbeat_s=heartbeat_s)
    except Exception as e:
        raise ConfigError(f"cannot open the study storage: {workers.describe_error(e)}", field="storage",
                          value=url, file=file) from None


def open_study(loaded: LoadedStudy, *, create: bool) -> optuna.Study:
    directions = list(loaded.config.objectives.values())
    storage = _storage(loaded.storage_url, loaded.config.heartbeat_s, str(loaded.config_path))
    if create:
        study = optuna.create_study(study_name=loaded.study_name, storage=storage, directions=directions,
                                    load_if_exists=True)
    else:
        study = optuna.load_study(study_name=loaded.study_name, storage=storage)
    stored = study.user_attrs.get("objectives")
    if stored is not None and list(stored) != list(loaded.config.objectives):
        raise ConfigError(f"study {loaded.study_name!r} already exists with objectives {list(stored)}; the "
                          f"config now asks for {list(loaded.config.objectives)}. Use another `name` or storage",
                          file=str(loaded.config_path), field="objectives")
    return study


def run_study(loaded: LoadedStudy, *, n_trials: int | None = None, progress: bool = True,
              task: Task | None = None, backend: str = "local", address: str | None = None,
              trial_cpus: int | None = None, worker: workers.WorkerOptions | None = None) -> StudyOutcome:
    """Run (or continue) the study until it holds ``n_trials`` finished trials or ``timeout_s`` passes.

    ``backend="ray"`` runs the trials on a Ray cluster (``address``: ``None`` starts a local one, ``"auto"`` or
    ``HOST:PORT`` joins one; ``trial_cpus`` per trial); see :mod:`autocompress.search.ray_backend`. Any number of
    processes may run the same study on a shared storage: they share ``n_trials`` (see :mod:`.workers`).
    ``worker`` is for backends' worker processes (a Ray task); its outcome has ``front=None``.
    """
    cfg = loaded.config
    start = time.perf_counter()
    ray_session = None
    if backend == "ray":  # connect first: a wrong address or too few CPUs fails before anything is written
        from .ray_backend import RaySession

        ray_session = RaySession.connect(address, trial_cpus=cfg.latency.threads if trial_cpus is None else trial_cpus)
    elif backend != "local":
        raise ConfigError("unknown backend", field="backend", value=backend, allowed="local, ray")
    task = task or load_task(cfg.task, cfg.task_options)
    layers = discover_layers(task.model, task.example_input)
    space = SearchSpace(loaded.space, layers, source=str(loaded.config_path))

    # Loads the latency profile once per study (predict or measure); before anything is written, so that a
    # missing or corrupt profile leaves no half-made study behind.
    latency_mode = prepare_latency(loaded, task)

    made_dir = not loaded.study_dir.exists()
    loaded.study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(loaded, create=True)
    except Exception:
        if made_dir:  # a storage that cannot be opened leaves nothing behind
            shutil.rmtree(loaded.study_dir, ignore_errors=True)
        raise
    with workers.study_lock(study):  # with several workers, one measures the teacher and queues the warm start
        if "teacher" not in study.user_attrs:
            teacher = measure_teacher(task, cfg.latency)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(cfg.objectives))  # optuna-dashboard shows these names
            study.set_user_attr("objectives", dict(cfg.objectives))
            study.set_user_attr("teacher", teacher.to_dict())
            study.set_user_attr("task", cfg.task)
            # the kernel kinds candidates are scored with: export lowers a front member with these
            study.set_user_attr(KINDS_ATTR, sorted(latency_mode.kinds))
            study.set_user_attr("layers", [{"name": i.name, "type": i.type_name, "out_channels": i.out_channels,
                                            "is_output": i.is_output} for i in layers])
            study.set_user_attr("unassigned_layers", space.unassigned)
        teacher = TeacherReference(**study.user_attrs["teacher"])
        if cfg.warm_start and not study.get_trials(deepcopy=False):
            queued = []
            for bits, sparsity in WARM_START:
                params = space.uniform_params(weight_bits=bits, sparsity=sparsity)
                if params not in queued:
                    queued.append(params)
                    study.enqueue_trial(params, user_attrs={"warm_start": f"uniform w{bits} s{sparsity:g}"})

    target = n_trials if n_trials is not None else cfg.n_trials
    done, _ = workers.count_trials(study.get_trials(deepcopy=False))  # the study's trials, not this worker's
    remaining = None if target is None else max(0, target - done)
    if worker is not None:
        remaining = worker.max_trials if remaining is None else min(remaining, worker.max_trials)
    # Every worker of a study samples with its own seed (the first one: seed + finished trials).
    study.sampler = _sampler(loaded, done + 7919 * workers.worker_number(study))
    budget = workers.TrialBudget(study, target, poll_s=min(2.0, cfg.heartbeat_s),
                                 deadline=worker.deadline if worker else None).install()
    objective = TrialRunner(task=task, space=space, loaded=loaded, teacher=teacher, horizon=target)

    bar = tqdm(total=remaining, disable=not progress or remaining == 0, unit="trial", dynamic_ncols=True,
               desc=f"study {loaded.study_name}")

    def on_trial_end(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        bar.update(1)
        n_front = len(study.best_trials)
        if trial.state == optuna.trial.TrialState.COMPLETE:
            ua = trial.user_attrs
            bar.set_postfix_str(f"front={n_front} last: acc={ua['accuracy']:.3f} "
                                f"lat={ua['latency_ms']:.3f}ms size={ua['size_bytes']}B")
        else:
            bar.set_postfix_str(f"front={n_front} last: {trial.state.name} {trial.user_attrs.get('error', '')[:40]}")

    interrupted = False
    def n_finished() -> int:
        return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))

    new_before = n_finished()
    try:
        if remaining != 0 and ray_session is not None:
            interrupted = ray_session.optimize(loaded, study, target=target, bar=bar)
        elif remaining != 0:
            guarded = _InterruptGuard(study, workers.with_trial_timeout(objective, cfg.trial_timeout_s))
            with guarded.installed():
                study.optimize(guarded, n_trials=remaining,
                               timeout=cfg.timeout_s, catch=(Exception,), gc_after_trial=False,
                               callbacks=[on_trial_end, *(worker.callbacks if worker else [])])
            interrupted = guarded.interrupted
    except workers.StudyFull:  # other workers finished the study's trials
        pass
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
        if ray_session is not None:
            ray_session.close()
    new_trials = n_finished() - new_before
    if worker is not None:  # a backend's worker process: its driver does the study-level steps once
        return StudyOutcome(front=None, study_dir=loaded.study_dir, storage_url=loaded.storage_url,  # type: ignore[arg-type]
                            interrupted=interrupted, new_trials=len(budget.started),
                            seconds=time.perf_counter() - start)
    summary = summarize_fidelity(study)
    study.set_user_attr("fidelity_summary", summary)
    tau = summary["self_check"]["kendall_tau"]
    if tau is not None and tau < cfg.fidelity.min_tau:
        log.warning("the %s proxy ranks candidates poorly: Kendall tau %.2f against full fine-tuning on %d "
                    "candidates (below %.2f). Consider a higher `fidelity.proxy` or more `finetune.steps`.",
                    cfg.fidelity.proxy, tau, summary["self_check"]["n"], cfg.fidelity.min_tau)
    if not interrupted:
        for step in post_study_steps():
            step(study, task, loaded)
    front = Front.from_study(study)
    return StudyOutcome(front=front, study_dir=loaded.study_dir, storage_url=loaded.storage_url,
                        interrupted=interrupted, new_trials=new_trials, seconds=time.perf_counter() - start)


__all__ = ["run_study", "open_study", "StudyOutcome"]
