"""End-to-end studies on scikit-learn digits: results saved, resumable, failures recorded, Ctrl-C safe."""

import os
import signal
import sqlite3
import subprocess
import sys
import time
import warnings

import optuna
import pytest
from conftest import ROOT, write_study

from autocompress.cli import main
from autocompress.config import load_study_config
from autocompress.front import load_front
from autocompress.plan import CompressionPlan
from autocompress.search import trial as trial_module
from autocompress.search.driver import run_study


def _complete(loaded):
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    return study, study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))


def test_small_study_end_to_end(tmp_path, digits_task):
    loaded = load_study_config(write_study(tmp_path, n_trials=4, constraints={"min_accuracy": 0.5}))
    out = run_study(loaded, progress=False, task=digits_task)
    assert (tmp_path / "s" / "study.db").is_file()
    study, done = _complete(loaded)
    assert len(done) == 4 and not out.interrupted
    assert study.metric_names == ["accuracy", "latency_ms", "size_bytes"]
    teacher = study.user_attrs["teacher"]
    for t in done:
        ua = t.user_attrs
        plan = CompressionPlan.from_dict(ua["plan"])  # every trial stores its replayable plan
        assert t.values == [ua["accuracy"], ua["latency_ms"], ua["size_bytes"]]
        assert 0 <= ua["accuracy"] <= 1 and ua["latency_ms"] > 0 and ua["cost_s"] > 0
        assert ua["compression_ratio"] == pytest.approx(teacher["size_bytes"] / ua["size_bytes"])
        assert ua["constraints"] == {"min_accuracy": pytest.approx(0.5 - ua["accuracy"])}
        assert isinstance(plan, CompressionPlan)
    front = load_front(loaded.storage_url)
    assert not front.front.empty and front.front["feasible"].all()
    assert set(front.front["trial"]) <= {t.number for t in done}
    assert 0 < front.hypervolume <= 1.0 * 2.0 * 1.0
    best = front.pick("accuracy >= 0", by="size_bytes")
    assert best["size_bytes"] == front.front["size_bytes"].min()


def test_resume_keeps_completed_trials(tmp_path, digits_task):
    loaded = load_study_config(write_study(tmp_path, n_trials=2))
    run_study(loaded, progress=False, task=digits_task)
    _, first = _complete(loaded)
    out = run_study(loaded, n_trials=4, progress=False, task=digits_task)
    _, second = _complete(loaded)
    assert out.new_trials == 2 and len(second) == 4
    before = {t.number: t.values for t in first}
    assert all(before[t.number] == t.values for t in second if t.number in before)
    assert run_study(loaded, n_trials=4, progress=False, task=digits_task).new_trials == 0  # already done


