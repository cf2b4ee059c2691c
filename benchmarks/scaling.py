"""Scaling out, measured: trials per minute with 1 and 2 workers, as local processes sharing a PostgreSQL study
and on Ray Tune (a local Ray instance with 1 or 2 CPUs), and Ray's per-trial overhead against the local driver.

Each configuration runs a fresh study of the same digits-mlp search (default search space, 100 fine-tune
steps, small timing loops, one fidelity level, no export gate) on a throwaway PostgreSQL server on 127.0.0.1.

Figures per configuration:

- ``startup_s``: from launch to the first trial's start (process start, imports, task, ``ray.init``)
- ``trials_per_min``: trials / (last trial's end - first trial's start), i.e. throughput once running
- ``cost_s``: mean time inside the objective (what the trial itself costs)
- ``gap_s``: mean time per trial per worker not spent in the objective (scheduling, storage, sampling)

    .venv/bin/python benchmarks/scaling.py             # 30 trials per configuration
    .venv/bin/python benchmarks/scaling.py --trials 10 # a quicker look
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

STUDY = {
    "task": "digits-mlp",
    "sampler": "nsga2",
    "search_space": str(ROOT / "search_spaces" / "default.yaml"),
    "finetune": {"steps": 100},
    "latency": {"warmup": 2, "repeats": 5},
    "fidelity": {"promotion": False, "self_check": 0},
    "deployability_gate": False,
    "warm_start": False,
}
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _load() -> float:
    return round(os.getloadavg()[0], 2)


def _figures(url: str, name: str, launched: float, workers: int) -> dict:
    trials = [t for t in optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)
              if t.state.is_finished() and t.datetime_start and t.datetime_complete]
    first = min(t.datetime_start.timestamp() for t in trials)
    last = max(t.datetime_complete.timestamp() for t in trials)
    span = last - first
    cost = statistics.mean(t.user_attrs.get("cost_s", 0.0) for t in trials)
    return {"trials": len(trials), "workers": workers, "load_after": _load(), "startup_s": round(first - launched, 1),
            "span_s": round(span, 1), "trials_per_min": round(60 * len(trials) / span, 1),
            "cost_s": round(cost, 3), "gap_s": round(span * workers / len(trials) - cost, 3)}


def run_local(url: str, folder: Path, n_workers: int, n_trials: int) -> dict:
    name = f"local{n_workers}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "n_trials": n_trials, "storage": url}))
    launched = time.time()
    procs = [subprocess.Popen([sys.executable, "-m", "autocompress", "search", str(path), "--no-progress"],
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(n_workers)]
    for p in procs:
        _, err = p.communicate()
        if p.returncode != 0:
            raise SystemExit(f"worker failed: {err[-2000:]}")
    return {"backend": "local processes", **_figures(url, name, launched, n_workers),
            "wall_s": round(time.time() - launched, 1)}


def run_ray(url: str, folder: Path, cpus: int, n_trials: int) -> dict:
    """In a child process (a fresh Ray instance each time): ray.init(num_cpus=cpus), then the ray backend."""
    name = f"ray{cpus}"
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({**STUDY, "n_trials": n_trials, "storage": url}))
    code = f"""
import os, logging
os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
import ray
ray.init(num_cpus={cpus}, include_dashboard=False, log_to_driver=False, logging_level=logging.WARNING,
         runtime_env={{"env_vars": {{"PYTHONPATH": {str(ROOT)!r}, "OMP_NUM_THREADS": "1"}}}})
from autocompress.config import load_study_config
from autocompress.search.driver import run_study
run_study(load_study_config({str(path)!r}), progress=False, backend="ray")
"""
    launched = time.time()
    proc = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"ray run failed: {proc.stderr[-2000:]}")
    return {"backend": "Ray Tune", **_figures(url, name, launched, cpus), "wall_s": round(time.time() - launched, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    os.environ.setdefault("AUTOCOMPRESS_CACHE", str(Path.home() / ".cache" / "autocompress"))
    ENV["AUTOCOMPRESS_CACHE"] = os.environ["AUTOCOMPRESS_CACHE"]
    from autocompress.tasks import load_task

    load_task("digits-mlp")  # teacher trained and cached before anything is timed
    script = ROOT / "scripts" / "postgres-test-server.sh"
    pg = tempfile.mkdtemp(prefix="autocompress-scaling-pg-")
    started = subprocess.run([str(script), "start", pg], capture_output=True, text=True)
    if started.returncode != 0:
        raise SystemExit(f"cannot start PostgreSQL: {started.stderr}")
    url = started.stdout.strip()
    folder = Path(tempfile.mkdtemp(prefix="autocompress-scaling-"))
    rows = []
    try:
        for n in (1, 2):
            rows.append(run_local(url, folder, n, args.trials))
            print(json.dumps(rows[-1]), flush=True)
        for n in (1, 2):
            rows.append(run_ray(url, folder, n, args.trials))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        subprocess.run([str(script), "stop", pg], capture_output=True)
    print(f"\n{'backend':16} {'workers':>7} {'startup_s':>9} {'trials/min':>10} {'cost_s':>7} {'gap_s':>6} "
          f"{'wall_s':>7} {'load':>5}")
    for r in rows:
        print(f"{r['backend']:16} {r['workers']:7d} {r['startup_s']:9.1f} {r['trials_per_min']:10.1f} "
              f"{r['cost_s']:7.3f} {r['gap_s']:6.3f} {r['wall_s']:7.1f} {r['load_after']:5.2f}")
    local1 = next(r for r in rows if r["backend"] == "local processes" and r["workers"] == 1)
    ray1 = next(r for r in rows if r["backend"] == "Ray Tune" and r["workers"] == 1)
    print(f"\nRay per-trial overhead against the local driver (1 worker): "
          f"{ray1['gap_s'] - local1['gap_s']:+.3f} s per trial beyond the local driver's {local1['gap_s']:.3f} s; "
          f"start-up {ray1['startup_s']:.1f} s vs {local1['startup_s']:.1f} s")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
