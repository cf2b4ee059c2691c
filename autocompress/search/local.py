"""Running a prepared study's trials in this process: Optuna's ask-and-tell loop under the study's trial budget.

Why a loop of our own instead of ``study.optimize``: several workers share one study, and ``optimize`` cannot start
a trial only while the study holds fewer than ``n_trials`` (its ``MaxTrialsCallback`` stops a worker after its next
trial, so four workers overshoot by up to three). Here each trial starts under the study lock once
:func:`~autocompress.search.workers.count_trials` leaves room, with Optuna's public ``study.ask()`` (which starts the
queued trials first: warm-start plans, retries of dead trials) and ends with ``study.tell()``. The heartbeat that
``optimize`` would send is sent by :class:`_Heartbeat` (the storage's public ``record_heartbeat``), so a worker
that dies is noticed by the others (:mod:`.workers`).

Ctrl-C: inside a trial it interrupts the trial at once (it is failed with its reason, nothing completed is lost);
between trials it only stops the loop, so a trial's result is never cut half-written.
"""

from __future__ import annotations

import contextlib
import logging
import math
import signal
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from . import workers
from .study import PreparedStudy

log = logging.getLogger(__name__)

Callback = Callable[[optuna.Study, FrozenTrial], None]


@dataclass
class RunResult:
    """Trials this process started, and whether Ctrl-C stopped it."""

    started: list[int] = field(default_factory=list)
    interrupted: bool = False


class _Heartbeat:
    """Record the trial's heartbeat every ``heartbeat_interval`` seconds while it runs (as ``optimize`` does)."""

    def __init__(self, storage: workers.StudyStorage, trial_id: int) -> None:
        self.storage, self.trial_id = storage, trial_id
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._beat, daemon=True, name=f"heartbeat-{trial_id}")

    def _beat(self) -> None:
        interval = self.storage.get_heartbeat_interval() or 10
        while not self.stop.wait(interval):
            with contextlib.suppress(Exception):  # a missed beat is retried at the next interval
                self.storage.record_heartbeat(self.trial_id)

    def __enter__(self) -> _Heartbeat:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class _Interrupts:
    """SIGINT: raise inside a trial, only ask the loop to stop between trials (main thread only)."""

    def __init__(self) -> None:
        self.in_trial = False
        self.stop = False

    def _handler(self, signum: int, frame: Any) -> None:
        self.stop = True
        if self.in_trial:
            raise KeyboardInterrupt

    @contextlib.contextmanager
    def installed(self) -> Iterator[_Interrupts]:
        if threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = signal.signal(signal.SIGINT, self._handler)
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


def _start(prepared: PreparedStudy) -> tuple[optuna.Trial, int]:
    """Start the next trial and mark it ours, with Ctrl-C held off until it is marked: a trial is either started
    and owned (found and retried if this process dies) or, when interrupted here, failed at once."""
    study, storage, trial = prepared.study, prepared.storage, None
    try:
        with workers.signals_deferred(), warnings.catch_warnings():
            # Optuna warns that heartbeats belong to `optimize`; this loop sends them itself (_Heartbeat)
            warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed", category=UserWarning)
            trial = study.ask()  # Optuna starts the oldest queued trial first
            trial_id = storage.get_trial_id_from_study_id_trial_number(prepared.study_id, trial.number)
            storage.set_trial_system_attr(trial_id, workers.WORKER_ATTR, workers.worker_identity())
            if storage.get_heartbeat_interval():
                storage.record_heartbeat(trial_id)
        return trial, trial_id
    except BaseException as e:  # a deferred Ctrl-C arrives here, before the trial ran
        if trial is not None:
            with contextlib.suppress(Exception):
                trial.set_user_attr("error", f"{type(e).__name__}: stopped before the trial ran")
                study.tell(trial, state=TrialState.FAIL)
        raise


