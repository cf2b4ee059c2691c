"""Pretrained zoo teachers through the whole pipeline: what each method can handle, random-plan sweeps, what the
machinery does to the teacher's metric, int8 speedup, and the best member of a default study.

    .venv/bin/python benchmarks/zoo.py [--models mnist-resnet18,mnist-mobilenetv2] [--plans 100] [--trials 30]
                                      [--steps 200] [--out benchmarks/results/zoo.json]

A model is a built-in task, with options after ``@`` (``mnist-mobilenetv2@size=96``,
``hf-causal-lm@folder=examples/hf/models/gpt2-bytes;data=examples.hf.data:lm_splits``).

For each built-in task (teachers trained by the project on the MNIST subset, cached on first use):

- ``layers``: layers found; per method, the layers it skipped (with a plan applying it to every layer) and why
- ``failed_trials``: of ``--plans`` random plans from the default search space (Optuna RandomSampler), how many fail
  apply + calibrate + bake + forward + size (the first 10 are also lowered and run on ONNX Runtime)
- ``identity_delta``: validation metric of the plan that compresses nothing minus the teacher's (goal exactly 0)
- ``w8_delta``: 8-bit per-channel weights everywhere, zero-shot (PyTorch, fake-quantized), minus the teacher's
- ``int8_delta``: 8-bit weights and activations everywhere, lowered to ONNX Runtime's int8 kernels (QDQ, MinMax
  calibration on the study's calibration batches), metric of the ONNX model minus the teacher's
- ``int8_speedup``: fp32 teacher / int8 model, both on ONNX Runtime (1 thread, batch 1), timed interleaved
- ``best_within_1pt``: of a ``--trials``-trial default study (measured latency, successive halving, no deployability
  gate, no self-check), the front member with the best measured speedup against the teacher among those within 1 point of its
  validation metric (1 % of the metric's range; for a metric without one, such as perplexity, 1 % of the teacher's
  value), and its size ratio; ``speedup_retimed``: that member and the fastest one timed again after the study,
  interleaved with the teacher in one process (the study divides by the teacher timed once at its start)

Figures go to ``--out`` (JSON) and are printed; ``benchmarks/RESULTS.md`` records a run.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from autocompress.compress import apply, bake, calibrate, discover_layers
from autocompress.config import (
    FinetuneConfig,
    LatencyConfig,
    load_search_space,
    load_study_config,
    resolve_search_space,
)
from autocompress.evaluate.candidate import Candidate, baked_teacher, calibration_batches
from autocompress.evaluate.size import compressed_size
from autocompress.export.loader import OnnxModule
from autocompress.latency.measure import lower_plan
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.runtime import Timing, TimingSpec, get_backend
from autocompress.search.driver import run_study
from autocompress.space import SearchSpace
from autocompress.tasks import Task, load_task
from autocompress.tasks.inputs import call, feed
from autocompress.tasks.metric import evaluate

ROOT = Path(__file__).resolve().parents[1]


def load_model(name: str) -> Task:
    """A built-in task with options after ``@`` (``mnist-mobilenetv2@size=96``, ``hf-classifier@folder=...;data=...``)."""
    spec, _, opts = name.partition("@")
    return load_task(spec, {k: int(v) if v.isdigit() else v for k, v in (o.split("=", 1) for o in opts.split(";") if o)})


def uniform(task: Task, **knobs) -> CompressionPlan:
    return CompressionPlan(layers={i.name: LayerPlan(**knobs) for i in discover_layers(task.model, task.example_input)})


def method_skips(task: Task) -> dict[str, object]:
    """Layers found, and per method the layers it left alone (a plan applying it everywhere)."""
    infos = discover_layers(task.model, task.example_input)
    out: dict[str, object] = {"found": len(infos), "skipped": {}}
    probes = {"channel_pruning": uniform(task, channel_keep=0.5), "low_rank": uniform(task, rank_ratio=0.5),
              "nm_2_4": uniform(task, nm="2:4"), "depth_0.5": CompressionPlan(student=StudentPlan(depth=0.5))}
    for method, plan in probes.items():
        cm = apply(task.model, plan, task.example_input)
        out["skipped"][method] = {"n": len(cm.skipped), "examples": dict(list(cm.skipped.items())[:3])}
    return out


def sweep(task: Task, n_plans: int, n_lowered: int = 10) -> dict[str, object]:
    space = SearchSpace(load_search_space(resolve_search_space("default", ROOT)), discover_layers(task.model,
                                                                                                 task.example_input))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    calib = Candidate(task, CompressionPlan(), FinetuneConfig()).calib
    failures = []
    expected = call(task.model, task.example_input).shape
    for i in range(n_plans):
        trial = study.ask()
        plan = space.suggest(trial)
        try:
            cm = apply(task.model, plan, task.example_input)
            calibrate(cm, calib)
            bake(cm)
            with torch.no_grad():
                out = call(cm.model, task.example_input)
            if out.shape != expected or not torch.isfinite(out).all():
                raise ValueError(f"output {tuple(out.shape)} (finite: {bool(torch.isfinite(out).all())})")
            compressed_size(cm)
            if i < n_lowered:
                with tempfile.TemporaryDirectory() as tmp:
                    lowered = get_backend("onnxruntime").lower(cm, task.example_input, calib, Path(tmp))
                    get_backend("onnxruntime").session(lowered.artifact).run(feed(task.example_input))
        except Exception as e:  # a failure is the figure this measures
            failures.append(f"{plan.summary()[:100]}: {type(e).__name__}: {str(e)[:200]}")
        study.tell(trial, 0.0)
    return {"plans": n_plans, "lowered": min(n_plans, n_lowered), "failed": len(failures), "examples": failures[:3]}


def runtime_figures(task: Task, teacher_val: float) -> dict[str, float]:
    cfg = FinetuneConfig()
    identity = Candidate(task, CompressionPlan(), cfg).accuracy("val")
    w8 = Candidate(task, uniform(task, weight_bits=8), cfg).accuracy("val")
    cand = Candidate(task, uniform(task, weight_bits=8, activation_bits=8), cfg)
    backend = get_backend("onnxruntime")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "int8").mkdir()
        (Path(tmp) / "fp32").mkdir()
        lowered = backend.lower(cand.baked(), task.example_input, cand.calib, Path(tmp) / "int8")
        teacher = backend.lower(baked_teacher(task), task.example_input, [], Path(tmp) / "fp32").artifact
        int8 = evaluate(OnnxModule(lowered.artifact), task.val, task.metric)
        spec = TimingSpec.of(LatencyConfig(warmup=20, repeats=100), rounds=5)
        timed = backend.time({"fp32": teacher, "int8": lowered.artifact}, task.example_input, spec)
    return {"identity_delta": identity - teacher_val, "w8_delta": w8 - teacher_val, "int8_delta": int8 - teacher_val,
            "int8_kernels": len(lowered.kernels.int8), "fp32_ms": timed["fp32"].latency_ms,
            "int8_ms": timed["int8"].latency_ms, "int8_speedup": timed["fp32"].latency_ms / timed["int8"].latency_ms}


def best_within_1pt(members, teacher: dict, task: Task) -> dict[str, object] | None:
    """Of front ``members``, the fastest within 1 point of the teacher's validation metric (1 % of the metric's
    range, or of the teacher's value for a metric without one): its speedup, size ratio, metric and plan."""
    m = task.metric
    slack = 0.01 * (m.range[1] - m.range[0]) if m.range else 0.01 * abs(teacher["accuracy"])
    ok = members["accuracy"] >= teacher["accuracy"] - slack if m.maximize else \
        members["accuracy"] <= teacher["accuracy"] + slack
    close = members[ok]
    if close.empty:
        return None
    row = close.loc[close["latency_ms"].idxmin()]
    return {"trial": int(row["trial"]), "speedup": teacher["latency_ms"] / row["latency_ms"],
            "size_ratio": teacher["size_bytes"] / row["size_bytes"], "accuracy": row["accuracy"],
            "plan": row["plan_summary"]}


