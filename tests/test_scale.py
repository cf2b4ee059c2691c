"""Scaling out and surviving faults: several workers on PostgreSQL, Ray Tune (local and a multi-node local
cluster with a node lost), SIGKILL + resume, dead trials found by heartbeat, and trials that raise, return NaN,
run out of memory or exceed ``trial_timeout_s``."""

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings

import optuna
import pytest
import torch
from conftest import ROOT, write_study

from autocompress.cli import main
from autocompress.config import load_study_config
from autocompress.evaluate.candidate import Candidate
from autocompress.front import Front
from autocompress.search import workers
from autocompress.search.driver import run_study
from autocompress.search.study import WARM_START

# Cheap, uniform trials: one fidelity level, no self-check, no post-study export gate.
FAST = {"fidelity": {"promotion": False, "self_check": 0}, "deployability_gate": False}
# What every completed trial carries, whichever backend ran it.
TRIAL_ATTRS = {"plan", "accuracy", "test_accuracy", "latency_ms", "size_bytes", "compression_ratio", "cost_s",
               "constraints", "skipped", "seconds", "fidelity"}
ENV = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests")]), "OMP_NUM_THREADS": "1"}


def _study(loaded):
    return optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)


def _by_state(study, state):
    return [t for t in study.get_trials(deepcopy=False) if t.state == state]


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server on 127.0.0.1 (scripts/postgres-test-server.sh)."""
    script = ROOT / "scripts" / "postgres-test-server.sh"
    folder = tempfile.mkdtemp(prefix="autocompress-pg-")
    proc = subprocess.run([str(script), "start", folder], capture_output=True, text=True)
    if proc.returncode != 0:
        shutil.rmtree(folder, ignore_errors=True)
        pytest.skip(f"no PostgreSQL server (run `{script} install`): {proc.stderr.strip()[:300]}")
    yield proc.stdout.strip()
    subprocess.run([str(script), "stop", folder], capture_output=True)


def test_four_workers_on_postgres_share_one_study(tmp_path, postgres_url, digits_task):
    """4 processes started at once on one PostgreSQL study: the teacher is measured and the warm start queued
    once, the study ends with exactly n_trials trials, every trial is fully recorded."""
    path = write_study(tmp_path, file="pg4", n_trials=8, sampler="nsga2", population_size=4, heartbeat_s=2,
                       storage=postgres_url, **FAST)
    loaded = load_study_config(path)
    cmd = [sys.executable, "-m", "autocompress", "search", str(path), "--no-progress"]
    procs = [subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(4)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err[-2000:]
    study = _study(loaded)
    trials = study.get_trials(deepcopy=False)
    assert workers.count_trials(trials) == (8, 0)
    assert not _by_state(study, optuna.trial.TrialState.WAITING)
    warm = [t.user_attrs["warm_start"] for t in trials if "warm_start" in t.user_attrs]
    assert warm and len(warm) == len(set(warm)) <= len(WARM_START) + 1  # queued once, not once per worker (+ student)
    assert study._storage.get_study_system_attrs(study._study_id)[workers.WORKERS_ATTR] == 4
    pids = {t.system_attrs[workers.WORKER_ATTR]["pid"] for t in trials if t.datetime_start}
    assert len(pids) >= 2, "the trials were not shared between workers"
    for t in _by_state(study, optuna.trial.TrialState.COMPLETE):
        assert TRIAL_ATTRS <= set(t.user_attrs), TRIAL_ATTRS - set(t.user_attrs)
    assert main(["front", postgres_url, "--study-name", loaded.study_name]) == 0


def _search(*args: str, timeout: float = 300, env: dict | None = None) -> subprocess.CompletedProcess:
    """`autocompress search ...` in a child process: a Ray driver whose runtime fails (Ray ends its driver
    process then) must not take the test run down with it."""
    return subprocess.run([sys.executable, "-m", "autocompress", "search", *args, "--no-progress"], env=env or ENV,
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # timing-sensitive under load; run with `make test-all`
def test_ray_backend_writes_the_same_trials(tmp_path, capsys):
    """`search --backend ray` on a local Ray instance: the trials land in the study's storage with the same
    user attributes as the local driver's, run in Ray worker processes; `front` reads them as usual."""
    path = write_study(tmp_path, file="ray", n_trials=3, **FAST)
    loaded = load_study_config(path)
    proc = _search(str(path), "--backend", "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    study = _study(loaded)
    trials = study.get_trials(deepcopy=False)
    assert workers.count_trials(trials) == (3, 0)
    complete = _by_state(study, optuna.trial.TrialState.COMPLETE)
    assert complete
    for t in complete:
        assert TRIAL_ATTRS <= set(t.user_attrs), TRIAL_ATTRS - set(t.user_attrs)
        assert t.values == [t.user_attrs[k] for k in ("accuracy", "latency_ms", "size_bytes")]
    assert os.getpid() not in {t.system_attrs[workers.WORKER_ATTR]["pid"] for t in trials if t.datetime_start}
    capsys.readouterr()
    assert main(["front", str(path)]) == 0
    assert f"{len(complete)} completed trials" in capsys.readouterr().out


@pytest.mark.slow  # timing-sensitive under load; run with `make test-all`
def test_sigkill_then_resume_keeps_every_completed_trial(tmp_path):
    """SIGKILL of a running single-machine study; the same command resumes: every completed trial is kept
    unchanged, the trial that was running is failed with its reason and run again."""
    # 300 fine-tune steps: trials long enough that the kill lands in one (10-step trials finish 200 in ~20 s)
    path = write_study(tmp_path, n_trials=200, finetune={"steps": 300}, **FAST)
    loaded = load_study_config(path)
    log = tmp_path / "search.log"  # a file, not a pipe: a child writing much to an unread pipe would block
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "search", str(path), "--no-progress"],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=log.open("w"), text=True)
    deadline, running = time.time() + 120, []
    while time.time() < deadline:
        time.sleep(0.2)
        if not (tmp_path / "s" / "study.db").exists():
            continue
        try:
            study = _study(loaded)
            done = _by_state(study, optuna.trial.TrialState.COMPLETE)
            running = _by_state(study, optuna.trial.TrialState.RUNNING)
        except Exception:
            continue
        if len(done) >= 2 and running:
            break
    proc.kill()
    proc.wait()
    assert running, f"the study did not get going; its log ends: {log.read_text()[-2000:]}"
    kept = {t.number: t.values for t in _by_state(_study(loaded), optuna.trial.TrialState.COMPLETE)}
    killed = {t.number for t in _by_state(_study(loaded), optuna.trial.TrialState.RUNNING)}
    finished, _ = workers.count_trials(_study(loaded).get_trials(deepcopy=False))
    assert main(["search", str(path), "--n-trials", str(finished + 3), "--no-progress"]) == 0
    study = _study(loaded)
    after = {t.number: t for t in study.get_trials(deepcopy=False)}
    assert all(after[n].values == v for n, v in kept.items())  # nothing completed is lost or changed
    for n in killed:
        assert after[n].state == optuna.trial.TrialState.FAIL
        assert after[n].user_attrs["error"].startswith("WorkerLost: the process running it")
        retries = [t for t in after.values() if t.system_attrs.get("failed_trial") == n]
        assert len(retries) == 1 and retries[0].state.is_finished()
        assert retries[0].params == after[n].params
    assert workers.count_trials(list(after.values())) == (finished + 3, 0)


