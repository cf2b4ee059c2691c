"""Many workers on one study: a storage-wide lock, race-free ``n_trials`` accounting, dead trials found and
retried, and a per-trial time limit.

Any number of processes (``autocompress search`` on several machines sharing a PostgreSQL database, or Ray
workers) may run the same study. What keeps them from stepping on each other:

- :func:`study_lock` serialises the few read-check-write steps: creating a study (teacher measured once, warm-start
  plans queued once, by whichever worker gets there first) and starting a trial. PostgreSQL: an advisory lock;
  MySQL: ``GET_LOCK``; SQLite: ``flock`` on ``<database>.lock`` beside the database (one machine only).
- :func:`count_trials` says how many trials count towards ``n_trials``; the local executor
  (:mod:`autocompress.search.local`) starts a trial only while fewer are counted (under the study lock), so four
  workers asked for 200 trials together run 200, not 800 (nor 203, as Optuna's ``MaxTrialsCallback`` would: it
  stops a worker only after its next trial). A worker whose budget is reached while other workers' trials are
  still running waits for them: if one of them dies it is retried, and this worker may be the one to run it.
- A trial whose worker died is failed and queued again once (Optuna's heartbeat retry, :class:`RetryDeadTrial`).
  Two ways to notice a dead worker: its process is gone from this machine (immediately: every trial records the
  host, boot and process that runs it in the system attribute ``autocompress:worker``; the reason goes in the
  trial's ``error``), or its heartbeat stops for ``3 * heartbeat_s`` seconds (any machine: Optuna's
  ``fail_stale_trials``; the reason goes in the study attribute ``lost:<number>``, since Optuna has failed the
  trial by then and a finished trial cannot be changed).
- :func:`with_trial_timeout` stops a trial running longer than ``trial_timeout_s``: it is recorded failed with the
  reason and the study goes on. The limit interrupts Python code; a single native call that never returns (a
  hung library call) is interrupted when it returns.
"""

from __future__ import annotations

import contextlib
import copy
import ctypes
import fcntl
import hashlib
import logging
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import optuna
import sqlalchemy
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from ..front import LOST_ATTR

log = logging.getLogger(__name__)

WORKER_ATTR = "autocompress:worker"  # trial system attribute: who runs it
WORKERS_ATTR = "autocompress:workers_started"  # study system attribute: a counter giving each worker a number
MAX_RETRY = 1  # a trial whose worker died is run again once


# --- storage --------------------------------------------------------------------------------------------------


class StudyStorage(optuna.storages.RDBStorage):
    """Optuna's RDB storage, every public call of which runs with Ctrl-C deferred (see :func:`signals_deferred`;
    the methods are wrapped below)."""


def _set_reason(storage: optuna.storages.BaseStorage, trial_id: int, reason: str) -> bool:
    try:
        trial = storage.get_trial(trial_id)
        retried = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY
        storage.set_trial_user_attr(trial_id, "error", lost_reason(reason, retried))
        return True
    except (UpdateFinishedTrialError, KeyError):
        return False


class RetryDeadTrial(optuna.storages.RetryHeartbeatStaleTrialCallback):
    """Queue a dead trial again (same parameters), without the dead trial's error and worker. A trial Optuna
    failed for its silent heartbeat gets its reason as the study attribute ``lost:<number>``."""

    grace_s: float = 30.0  # the storage's grace period (3 x heartbeat_s), for the reason

    def __call__(self, study: optuna.Study, trial: FrozenTrial) -> None:
        if "error" not in trial.user_attrs:
            grace = f"{self.grace_s:g}"
            retried = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY
            study.set_user_attr(LOST_ATTR.format(trial.number), lost_reason(
                f"its worker sent no heartbeat for more than {grace} s (process killed, out of memory, or its "
                "machine lost)", retried))
        trial = copy.deepcopy(trial)
        trial.user_attrs.pop("error", None)
        trial.system_attrs.pop(WORKER_ATTR, None)
        super().__call__(study, trial)


def lost_reason(why: str, retried: bool) -> str:
    return f"WorkerLost: {why}; " + ("run again as a new trial" if retried else "not run again (retried before)")


_STORAGES: dict[tuple[int, str, int], StudyStorage] = {}
_STORAGES_LOCK = threading.Lock()