def time_plans(task: Task, plans: dict[str, CompressionPlan], *, backend: str = "onnxruntime",
               spec: TimingSpec | None = None) -> tuple[dict[str, Timing], float]:
    """Every plan lowered as the search lowers it, then all timed interleaved in one process (1 thread, batch 1,
    7 rounds of 200 calls by default); ``(timings by label, seconds the timing took)``."""
    calib = calibration_batches(task, FinetuneConfig().calibration_batches)
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        paths = {}
        for i, (label, plan) in enumerate(plans.items()):
            folder = Path(tmp) / str(i)
            folder.mkdir()
            paths[label], _ = lower_plan(task.model, plan, task.example_input, folder, calibration=calib,
                                         backend=backend)
        t0 = time.perf_counter()
        timings = get_backend(backend).time(paths, task.example_input,
                                            spec or TimingSpec(threads=1, warmup=20, runs=200, rounds=7))
    return timings, time.perf_counter() - t0


def retime(task: Task, plans: dict[str, CompressionPlan]) -> dict[str, float]:
    """Speedup of each plan against the teacher, timed interleaved with it after the study (:func:`time_plans`;
    the study's own figures divide by the teacher timed once at its start)."""
    t, _ = time_plans(task, {"teacher": CompressionPlan(), **plans})
    return {label: t["teacher"].normalized / t[label].normalized for label in plans}