def test_trial_silent_on_another_machine_is_failed_and_retried(tmp_path, digits_task):
    """A trial whose worker elsewhere stopped sending heartbeats (3 x heartbeat_s) is failed with the reason
    and run again by the next worker."""
    loaded = load_study_config(write_study(tmp_path, n_trials=3, heartbeat_s=1, warm_start=False, **FAST))
    run_study(loaded, n_trials=1, progress=False, task=digits_task)
    storage = workers.make_storage(loaded.storage_url, heartbeat_s=1)
    study = optuna.load_study(study_name=loaded.study_name, storage=storage)
    study.enqueue_trial({"all:weight_bits": 8})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lost = study.ask()  # a worker elsewhere starts this trial, then its machine goes away
    storage.set_trial_system_attr(lost._trial_id, workers.WORKER_ATTR,
                                  {"host": "elsewhere", "boot": "-", "pid": 1, "start": "0"})
    storage.record_heartbeat(lost._trial_id)
    time.sleep(3.5)
    run_study(loaded, n_trials=3, progress=False, task=digits_task)
    trials = {t.number: t for t in _study(loaded).get_trials(deepcopy=False)}
    assert trials[lost.number].state == optuna.trial.TrialState.FAIL
    study = _study(loaded)
    reason = study.user_attrs[workers.LOST_ATTR.format(lost.number)]  # Optuna failed it: the reason is the study's
    assert reason.startswith("WorkerLost: its worker sent no heartbeat for more than 3 s")
    assert Front.from_study(study).failed.set_index("trial").loc[lost.number, "reason"] == reason
    retry = [t for t in trials.values() if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retry) == 1 and retry[0].state.is_finished() and retry[0].params["all:weight_bits"] == 8
    assert "error" not in retry[0].user_attrs or retry[0].state == optuna.trial.TrialState.FAIL
    assert workers.count_trials(list(trials.values())) == (3, 0)