def test_failing_trial_is_recorded_and_study_goes_on(tmp_path, digits_task, monkeypatch):
    real = trial_module.candidate_latency
    calls = {"n": 0}

    def flaky(self, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("simulated out-of-memory")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(trial_module, "candidate_latency", flaky)
    loaded = load_study_config(write_study(tmp_path, n_trials=3))
    run_study(loaded, progress=False, task=digits_task)
    front = load_front(loaded.storage_url)
    assert len(front.trials) == 2
    assert front.failed["reason"].tolist() == ["RuntimeError: simulated out-of-memory"]


def test_objective_subset_and_infeasible_front(tmp_path, digits_task):
    loaded = load_study_config(write_study(tmp_path, n_trials=2, objectives={"accuracy": "maximize"},
                                           constraints={"min_accuracy": 0.999999}))
    run_study(loaded, progress=False, task=digits_task)
    front = load_front(loaded.storage_url)
    assert len(front.trials) == 2 and not front.trials["feasible"].any()
    assert front.front.empty  # nothing feasible: the study is still saved and readable
    with pytest.raises(Exception, match="no feasible front member"):
        front.pick("accuracy > 0")


def test_changed_objectives_on_existing_study_is_refused(tmp_path, digits_task):
    path = write_study(tmp_path, n_trials=1)
    run_study(load_study_config(path), progress=False, task=digits_task)
    path2 = write_study(tmp_path, n_trials=1, objectives={"accuracy": "maximize"})
    with pytest.raises(Exception, match="already exists with objectives"):
        run_study(load_study_config(path2), progress=False, task=digits_task)


def test_front_cli_formats_and_missing_study(tmp_path, digits_task, capsys):
    path = write_study(tmp_path, n_trials=2)
    run_study(load_study_config(path), progress=False, task=digits_task)
    capsys.readouterr()
    assert main(["front", str(path)]) == 0
    table = capsys.readouterr().out
    assert "hypervolume" in table and "teacher: accuracy" in table
    assert main(["front", str(tmp_path / "s"), "--format", "csv"]) == 0
    csv = capsys.readouterr().out
    assert csv.splitlines()[0].startswith("trial,accuracy,test_accuracy,latency_ms,size_bytes")
    assert main(["front", str(path), "--format", "json"]) == 0
    import json

    data = json.loads(capsys.readouterr().out)
    assert data["members"] and data["members"][0]["plan"]["type"] == "CompressionPlan"
    missing = write_study(tmp_path, file="never_run")
    assert main(["front", str(missing)]) == 2
    assert "run `autocompress search` first" in capsys.readouterr().err
    assert not (tmp_path / "never_run").exists()


@pytest.mark.parametrize("cmd", [[], ["search"], ["front"], ["validate"], ["sensitivity"]])
def test_help_everywhere(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: autocompress" in capsys.readouterr().out


def test_sigusr1_prints_every_thread_stack(tmp_path):
    """After the CLI has started, `kill -USR1` makes the process print its threads' stacks (and go on running)."""
    path = write_study(tmp_path)
    code = ("import os, signal, sys, time; from autocompress.cli import main; main(['validate', sys.argv[1]]); "
            "os.kill(os.getpid(), signal.SIGUSR1); time.sleep(0.2); print('still running')")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], env={**os.environ, "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "still running" in proc.stdout
    assert "Current thread" in proc.stderr and "most recent call first" in proc.stderr


def test_ctrl_c_stops_cleanly_then_resumes(tmp_path):
    """A real SIGINT to a running `autocompress search`: exit 130, completed trials kept, the rerun continues."""
    path = write_study(tmp_path, n_trials=200)
    loaded = load_study_config(path)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "autocompress", "search", str(path), "--no-progress"],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    n = 0
    while time.time() < deadline and n < 3:
        time.sleep(0.5)
        db = tmp_path / "s" / "study.db"
        if db.exists():
            # Read-only poll with sqlite3: opening the storage through Optuna here would race the search
            # process's own schema creation.
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
                    n = con.execute("SELECT count(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
            except sqlite3.Error:
                n = 0
    if n < 3:
        proc.kill()
        raise AssertionError("study did not make progress: " + proc.communicate()[1][-1500:])
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:  # slow to stop: its stacks say where (the CLI prints them on SIGUSR1)
        proc.send_signal(signal.SIGUSR1)
        try:
            out, err = proc.communicate(timeout=100)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGUSR1)
            time.sleep(3)
            proc.kill()
            raise AssertionError("no exit 120 s after Ctrl-C:\n" + proc.communicate()[1][-8000:]) from None
        warnings.warn("`autocompress search` took over 20 s to stop after Ctrl-C; its stacks then:\n" + err[-8000:],
                      stacklevel=1)
    assert proc.returncode == 130, err
    assert "every completed trial is kept" in err
    study, kept = _complete(loaded)
    assert len(kept) >= n
    finished = [t for t in study.get_trials() if t.state.is_finished()]
    assert main(["search", str(path), "--n-trials", str(len(finished) + 2), "--no-progress"]) == 0
    study, after = _complete(loaded)
    assert len([t for t in study.get_trials() if t.state.is_finished()]) == len(finished) + 2
    assert {t.number for t in kept} <= {t.number for t in after}  # nothing completed was lost


def test_front_counts_stopped_trials_apart_from_failed_ones(tmp_path, digits_task, capsys):
    path = write_study(tmp_path, n_trials=8, sampler="random", warm_start=False,
                       fidelity={"self_check": 0})  # successive halving on, no trial exempt from it
    run_study(load_study_config(path), progress=False, task=digits_task)
    front = load_front(load_study_config(path).storage_url)
    stopped = int((front.failed["state"] == "PRUNED").sum())
    assert stopped > 0 and not (front.failed["state"] == "FAIL").any()
    capsys.readouterr()
    assert main(["front", str(path)]) == 0
    out = capsys.readouterr().out
    assert f"{len(front.trials)} completed trials, {stopped} stopped early by successive halving, 0 failed" in out


def test_the_first_warm_start_is_one_uniform_int8_quantization(tmp_path, digits_task):
    """What a user gets without a search (8-bit weights and inputs everywhere, int8 kernels on the runtime) is the
    first trial of every study, so the front is never worse than it."""
    loaded = load_study_config(write_study(tmp_path, n_trials=1, fidelity={"promotion": False, "self_check": 0}))
    run_study(loaded, progress=False, task=digits_task)
    first = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url).trials[0]
    assert first.user_attrs["warm_start"] == "uniform w8 s0 a8"
    plan = CompressionPlan.from_dict(first.user_attrs["plan"])
    assert {(lp.weight_bits, lp.activation_bits, lp.sparsity) for lp in plan.layers.values()} == {(8, 8, 0.0)}
    assert first.user_attrs["kernels"]["int8"] and not first.user_attrs["kernels"]["float"]