def study_figures(name: str, task: Task, trials: int, folder: Path, steps: int) -> dict[str, object]:
    cfg = {"task": "python:zoo", "search_space": "default", "n_trials": trials, "seed": 0, "deployability_gate": False,
           "latency": {"measure": True}, "finetune": {"steps": steps}, "fidelity": {"self_check": 0}}
    path = folder / f"{task.name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    t0 = time.perf_counter()
    outcome = run_study(load_study_config(path), progress=False, task=task)
    front, teacher = outcome.front, outcome.front.teacher
    members = front.front
    seconds = round(time.perf_counter() - t0, 1)
    best = best_within_1pt(members, teacher, task)
    fastest = members.loc[members["latency_ms"].idxmin()] if not members.empty else None
    picked = {"best": best["trial"]} if best else {}
    if fastest is not None:
        picked["fastest"] = int(fastest["trial"])
    again = retime(task, {label: front.plans[number] for label, number in picked.items()})
    if best:
        best["speedup_retimed"] = again["best"]
        best["plan_json"] = front.plans[best["trial"]].to_dict()
    return {"trials": trials, "seconds": seconds, "front": len(members),
            "teacher_accuracy": teacher["accuracy"], "teacher_latency_ms": teacher["latency_ms"],
            "best_within_1pt": best,
            "fastest": None if fastest is None else {
                "speedup": teacher["latency_ms"] / fastest["latency_ms"], "speedup_retimed": again["fastest"],
                "accuracy": fastest["accuracy"]}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist-resnet18,mnist-mobilenetv2")
    ap.add_argument("--plans", type=int, default=100)
    ap.add_argument("--trials", type=int, default=30, help="trials of the default study per model (0: skip)")
    ap.add_argument("--steps", type=int, default=200, help="fine-tuning steps at the study's proxy level")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "zoo.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)  # training; latency is timed on ONNX Runtime with 1 thread
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    results: dict[str, object] = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                                              "cpu": platform.processor() or platform.machine()},
                                  "command": " ".join(["benchmarks/zoo.py", *sys.argv[1:]]), "models": {}}
    with tempfile.TemporaryDirectory(prefix="zoo-") as tmp:
        for name in args.models.split(","):
            task = load_model(name)
            teacher_val = evaluate(task.model, task.val, task.metric)
            row: dict[str, object] = {"teacher_val": teacher_val,
                                      "params": sum(p.numel() for p in task.model.parameters())}
            row["layers"] = method_skips(task)
            s = sweep(task, args.plans)
            row["sweep"], row["failed_trials"] = s, s["failed"]
            row.update(runtime_figures(task, teacher_val))
            if args.trials:
                st = study_figures(name, task, args.trials, Path(tmp), args.steps)
                row["study"], row["best_within_1pt"] = st, st["best_within_1pt"]
            results["models"][name] = row
            print(json.dumps({name: row}, indent=1, default=str), flush=True)
            Path(args.out).write_text(json.dumps(results, indent=1, default=lambda o: float(o) if
                                                 isinstance(o, float) or hasattr(o, "item") else str(o)))
    for name, row in results["models"].items():
        best = row.get("best_within_1pt") or {}
        print(f"{name}: failed {row['failed_trials']}/{args.plans}, identity {row['identity_delta']:+.4f}, "
              f"w8 {row['w8_delta']:+.4f}, int8 {row['int8_delta']:+.4f}, int8 speedup {row['int8_speedup']:.2f}x, "
              f"best within 1 pt: {best.get('speedup', math.nan):.2f}x faster "
              f"({best.get('speedup_retimed', math.nan):.2f}x re-timed beside the teacher), "
              f"{best.get('size_ratio', math.nan):.1f}x smaller")


if __name__ == "__main__":
    main()