def _faulty_accuracy(kind: str, bad_trial: int, seed: int):
    real = Candidate.accuracy

    def accuracy(self, split="val"):
        if self.seed - seed != bad_trial:
            return real(self, split)
        if kind == "raise":
            raise RuntimeError("dataset shard unreadable")
        if kind == "nan":
            return float("nan")
        if kind == "oom":
            torch.empty(1 << 40, dtype=torch.uint8)  # 1 TiB: the allocator refuses
            raise MemoryError("1 TiB allocation unexpectedly succeeded")
        time.sleep(120)  # "timeout"
        return real(self, split)

    return accuracy


@pytest.mark.parametrize("kind,reason", [
    ("raise", "RuntimeError: dataset shard unreadable"),
    ("nan", "non-finite objective values"),
    ("oom", "can't allocate memory"),
    ("timeout", "TrialTimeout: the trial ran longer than trial_timeout_s=10 s"),
])
def test_bad_trial_is_recorded_failed_and_study_goes_on(tmp_path, digits_task, monkeypatch, kind, reason):
    monkeypatch.setattr(Candidate, "accuracy", _faulty_accuracy(kind, bad_trial=1, seed=0))
    # no short-level range test: its candidates (seeds 0, 1) would meet the fault meant for trial 1
    loaded = load_study_config(write_study(tmp_path, n_trials=3, trial_timeout_s=10,
                                           finetune={"steps": 10, "short_lr": None}, **FAST))
    start = time.perf_counter()
    run_study(loaded, progress=False, task=digits_task)
    trials = [t for t in _study(loaded).get_trials(deepcopy=False) if t.datetime_start]
    assert [t.state.name for t in trials] == ["COMPLETE", "FAIL", "COMPLETE"]
    assert reason in trials[1].user_attrs["error"]
    assert time.perf_counter() - start < 60


def test_trial_timeout_in_a_worker_thread():
    """Ray runs trials in a thread of its worker: the time limit still stops them."""
    box = {}

    def body():
        try:
            with workers.deadline(0.5):
                for _ in range(200):
                    time.sleep(0.01)
            box["result"] = "finished"
        except workers.TrialTimeout as e:
            box["result"] = str(e)

    t = threading.Thread(target=body)
    t.start()
    t.join(10)
    assert "trial_timeout_s=0.5 s" in box["result"]
    with workers.deadline(5):  # a block finishing in time is not disturbed
        time.sleep(0.01)


def test_budget_counts_retried_failures_once():
    mk = optuna.trial.create_trial
    dist = {"x": optuna.distributions.CategoricalDistribution([1, 2])}
    trials = [mk(state=optuna.trial.TrialState.COMPLETE, values=[1.0], params={"x": 1}, distributions=dist),
              mk(state=optuna.trial.TrialState.FAIL, params={"x": 2}, distributions=dist),
              mk(state=optuna.trial.TrialState.COMPLETE, values=[1.0], params={"x": 2}, distributions=dist,
                 system_attrs={"failed_trial": 1, "retry_history": [1]}),
              mk(state=optuna.trial.TrialState.PRUNED, params={"x": 1}, distributions=dist),
              mk(state=optuna.trial.TrialState.WAITING, params={"x": 1}, distributions=dist)]
    for i, t in enumerate(trials):
        t.number = i
    assert workers.count_trials(trials) == (3, 0)


