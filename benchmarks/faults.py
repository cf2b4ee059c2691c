"""Fault tolerance, measured: is anything completed ever lost, is anything run twice?

Part 1 (single machine, SQLite): ``autocompress search`` is killed with SIGKILL at a random moment, 20 times,
each time followed by the same command (the resume); a last resume finishes the study. Prints completed trials
lost (goal 0: every trial COMPLETE at any kill is still COMPLETE with the same values at the end), the trials that
were running at a kill (failed with their reason) and how many of those were retried.

Part 2 (PostgreSQL on 127.0.0.1, started by scripts/postgres-test-server.sh): 4 worker processes run one study of
200 trials; 5 times along the way, a worker in the middle of a trial is SIGKILLed and restarted. Prints lost trials (goal 0: completed
trials missing later, trials left unfinished, dead trials not retried) and duplicated trials (goal 0: counted trials
beyond 200, a warm-start plan queued twice, a dead trial retried twice).

Tiny digits-mlp study (10 fine-tune steps, small timing loops) so it runs in minutes on 2 cores:

    .venv/bin/python benchmarks/faults.py                 # both parts
    .venv/bin/python benchmarks/faults.py --part kill --kills 5    # a quicker look
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import autocompress.search  # noqa: E402,F401  (bare postgresql:// URLs)
from autocompress.search import workers  # noqa: E402

STUDY = {
    "task": "digits-mlp",
    "sampler": "nsga2",
    "finetune": {"steps": 10},
    "latency": {"warmup": 2, "repeats": 5},
    "fidelity": {"promotion": False, "self_check": 0},
    "deployability_gate": False,
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _config(folder: Path, name: str, **overrides) -> Path:
    cfg = {**STUDY, "search_space": str(ROOT / "search_spaces" / "default.yaml"), **overrides}
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _search(path: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "autocompress", "search", str(path), "--no-progress", *extra],
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


_STUDIES: dict[tuple[str, str], optuna.Study] = {}


def _trials(url: str, name: str, states=None) -> list[optuna.trial.FrozenTrial]:
    try:
        if (url, name) not in _STUDIES:
            _STUDIES[url, name] = optuna.load_study(study_name=name, storage=url)
        return _STUDIES[url, name].get_trials(deepcopy=False, states=states)
    except Exception:  # not created yet
        return []


def _complete(trials) -> dict[int, list[float]]:
    return {t.number: list(t.values) for t in trials if t.state == optuna.trial.TrialState.COMPLETE}


def _lost(snapshots: list[dict[int, list[float]]], final) -> int:
    end = _complete(final)
    seen: dict[int, list[float]] = {}
    for snap in snapshots:
        seen.update(snap)
    return sum(1 for n, v in seen.items() if end.get(n) != v)


def _retry_report(final) -> dict[str, int]:
    by_number = {t.number: t for t in final}
    dead = [t for t in final if t.user_attrs.get("error", "").startswith("WorkerLost")]
    retries = collections.Counter(t.system_attrs["retry_history"][-1] for t in final
                                  if t.system_attrs.get("retry_history"))
    return {
        "dead": len(dead),
        "retried": sum(1 for t in dead if retries[t.number] >= 1),
        "retried_and_finished": sum(1 for t in final if t.system_attrs.get("retry_history")
                                    and t.state.is_finished()),
        "not_retried": sum(1 for t in dead if retries[t.number] == 0
                           and len(t.system_attrs.get("retry_history", [])) < workers.MAX_RETRY),
        "dead_again": sum(1 for t in dead if len(t.system_attrs.get("retry_history", [])) >= workers.MAX_RETRY),
        "retried_twice": sum(1 for n, c in retries.items() if c > 1 and n in by_number),
        "unfinished": sum(1 for t in final if t.state == optuna.trial.TrialState.RUNNING),
    }


def part_kill(kills: int, seed: int) -> dict:
    rng = random.Random(seed)
    folder = Path(tempfile.mkdtemp(prefix="autocompress-faults-"))
    path = _config(folder, "kill", n_trials=1000)
    url, name = f"sqlite:///{folder / 'kill' / 'study.db'}", "kill"
    snapshots, moments, running_at_kill = [], [], set()
    start = time.perf_counter()
    for i in range(kills):
        proc = _search(path)
        moment = rng.uniform(0.5, 12.0)  # start-up, teacher, inside a trial, between trials...
        time.sleep(moment)
        proc.kill()
        proc.wait()
        moments.append(round(moment, 2))
        trials = _trials(url, name)
        snapshots.append(_complete(trials))
        running_at_kill |= {t.number for t in trials if t.state == optuna.trial.TrialState.RUNNING}
        print(f"  kill {i + 1:2d} at {moment:5.2f} s: {len(snapshots[-1])} completed so far", flush=True)
    finished, _ = workers.count_trials(_trials(url, name))
    proc = _search(path, "--n-trials", str(finished + 3))  # the last resume, left to finish
    proc.wait()
    final = _trials(url, name)
    out = {"kills": kills, "moments_s": moments, "completed": len(_complete(final)),
           "lost": _lost(snapshots, final), "running_at_kill": len(running_at_kill), **_retry_report(final),
           "exit_code_last_resume": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    print(f"SIGKILL x{kills} + resume: completed trials lost: {out['lost']}; trials running at a kill: "
          f"{len(running_at_kill)}, all failed as WorkerLost: {out['dead'] == len(running_at_kill)}; retried: "
          f"{out['retried']} ({out['retried_and_finished']} retries finished; {out['dead_again']} retries killed "
          f"again and, by design, not retried twice; {out['not_retried']} missed); {out['completed']} completed "
          f"in all; {out['seconds']} s")
    return out


def part_workers(n_workers: int, n_trials: int, restarts: int, seed: int) -> dict:
    rng = random.Random(seed)
    script = ROOT / "scripts" / "postgres-test-server.sh"
    pg = tempfile.mkdtemp(prefix="autocompress-faults-pg-")
    started = subprocess.run([str(script), "start", pg], capture_output=True, text=True)
    if started.returncode != 0:
        raise SystemExit(f"cannot start PostgreSQL: {started.stderr}")
    url = started.stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="autocompress-faults-"))
    # 50 fine-tune steps (trials of about a second) so that a kill can land inside a trial.
    path = _config(folder, "pg", n_trials=n_trials, storage=url, heartbeat_s=5, finetune={"steps": 50})
    start = time.perf_counter()
    try:
        procs = [_search(path) for _ in range(n_workers)]
        snapshots, killed, mid_trial = [], 0, []
        # Kill and restart a random worker in the middle of a trial, `restarts` times, spread over the study.
        plan = sorted(rng.uniform(0.1, 0.8) for _ in range(restarts))
        running_state = (optuna.trial.TrialState.RUNNING,)
        while any(p.poll() is None for p in procs):
            time.sleep(0.2)
            if not plan or len(_complete(_trials(url, "pg"))) / n_trials < plan[0]:
                continue
            snapshot = _complete(_trials(url, "pg"))
            busy = {t.system_attrs.get(workers.WORKER_ATTR, {}).get("pid"): t.number
                    for t in _trials(url, "pg", running_state)}
            candidates = [i for i, p in enumerate(procs) if p.poll() is None and p.pid in busy]
            if not candidates:
                continue
            i = rng.choice(candidates)
            procs[i].kill()
            procs[i].wait()
            killed += 1
            snapshots.append(snapshot)
            victim = busy[procs[i].pid]
            state = next(t.state for t in _trials(url, "pg") if t.number == victim)
            if state != optuna.trial.TrialState.COMPLETE:  # not finished in the instant before the kill
                mid_trial.append(victim)
                plan.pop(0)
            print(f"  killed worker {i} while it ran trial {victim} ({state.name} just after the kill) at "
                  f"{len(snapshot) / n_trials:.0%} of the study; restarting it", flush=True)
            procs[i] = _search(path)
        codes = [p.returncode for p in procs]
        final = _trials(url, "pg")
        finished, running = workers.count_trials(final)
        warm = collections.Counter(t.user_attrs["warm_start"] for t in final if "warm_start" in t.user_attrs
                                   and not t.system_attrs.get("retry_history"))
        report = _retry_report(final)
        duplicated = max(0, finished - n_trials) + sum(c - 1 for c in warm.values() if c > 1) + report["retried_twice"]
        lost = _lost(snapshots, final) + report["unfinished"] + report["not_retried"] + max(0, n_trials - finished)
        plans = collections.Counter(json.dumps(t.params, sort_keys=True) for t in final
                                    if t.state == optuna.trial.TrialState.COMPLETE
                                    and not t.system_attrs.get("retry_history"))
        pids = {t.system_attrs.get(workers.WORKER_ATTR, {}).get("pid") for t in final if t.datetime_start}
        by_number = {t.number: t for t in final}
        killed_retried = sum(1 for n in mid_trial if by_number[n].user_attrs.get("error", "").startswith("WorkerLost")
                             and any(t.system_attrs.get("failed_trial") == n and t.state.is_finished()
                                     for t in final))
        out = {"workers": n_workers, "n_trials": n_trials, "worker_kills": killed, "exit_codes": codes,
               "killed_mid_trial": len(mid_trial), "killed_trials_failed_and_retried": killed_retried,
               "finished_counted": finished, "running_left": running, "lost": lost, "duplicated": duplicated,
               "warm_start_queued": sum(warm.values()), "identical_plans_sampled": sum(c - 1 for c in plans.values()),
               "worker_processes": len(pids - {None}), **report, "seconds": round(time.perf_counter() - start, 1)}
        print(f"{n_workers} workers x {n_trials} trials on PostgreSQL ({killed} worker SIGKILLs, {len(mid_trial)} "
              f"mid-trial): lost {lost}, duplicated {duplicated}; {finished} trials counted; killed trials failed "
              f"as WorkerLost and retried: {killed_retried}/{len(mid_trial)}; warm start queued "
              f"{sum(warm.values())}x (once each); {len(pids - {None})} worker processes; {out['seconds']} s")
        return out
    finally:
        subprocess.run([str(script), "stop", pg], capture_output=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--part", choices=("kill", "workers", "both"), default="both")
    p.add_argument("--kills", type=int, default=20)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--trials", type=int, default=200)
    p.add_argument("--restarts", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    args = p.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(Path.home() / ".cache" / "autocompress"))
    ENV["AUTOCOMPRESS_CACHE"] = os.environ["AUTOCOMPRESS_CACHE"]
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from autocompress.tasks import load_task

    load_task("digits-mlp")  # the teacher is trained (and cached) once, not inside a run that gets killed
    results = {}
    if args.part in ("kill", "both"):
        results["kill"] = part_kill(args.kills, args.seed)
    if args.part in ("workers", "both"):
        results["workers"] = part_workers(args.workers, args.trials, args.restarts, args.seed)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