def make_storage(url: str, *, heartbeat_s: int = 10) -> StudyStorage:
    """The study storage for ``url`` with heartbeats every ``heartbeat_s`` s (a trial silent for three times that
    is failed and retried once). One storage (connection pool) per process and URL."""
    key = (os.getpid(), url, heartbeat_s)
    with _STORAGES_LOCK:
        if key in _STORAGES:
            return _STORAGES[key]
        engine_kwargs: dict[str, Any] = {}
        if url.startswith("postgresql"):
            engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": 10}}
        elif url.startswith("sqlite"):
            engine_kwargs = {"connect_args": {"timeout": 60}}

        def build() -> StudyStorage:
            for attempt in range(5):
                try:
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        retry = RetryDeadTrial(max_retry=MAX_RETRY)
                        retry.grace_s = 3 * heartbeat_s
                        return StudyStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=heartbeat_s,
                                            grace_period=3 * heartbeat_s, heartbeat_stale_trial_callback=retry)
                except Exception as e:  # another program (not holding our lock) created the tables meanwhile
                    racing = "already exists" in str(e) or "UNIQUE constraint failed: alembic_version" in str(e)
                    if not racing or attempt == 4:
                        raise
                    time.sleep(0.2 * (attempt + 1))
            raise AssertionError("unreachable")

        if url.startswith("postgresql"):
            # Several workers opening a fresh database at once would race creating Optuna's tables.
            engine = sqlalchemy.create_engine(url, connect_args={"connect_timeout": 10})
            try:
                with engine.connect() as conn:
                    conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": _key("tables")})
                    try:
                        storage = build()
                    finally:
                        conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": _key("tables")})
                        conn.commit()
            finally:
                engine.dispose()
        else:
            storage = build()
        _STORAGES[key] = storage
        return storage


def describe_error(error: BaseException) -> str:
    """One line for a storage error: the database driver's own message, without SQLAlchemy's links."""
    original = getattr(error, "orig", None) or error
    text = " ".join(str(original).split())
    text = text.split("(Background on this error at:")[0].strip()
    return f"{type(original).__name__}: {text}" if text else type(original).__name__


def _key(name: str) -> int:
    """A signed 63-bit lock key for ``name``."""
    return int.from_bytes(hashlib.sha256(f"autocompress:{name}".encode()).digest()[:8], "big") >> 1


# --- a lock over the whole study, across processes and machines ---------------------------------------------

_LOCAL_LOCKS: dict[tuple[str, str], threading.Lock] = {}
_HELD = threading.local()


@contextlib.contextmanager
def study_lock(storage: StudyStorage, study_name: str) -> Iterator[None]:
    """Hold a lock that every worker of this study, on any machine sharing its storage, respects (re-entrant)."""
    held = _HELD.__dict__.setdefault("keys", set())
    key = (storage.url, study_name)
    if key in held:
        yield
        return
    local = _LOCAL_LOCKS.setdefault(key, threading.Lock())
    with local:
        held.add(key)
        try:
            with _storage_lock(storage, study_name):
                yield
        finally:
            held.discard(key)