@pytest.mark.slow
def test_ray_worker_node_lost_mid_study(tmp_path, postgres_url, digits_task, monkeypatch):
    """A multi-node local Ray cluster (ray.cluster_utils.Cluster) loses a worker node while trials run on it:
    Tune runs its trials again elsewhere, the study trial that was running there is failed with its reason and
    retried, and the study still ends with n_trials trials."""
    monkeypatch.setenv("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # every node on 127.0.0.1
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    patched, ray_constants.ENABLE_RAY_CLUSTER = ray_constants.ENABLE_RAY_CLUSTER, False
    # The nodes are this process's children, but this process is no Ray driver: the study runs in a child.
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        doomed = cluster.add_node(num_cpus=1)
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        # 150 fine-tune steps: trials of about a second, so the node goes away in the middle of one.
        path = write_study(tmp_path, file="nodes", n_trials=10, storage=postgres_url, heartbeat_s=2,
                           finetune={"steps": 150}, **FAST)
        loaded = load_study_config(path)
        box = {}

        import psutil

        raylet = doomed.all_processes["raylet"][0].process.pid

        def on_doomed_node(pid: int) -> bool:
            try:
                return raylet in {p.pid for p in psutil.Process(pid).parents()}
            except psutil.Error:
                return False

        def kill_node_when_busy():
            end, study = time.time() + 240, None
            while time.time() < end:
                time.sleep(0.2)
                try:
                    study = study or _study(loaded)
                    if len(study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))) < 2:
                        continue
                    running = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,))
                    there = [t.number for t in running if on_doomed_node(t.system_attrs[workers.WORKER_ATTR]["pid"])]
                    box.setdefault("pids", set()).update(t.system_attrs[workers.WORKER_ATTR]["pid"] for t in running
                                                         if t.number in there)
                except Exception:
                    continue
                if there:
                    # a machine that goes away takes its processes at once: the trials' workers first (a raylet's
                    # workers otherwise outlive it for a moment and may finish the trial), then the node
                    for pid in box["pids"]:
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    cluster.remove_node(doomed, allow_graceful=False)
                    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
                    # the trials that had not finished in the instant before the node went
                    box["running"] = {n for n in there if not states[n].is_finished()
                                      or states[n] == optuna.trial.TrialState.FAIL}
                    return

        killer = threading.Thread(target=kill_node_when_busy, daemon=True)
        killer.start()
        proc = _search(str(path), "--backend", "ray", "--address", cluster.address, timeout=600,
                       env={**ENV, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"})
        killer.join(5)
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert box.get("running"), "the node was not removed while a trial ran there"
        trials = {t.number: t for t in _study(loaded).get_trials(deepcopy=False)}
        lost = [t for t in trials.values() if t.user_attrs.get("error", "").startswith("WorkerLost")]
        assert lost and {t.system_attrs[workers.WORKER_ATTR]["pid"] for t in lost} <= box["pids"]
        for t in lost:
            retry = [r for r in trials.values() if r.system_attrs.get("failed_trial") == t.number]
            assert len(retry) == 1 and retry[0].state.is_finished()
        assert workers.count_trials(list(trials.values())) == (10, 0)
    finally:
        cluster.shutdown()
        ray_constants.ENABLE_RAY_CLUSTER = patched


@pytest.mark.slow
def test_ray_backend_time_budget(tmp_path):
    """n_trials unset, timeout_s set: Tune runs until the time is up; trials started before it finish."""
    path = write_study(tmp_path, file="timed", n_trials=None, timeout_s=25, **FAST)
    loaded = load_study_config(path)
    start = time.perf_counter()
    proc = _search(str(path), "--backend", "ray")
    assert proc.returncode == 0, proc.stderr[-3000:]
    trials = _study(loaded).get_trials(deepcopy=False)
    finished, running = workers.count_trials(trials)
    assert finished >= 2 and running == 0
    assert time.perf_counter() - start < 25 + 90


@pytest.mark.parametrize("write", ["user_attr", "param"])  # a param goes through Optuna's cache to a private call
def test_ctrl_c_inside_a_storage_write_waits_for_it(tmp_path, write):
    """SIGINT arriving in the middle of a storage write is raised once the write is committed: no transaction is
    left open holding the database's lock (the next write, from another process, goes through at once)."""
    import signal

    import sqlalchemy

    url = f"sqlite:///{tmp_path}/s.db"
    storage = workers.make_storage(url)
    study = optuna.create_study(storage=storage, study_name="s")
    trial = study.ask()
    fired = []

    @sqlalchemy.event.listens_for(storage.engine, "before_cursor_execute")
    def interrupt(conn, cursor, statement, *args):
        if statement.lstrip().upper().startswith(("INSERT", "UPDATE")) and not fired:
            fired.append(statement)
            # to this (the main) thread: a process-wide signal may be taken by another thread of the test process
            # and reach Python's handler only later
            signal.pthread_kill(threading.main_thread().ident, signal.SIGINT)

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # whatever earlier tests left installed
    try:
        with pytest.raises(KeyboardInterrupt):
            if write == "user_attr":
                trial.set_user_attr("k", 1)
            else:
                trial.suggest_categorical("p", [1, 2])
    finally:
        signal.signal(signal.SIGINT, previous)
    assert fired
    sqlalchemy.event.remove(storage.engine, "before_cursor_execute", interrupt)
    if write == "user_attr":  # the interrupted write was completed
        assert study.trials[0].user_attrs == {"k": 1}
    else:
        assert set(study.trials[0].params) == {"p"}
    other = subprocess.run([sys.executable, "-c",
                            "import sqlite3, sys; con = sqlite3.connect(sys.argv[1], timeout=2); "
                            "con.execute('CREATE TABLE probe (x)'); con.commit()", str(tmp_path / "s.db")],
                           capture_output=True, text=True, timeout=60)
    assert other.returncode == 0, other.stderr  # "database is locked" when a write transaction was left open