def _next_trial(prepared: PreparedStudy, *, deadline: float | None, poll_s: float) -> tuple[optuna.Trial, int] | None:
    """The next trial to run, or None when the study holds its trials (or its time is up).

    When the budget is used up but other workers' trials are running, waits, polling every ``poll_s``: a dead one
    is failed and queued again and is then started here."""
    study, storage, target, waited = prepared.study, prepared.storage, prepared.target, False
    while True:
        if deadline is not None and time.time() >= deadline:
            return None
        with workers.study_lock(storage, study.study_name):
            workers.fail_dead_trials(study, storage)
            trials = study.get_trials(deepcopy=False)
            finished, _ = workers.count_trials(trials)
            # Running trials count when a worker of ours runs them (a trial asked for by hand and never told
            # would otherwise hold a place for ever).
            running = sum(1 for t in trials if t.state == TrialState.RUNNING and workers.WORKER_ATTR in t.system_attrs)
            if target is None or finished + running < target:
                return _start(prepared)
        if running == 0:
            return None
        if not waited:
            log.info("budget of %s trials reached; waiting for %d running trial(s) of other workers", target,
                     running)
            waited = True
        time.sleep(poll_s)


def _run_one(prepared: PreparedStudy, trial: optuna.Trial, trial_id: int, objective: Callable,
             interrupts: _Interrupts) -> FrozenTrial:
    """Run ``objective`` on ``trial`` and tell the study how it ended (values, stopped early, or failed)."""
    study = prepared.study
    with _Heartbeat(prepared.storage, trial_id):
        interrupts.in_trial = True
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            interrupts.in_trial = False
            return study.tell(trial, state=TrialState.PRUNED)
        except (Exception, KeyboardInterrupt) as e:
            interrupts.in_trial = False
            if "error" not in trial.user_attrs:
                trial.set_user_attr("error", f"{type(e).__name__}: {e}"[:2000])
            frozen = study.tell(trial, state=TrialState.FAIL)
            if isinstance(e, KeyboardInterrupt):
                raise
            log.warning("trial %d failed: %s", trial.number, trial.user_attrs.get("error"))
            return frozen
        finally:
            interrupts.in_trial = False
    if not all(math.isfinite(v) for v in values):
        trial.set_user_attr("error", f"ValueError: non-finite objective values {list(values)}")
        return study.tell(trial, state=TrialState.FAIL)
    return study.tell(trial, values)


def run_trials(prepared: PreparedStudy, *, max_trials: int | None = None, deadline: float | None = None,
               callbacks: list[Callback] = ()) -> RunResult:
    """Run trials until the study holds its ``target``, ``max_trials`` ran here, ``deadline`` (``time.time()``)
    passed or Ctrl-C; ``callbacks(study, frozen_trial)`` after each."""
    cfg = prepared.loaded.config
    objective = workers.with_trial_timeout(prepared.objective, cfg.trial_timeout_s)
    result = RunResult()
    with _Interrupts().installed() as interrupts:
        try:
            while max_trials is None or len(result.started) < max_trials:
                if interrupts.stop:
                    result.interrupted = True
                    break
                got = _next_trial(prepared, deadline=deadline, poll_s=min(2.0, cfg.heartbeat_s))
                if got is None:
                    break
                trial, trial_id = got
                result.started.append(trial.number)
                frozen = _run_one(prepared, trial, trial_id, objective, interrupts)
                for callback in callbacks:
                    callback(prepared.study, frozen)
        except KeyboardInterrupt:
            result.interrupted = True
    return result


def progress_callback(bar: Any) -> Callback:
    """Update a tqdm bar after each trial: the front's size and the last trial's figures or failure."""
    def on_trial_end(study: optuna.Study, trial: FrozenTrial) -> None:
        bar.update(1)
        n_front = len(study.best_trials)
        if trial.state == TrialState.COMPLETE:
            ua = trial.user_attrs
            bar.set_postfix_str(f"front={n_front} last: acc={ua['accuracy']:.3f} "
                                f"lat={ua['latency_ms']:.3f}ms size={ua['size_bytes']}B")
        else:
            bar.set_postfix_str(f"front={n_front} last: {trial.state.name} {trial.user_attrs.get('error', '')[:40]}")

    return on_trial_end


class LocalExecutor:
    """Trials in this process, one after another (several such processes may share a study's storage)."""

    name = "local"

    def run(self, prepared: PreparedStudy, *, remaining: int | None, deadline: float | None, bar: Any) -> bool:
        """Run the study's missing trials here; True when interrupted (Ctrl-C)."""
        return run_trials(prepared, max_trials=remaining, deadline=deadline,
                          callbacks=[progress_callback(bar)]).interrupted

    def close(self) -> None:
        pass


__all__ = ["LocalExecutor", "run_trials", "RunResult", "progress_callback"]
