"""The Optuna driver: a resumable multi-objective study over compression plans.

A study runs in three steps: :func:`~.study.prepare_study` (task, search space, latency mode, storage, teacher,
warm start), an executor runs the missing trials (:class:`~.local.LocalExecutor` in this process, or
:class:`~.ray_backend.RayExecutor` on a Ray cluster; each trial samples a plan and scores it with
:class:`~.trial.TrialRunner`), then the study-level steps (fidelity summary, deployability gate, latency check)
and the front. Everything a trial measured is stored with it as user attributes, so the study's database alone is
enough to rebuild the front. Re-running the same command continues the study until it holds ``n_trials`` finished
trials; Ctrl-C stops after marking the running trial failed, keeping everything completed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import optuna
from tqdm import tqdm

from ..config import LoadedStudy
from ..errors import ConfigError
from ..export.gate import deployability_gate
from ..front import Front
from ..latency.study import latency_check
from ..tasks import Task
from . import workers
from .fidelity import summarize_fidelity
from .local import LocalExecutor
from .study import PreparedStudy, open_study, prepare_study

log = logging.getLogger(__name__)

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED, optuna.trial.TrialState.FAIL)


@dataclass
class StudyOutcome:
    front: Front
    study_dir: Path
    storage_url: str
    interrupted: bool
    new_trials: int
    seconds: float


class Executor(Protocol):
    """Runs a prepared study's missing trials somewhere; ``run`` returns True when interrupted (Ctrl-C)."""

    name: str

    def run(self, prepared: PreparedStudy, *, remaining: int | None, deadline: float | None, bar: Any) -> bool:
        ...

    def close(self) -> None:
        ...


def post_study_steps() -> list[Callable[[optuna.Study, Task, LoadedStudy], None]]:
    """Steps run on a finished (not interrupted) study before its front is reported, in order.

    Each takes ``(study, task, loaded)`` and may record results as study user attributes (finished trials cannot
    be changed): the deployability gate, then the check of predicted latencies against measurement.
    """
    return [deployability_gate, latency_check]


def _executor(backend: str, *, address: str | None, trial_cpus: int | None, loaded: LoadedStudy,
              trial_gpus: float | None = None) -> Executor:
    if backend == "local":
        return LocalExecutor()
    if backend == "ray":
        from .ray_backend import RayExecutor  # lazy: Ray takes seconds to import, only studies naming it pay

        cpus = loaded.config.latency.threads if trial_cpus is None else trial_cpus
        return RayExecutor.connect(address, trial_cpus=cpus, trial_gpus=trial_gpus or 0.0)
    raise ConfigError("unknown backend", field="backend", value=backend, allowed="local, ray")


def run_study(loaded: LoadedStudy, *, n_trials: int | None = None, progress: bool = True,
              task: Task | None = None, backend: str = "local", address: str | None = None,
              trial_cpus: int | None = None, trial_gpus: float | None = None) -> StudyOutcome:
    """Run (or continue) the study until it holds ``n_trials`` finished trials or ``timeout_s`` passes.

    ``backend="ray"`` runs the trials on a Ray cluster (``address``: ``None`` starts a local one, ``"auto"`` or
    ``HOST:PORT`` joins one; ``trial_cpus`` and ``trial_gpus`` reserved per trial); see :mod:`autocompress.search.ray_backend`. Any number of
    processes may run the same study on a shared storage: they share ``n_trials`` (see :mod:`.workers`).
    """
    cfg = loaded.config
    start = time.perf_counter()
    # connect first: a wrong address or too few CPUs fails before anything is written
    executor = _executor(backend, address=address, trial_cpus=trial_cpus, loaded=loaded, trial_gpus=trial_gpus)
    try:
        prepared = prepare_study(loaded, task=task, n_trials=n_trials, create=True)
        study = prepared.study
        done, _ = workers.count_trials(study.get_trials(deepcopy=False))
        remaining = None if prepared.target is None else max(0, prepared.target - done)
        deadline = time.time() + cfg.timeout_s if cfg.timeout_s else None
        bar = tqdm(total=remaining, disable=not progress or remaining == 0, unit="trial", dynamic_ncols=True,
                   desc=f"study {loaded.study_name}")
        before = _n_finished(study)
        interrupted = False
        try:
            if remaining != 0:
                interrupted = executor.run(prepared, remaining=remaining, deadline=deadline, bar=bar)
        except KeyboardInterrupt:
            interrupted = True
        finally:
            bar.close()
    finally:
        executor.close()
    new_trials = _n_finished(study) - before
    summary = summarize_fidelity(study)
    study.set_user_attr("fidelity_summary", summary)
    tau = summary["self_check"]["kendall_tau"]
    if tau is not None and tau < cfg.fidelity.min_tau:
        log.warning("the %s proxy ranks candidates poorly: Kendall tau %.2f against full fine-tuning on %d "
                    "candidates (below %.2f). Consider a higher `fidelity.proxy` or more `finetune.steps`.",
                    cfg.fidelity.proxy, tau, summary["self_check"]["n"], cfg.fidelity.min_tau)
    if not interrupted:
        for step in post_study_steps():
            step(study, prepared.task, loaded)
    front = Front.from_study(study)
    return StudyOutcome(front=front, study_dir=loaded.study_dir, storage_url=loaded.storage_url,
                        interrupted=interrupted, new_trials=new_trials, seconds=time.perf_counter() - start)


def _n_finished(study: optuna.Study) -> int:
    return sum(t.state in FINISHED for t in study.get_trials(deepcopy=False))


__all__ = ["run_study", "open_study", "StudyOutcome", "Executor"]
