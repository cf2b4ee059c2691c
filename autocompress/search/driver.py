"""The Optuna driver: a resumable multi-objective study over compression plans.

Each trial samples a plan (:mod:`autocompress.space`), materializes and measures it
(:mod:`autocompress.search.objective`) and returns the objectives as a tuple. Everything a trial measured is
stored with it as user attributes, so the study's database alone is enough to rebuild the front. Re-running the
same command continues the study until it holds ``n_trials`` finished trials; Ctrl-C stops after marking the
running trial failed, keeping everything completed.
"""

from __future__ import annotations

import logging
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
from ..space import SearchSpace
from ..tasks import Task, load_task
from .fidelity import summarize_fidelity
from .front import Front
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


def post_study_steps() -> list[Callable[[optuna.Study, Task, LoadedStudy], None]]:
    """Steps run on a finished (not interrupted) study before its front is reported, in order.

    Each takes ``(study, task, loaded)`` and may record results as study user attributes (finished trials cannot
    be changed), e.g. re-measure or gate front members. Imported here, not at module level, to keep start-up light.
    """
    return []


def _sampler(loaded: LoadedStudy, n_existing: int) -> optuna.samplers.BaseSampler:
    cfg = loaded.config
    # A resumed study gets a different seed so it does not replay the first run's random draws.
    seed = cfg.seed + n_existing
    if cfg.sampler == "nsga2":
        pop = cfg.population_size or max(8, min(50, (cfg.n_trials or 60) // 3))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    return optuna.samplers.RandomSampler(seed=seed)


def _storage(url: str) -> optuna.storages.BaseStorage:
    try:
        # Heartbeats let a later run (or another worker) notice trials whose process died, mark them failed
        # and run them again; see RetryFailedTrialCallback.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.RDBStorage(
                url, heartbeat_interval=10, grace_period=30,
                heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=1))
    except Exception as e:
        raise ConfigError(f"cannot open the study storage: {type(e).__name__}: {e}", field="storage",
                          value=url) from None


def open_study(loaded: LoadedStudy, *, create: bool) -> optuna.Study:
    directions = list(loaded.config.objectives.values())
    storage = _storage(loaded.storage_url)
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
              task: Task | None = None) -> StudyOutcome:
    """Run (or continue) the study until it holds ``n_trials`` finished trials or ``timeout_s`` passes."""
    cfg = loaded.config
    start = time.perf_counter()
    task = task or load_task(cfg.task, cfg.task_options)
    layers = discover_layers(task.model, task.example_input)
    space = SearchSpace(loaded.space, layers, source=str(loaded.config_path))

    loaded.study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = open_study(loaded, create=True)
    if "teacher" not in study.user_attrs:
        teacher = measure_teacher(task, cfg.latency)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(cfg.objectives))  # optuna-dashboard shows these names
        study.set_user_attr("objectives", dict(cfg.objectives))
        study.set_user_attr("teacher", teacher.to_dict())
        study.set_user_attr("task", cfg.task)
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
    done = sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))
    remaining = None if target is None else max(0, target - done)
    study.sampler = _sampler(loaded, done)
    objectives = list(cfg.objectives)

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
        if remaining != 0:
            study.optimize(objective, n_trials=remaining, timeout=cfg.timeout_s, catch=(Exception,),
                           callbacks=[on_trial_end], gc_after_trial=False)
    except KeyboardInterrupt:
        interrupted = True
    finally:
        bar.close()
    new_trials = n_finished() - new_before
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


def load_study_front(loaded: LoadedStudy) -> Front:
    """The front of an existing study named by a config (nothing is created)."""
    from .front import load_front

    return load_front(loaded.storage_url, loaded.study_name)


__all__ = ["run_study", "open_study", "StudyOutcome", "load_study_front"]