@contextlib.contextmanager
def _storage_lock(storage: StudyStorage, study_name: str) -> Iterator[None]:
    engine = storage.engine
    dialect = engine.dialect.name
    if dialect in ("postgresql", "mysql", "mariadb"):
        acquire, release = (("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)")
                            if dialect == "postgresql" else
                            ("SELECT GET_LOCK(:k, -1)", "SELECT RELEASE_LOCK(:k)"))
        key: int | str = _key(study_name) if dialect == "postgresql" else f"ac-{_key(study_name)}"
        with engine.connect() as conn:
            conn.execute(sqlalchemy.text(acquire), {"k": key})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text(release), {"k": key})
                conn.commit()
    elif dialect == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        lock_path = Path(str(engine.url.database) + ".lock")
        with open(lock_path, "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)
    else:
        yield


def worker_number(storage: StudyStorage, study_name: str) -> int:
    """0 for the first worker ever to run this study, then 1, 2, ... (used to give each worker its own seed)."""
    with study_lock(storage, study_name):
        study_id = storage.get_study_id_from_name(study_name)
        n = int(storage.get_study_system_attrs(study_id).get(WORKERS_ATTR, 0))
        storage.set_study_system_attr(study_id, WORKERS_ATTR, n + 1)
    return n


# --- who runs a trial, and is it still alive ----------------------------------------------------------------


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return ""


def _process_start(pid: int) -> str | None:
    """The process's start time (clock ticks since boot) or None when no such live process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):  # zombie or dead: killed, not yet collected by its parent
        return None
    return fields[19]


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


def worker_identity() -> dict[str, Any]:
    """Who runs a trial: host, boot, PID namespace (containers), process id and start time (PIDs are reused)."""
    pid = os.getpid()
    return {"host": socket.gethostname(), "boot": _boot_id(), "pidns": _pid_namespace(), "pid": pid,
            "start": _process_start(pid) or ""}


def dead_here(trial: FrozenTrial) -> str | None:
    """Why ``trial`` (RUNNING) is certainly dead when its worker ran on this machine and is gone; else None."""
    who = trial.system_attrs.get(WORKER_ATTR)
    if not isinstance(who, dict) or not Path("/proc/self/stat").exists():
        return None
    if (who.get("host"), who.get("boot"), who.get("pidns")) != (socket.gethostname(), _boot_id(), _pid_namespace()):
        return None
    if _process_start(int(who["pid"])) == who.get("start"):
        return None
    return f"the process running it (pid {who['pid']} on {who['host']}) is gone (killed, out of memory or crashed)"


def fail_dead_trials(study: optuna.Study, storage: StudyStorage) -> int:
    """Fail (with their reason) and queue again the running trials whose worker died. Returns how many.

    Dead here: a trial whose process on this machine is gone, or one that no worker marked as its own within
    ``3 * heartbeat_s`` of starting (its worker died between Optuna creating it and marking it). Elsewhere: by
    heartbeat (Optuna's ``fail_stale_trials``)."""
    study_id: int | None = None
    grace = 3 * (storage.get_heartbeat_interval() or 10)
    n = 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        reason = dead_here(t)
        if reason is None and WORKER_ATTR not in t.system_attrs and t.datetime_start is not None \
                and (datetime.now() - t.datetime_start).total_seconds() > grace:
            reason = f"its worker stopped before marking it as its own (no worker for {grace} s)"
        if reason is None:
            continue
        if study_id is None:
            study_id = storage.get_study_id_from_name(study.study_name)
        trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
        if not _set_reason(storage, trial_id, reason):
            continue
        try:
            if not storage.set_trial_state_values(trial_id, state=TrialState.FAIL):
                continue
        except UpdateFinishedTrialError:
            continue
        n += 1
        callback = storage.get_heartbeat_stale_trial_callback()
        if callback is not None:
            callback(study, copy.deepcopy(storage.get_trial(trial_id)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # other machines: by heartbeat
    return n


# --- n_trials accounting --------------------------------------------------------------------------------------


def count_trials(trials: Sequence[FrozenTrial]) -> tuple[int, int]:
    """``(finished, running)`` trials that count towards ``n_trials``.

    Finished: complete, pruned (stopped early) and failed trials, except a failed trial that was queued again
    (its retry counts instead). Waiting (queued) trials do not count until a worker starts them.
    """
    retried = {t.system_attrs["retry_history"][-1] for t in trials if t.system_attrs.get("retry_history")}
    finished = sum(1 for t in trials if t.state.is_finished()
                   and not (t.state == TrialState.FAIL and t.number in retried))
    running = sum(1 for t in trials if t.state == TrialState.RUNNING)
    return finished, running


_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM)
_deferring = threading.local()


@contextlib.contextmanager
def signals_deferred() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM off for the block (main thread only): a signal that comes meanwhile is handed to the
    handler that was in place once the outermost block ends.

    Used around every storage call: a ``KeyboardInterrupt`` raised inside SQLAlchemy/sqlite3 cuts the call short
    (a trial attribute being written is silently lost, ``tests/test_scale.py`` shows it), and the session it
    interrupts is left to SQLAlchemy's clean-up under an exception. Done in
    Python, not with ``pthread_sigmask``: the kernel hands a process-wide signal to any thread that does not block
    it (torch's, ONNX Runtime's, the heartbeat thread), and Python then runs the handler in the main thread anyway.
    """
    if threading.current_thread() is not threading.main_thread() or getattr(_deferring, "active", False):
        yield
        return
    pending: list[int] = []

    def record(signum: int, frame: Any) -> None:
        pending.append(signum)

    previous = {s: signal.signal(s, record) for s in _HELD_SIGNALS}
    _deferring.active = True
    try:
        yield
    finally:
        _deferring.active = False
        for s, handler in previous.items():
            signal.signal(s, handler)
        for s in dict.fromkeys(pending):  # each signal once, in the order they came
            handler = previous[s]
            if callable(handler):
                handler(s, None)
            elif handler == signal.SIG_DFL:
                os.kill(os.getpid(), s)  # the default action (e.g. terminate), now that the block is done


def _deferring_signals(method: Callable) -> Callable:
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        with signals_deferred():
            return method(*args, **kwargs)

    wrapped.__name__, wrapped.__doc__, wrapped.__wrapped__ = method.__name__, method.__doc__, method  # type: ignore[attr-defined]
    return wrapped


# Every public storage method runs with signals deferred (see signals_deferred), and so do the private ones
# Optuna's cache (`optuna/storages/_cached_storage.py`) calls on its backend directly (a Ctrl-C once landed inside
# `_set_trial_param`'s SQLite write and left the database locked); Optuna's cache and the trial API call these, so
# a Ctrl-C during a trial is raised between storage calls, never inside one.
_CALLED_BY_OPTUNAS_CACHE = {"_create_new_trial", "_set_trial_param", "_get_best_trial_id", "_get_trials",
                            "_get_stale_trial_ids"}
for _name, _method in vars(optuna.storages.RDBStorage).items():
    if (not _name.startswith("_") or _name in _CALLED_BY_OPTUNAS_CACHE) and callable(_method) \
            and _name not in vars(StudyStorage):
        setattr(StudyStorage, _name, _deferring_signals(_method))


# --- trial time limit ----------------------------------------------------------------------------------------


class TrialTimeout(Exception):
    """A trial ran longer than ``trial_timeout_s``."""

    message = "the trial ran longer than trial_timeout_s"

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else self.message


@contextlib.contextmanager
def deadline(seconds: float) -> Iterator[None]:
    """Raise :class:`TrialTimeout` in this thread when the block runs longer than ``seconds``.

    The main thread uses ``SIGALRM`` (interrupts sleeps too); other threads (Ray runs trials in one) get the
    exception asynchronously at their next Python instruction.
    """
    message = f"the trial ran longer than trial_timeout_s={seconds:g} s and was stopped"
    if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
        def on_alarm(signum: int, frame: Any) -> None:
            raise TrialTimeout(message)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, seconds)
        try:
            yield
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
        return
    tid, lock, state = threading.get_ident(), threading.Lock(), {"done": False, "fired": False}
    exc = type("TrialTimeout", (TrialTimeout,), {"message": message})

    def fire() -> None:
        with lock:
            if not state["done"]:
                state["fired"] = True
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), ctypes.py_object(exc))

    timer = threading.Timer(seconds, fire)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            state["done"] = True
            timer.cancel()
            if state["fired"]:  # not delivered yet: drop it, the block is over
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(tid), None)


def with_trial_timeout(objective: Callable[[optuna.Trial], Any], seconds: float | None
                       ) -> Callable[[optuna.Trial], Any]:
    """``objective`` stopped after ``seconds`` (recorded failed with the reason in user attribute ``error``)."""
    if not seconds:
        return objective

    def timed(trial: optuna.Trial) -> Any:
        try:
            with deadline(seconds):
                return objective(trial)
        except TrialTimeout as e:
            if "error" not in trial.user_attrs:
                trial.set_user_attr("error", f"TrialTimeout: {e}")
            raise

    return timed


__all__ = ["make_storage", "study_lock", "worker_number", "count_trials", "fail_dead_trials", "TrialTimeout",
           "deadline", "with_trial_timeout", "StudyStorage", "RetryDeadTrial", "WORKER_ATTR", "LOST_ATTR",
           "worker_identity", "signals_deferred"]
