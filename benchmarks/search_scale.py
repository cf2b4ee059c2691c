"""Search at real-model scale: the sensitivity-guided default against the previous default and baselines.

    .venv/bin/python benchmarks/search_scale.py [--models mnist-resnet18,mnist-mobilenetv2] [--trials 60]
                                               [--seeds 0] [--arms new,previous,untied,random,grid,knapsack]
                                               [--out benchmarks/results/search_scale.json]

For each model (a built-in task, options after ``@`` as in ``benchmarks/zoo.py``) and seed, studies on the default
search space (per-layer choices: ~90 parameters on ResNet-18, ~250 on MobileNetV2), latency measured on ONNX
Runtime (1 thread, batch 1), successive halving on, no deployability gate, no self-check:

- ``new``:      the default config: sensitivity pass, layers tied by their scores, budgeted knapsack warm starts,
                narrowed space, TPE
- ``untied``:   the same with ``tie_layers: false`` (one parameter per layer and knob)
- ``previous``: the previous default: the same with ``sensitivity: false`` (uniform warm starts, TPE) and the short
                level at ``finetune.lr`` (no range test)
- ``random``:   Optuna's RandomSampler, no warm starts
- ``grid``:     uniform plans only (weight bits x sparsity x channel keep, as many as the budget)
- ``knapsack``: the budgeted warm starts alone (as many trials as there are plans)

Hypervolume is computed for every arm in the same normalised space and from the same reference point: metric
error, latency and size as ratios to the teacher measured by that study, reference (teacher's error + 0.05, 1, 1):
only candidates within 5 points of the teacher, faster and smaller than it, count. ``hv@30`` is the
hypervolume of a study's first 30 trials (by trial number), ``hv@60`` of its first 60. Also: the best front member
within 1 point of the teacher (fastest by measured latency), the sensitivity pass's share of the new default's
wall time. Figures go to ``--out`` (JSON) and are printed; ``benchmarks/RESULTS.md`` records a run.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import torch
import yaml
from optuna._hypervolume import compute_hypervolume  # Optuna's WFG (private in Optuna 5; see front.py)
from zoo import best_within_1pt, load_model

from autocompress.compress.layers import discover_layers
from autocompress.config import load_study_config
from autocompress.front import SHORT_LR_ATTR, metric_error
from autocompress.search import sensitivity, warmstart
from autocompress.search.driver import run_study
from autocompress.search.study import open_study
from autocompress.space import SearchSpace
from autocompress.tasks import Task

ROOT = Path(__file__).resolve().parents[1]
ARMS = ("new", "previous", "untied", "random", "grid", "knapsack")
GRID = [(bits, act, sparsity, keep) for sparsity in (0.0, 0.5, 0.25, 0.75) for keep in (1.0, 0.75, 0.5)
        for bits, act in ((8, 8), (8, 32), (6, 32), (4, 32), (3, 32))]  # the first 30: sparsity 0 and 0.5


def config(arm: str, trials: int, seed: int) -> dict:
    # the task object is handed to run_study; the config's task name is never loaded
    cfg = {"task": "python:bench", "search_space": "default", "n_trials": trials, "seed": seed,
           "deployability_gate": False, "latency": {"measure": True}, "fidelity": {"self_check": 0}}
    if arm == "untied":
        cfg |= {"tie_layers": False}  # the new default with one parameter per layer
    if arm == "previous":
        cfg |= {"sensitivity": False, "finetune": {"short_lr": None}}  # no probes, no short-level range test
    if arm == "random":
        cfg |= {"sampler": "random", "warm_start": False, "sensitivity": False}
    if arm in ("grid", "knapsack"):
        cfg |= {"warm_start": False, "sensitivity": False}
    return cfg


def grid_params(space: SearchSpace, n: int) -> list[dict]:
    out = []
    for bits, act, sparsity, keep in GRID[:n]:
        params = space.uniform_params(weight_bits=bits, sparsity=sparsity, activation_bits=act)
        for name, choices in space.distributions().items():
            if name.endswith(":channel_keep"):
                params[name] = min(choices, key=lambda c: abs(c - keep))
        out.append(params)
    return out


def hv(df: pd.DataFrame, teacher: dict, task: Task) -> float:
    metric = {"name": task.metric.name, "direction": task.metric.direction, "range": task.metric.range}
    err = metric_error(df["accuracy"].to_numpy(float), metric, teacher["accuracy"])
    ref_err = float(metric_error(np.array([teacher["accuracy"]]), metric, teacher["accuracy"])[0]) + 0.05
    pts = np.stack([err, df["latency_ms"].to_numpy(float) / teacher["latency_ms"],
                    df["size_bytes"].to_numpy(float) / teacher["size_bytes"]], axis=1)
    ref = np.array([ref_err, 1.0, 1.0])
    pts = pts[np.all(pts < ref, axis=1)]
    return float(compute_hypervolume(pts, ref)) if len(pts) else 0.0


def run_arm(arm: str, task: Task, trials: int, seed: int, folder: Path) -> dict:
    path = folder / f"{arm}-{seed}.yaml"
    path.write_text(yaml.safe_dump(config(arm, trials, seed)))
    loaded = load_study_config(path)
    t0 = time.perf_counter()
    queued = None
    if arm in ("grid", "knapsack"):
        space = SearchSpace(loaded.space, discover_layers(task.model, task.example_input))
        if arm == "grid":
            queued = grid_params(space, trials)
        else:
            guided = warmstart.guide(task, space, loaded.config, progress=False)
            queued = [p["params"] for p in guided[warmstart.ATTR]["plans"]]
        loaded.study_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(loaded, create=True)
        if arm == "knapsack":  # its plans are of the tied space
            study.set_user_attr(warmstart.TIE_ATTR, guided[warmstart.TIE_ATTR])
        for params in queued:
            study.enqueue_trial(params)
    outcome = run_study(loaded, n_trials=len(queued) if queued else trials, progress=False, task=task)
    seconds = time.perf_counter() - t0
    front = outcome.front
    trials_df = front.trials.sort_values("trial")
    out = {"trials": len(trials_df), "seconds": round(seconds, 1), "teacher": front.teacher,
           "hv": {str(n): hv(trials_df[trials_df["trial"] < n], front.teacher, task) for n in (30, 60)},
           "best_within_1pt": best_within_1pt(front.front, front.teacher, task), "front": len(front.front)}
    if arm in ("new", "untied"):
        study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
        sens_s = study.user_attrs[sensitivity.ATTR]["seconds"]
        out["sensitivity_seconds"] = sens_s
        out["sensitivity_time_share"] = sens_s / seconds
        out["narrowed_parameters"] = len(study.user_attrs.get(warmstart.RESTRICT_ATTR, {}))
        tied = study.user_attrs.get(warmstart.TIE_ATTR, {})
        out["tied"] = {"sections": len(tied), "layers": sum(len(m) for m in tied.values())}
        lr = study.user_attrs.get(SHORT_LR_ATTR) or {}
        out["short_lr"] = {k: lr.get(k) for k in ("chosen", "scores", "seconds")}
        out["warm_starts"] = study.user_attrs.get(warmstart.ATTR, {}).get("plans", [])
        for w in out["warm_starts"]:
            w.pop("params", None)
    return out


def summarize(row: dict) -> dict:
    """Per model: means over seeds of hypervolume ratios (new / previous) and the best within 1 point."""
    arms = row["arms"]
    ratio = {}
    for n in ("30", "60"):
        new = [a["hv"][n] for a in arms.get("new", {}).values()]
        prev = [a["hv"][n] for a in arms.get("previous", {}).values()]
        ratio[n] = float(np.mean(new) / np.mean(prev)) if new and prev and np.mean(prev) > 0 else None
    best = [a["best_within_1pt"]["speedup"] for a in arms.get("new", {}).values() if a["best_within_1pt"]]
    share = [a["sensitivity_time_share"] for a in arms.get("new", {}).values()]
    return {"hv_ratio_vs_previous_default": ratio, "best_within_1pt_speedup": max(best) if best else None,
            "sensitivity_time_share": float(np.mean(share)) if share else None,
            "hv_mean": {arm: {n: float(np.mean([a["hv"][n] for a in by_seed.values()])) for n in ("30", "60")}
                        for arm, by_seed in arms.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist-resnet18,mnist-mobilenetv2")
    ap.add_argument("--trials", type=int, default=60)
    ap.add_argument("--seeds", default="0", help="comma-separated study seeds")
    ap.add_argument("--arms", default=",".join(ARMS))
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "search_scale.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)  # training; latency is timed on ONNX Runtime with 1 thread
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(args.out)
    results = json.loads(out.read_text()) if out.is_file() else {}
    results |= {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                            "cpu": platform.processor() or platform.machine()},
                "command": " ".join(["benchmarks/search_scale.py", *sys.argv[1:]])}
    results.setdefault("models", {})
    for name in args.models.split(","):
        task = load_model(name)
        row = results["models"].setdefault(name, {"arms": {}})
        for seed in (int(s) for s in args.seeds.split(",")):
            for arm in args.arms.split(","):
                with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
                    res = run_arm(arm, task, args.trials, seed, Path(tmp))
                row["arms"].setdefault(arm, {})[str(seed)] = res
                print(f"{name} seed {seed} {arm}: hv@30 {res['hv']['30']:.4f} hv@60 {res['hv']['60']:.4f}, "
                      f"{res['trials']} trials in {res['seconds']:.0f} s, best within 1 pt "
                      f"{(res['best_within_1pt'] or {}).get('speedup', float('nan')):.2f}x", flush=True)
                row.update(summarize(row))
                tmp_out = out.with_name(out.name + ".tmp")
                tmp_out.write_text(json.dumps(results, indent=1, default=lambda o: o.item() if hasattr(o, "item")
                                              else str(o)))
                tmp_out.replace(out)
    for name, row in results["models"].items():
        print(name, json.dumps({k: v for k, v in row.items() if k != "arms"}))


if __name__ == "__main__":
    main()
