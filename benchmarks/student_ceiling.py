"""What there is to find on a zoo teacher: measured speedups of uniform plans (int8, student width and depth,
channel keep) interleaved in one process, and what distillation makes of the students.

    .venv/bin/python benchmarks/student_ceiling.py [--task mnist-mobilenetv2@size=96] [--steps 100,300]
                                                  [--skip-accuracy]

Latency: every plan materialized and lowered as the search lowers it, all timed interleaved on ONNX Runtime
(1 thread, batch 1, 7 rounds of 200 calls, speed-normalized), speedup against the fp32 teacher. Accuracy (the
student plans): validation metric zero-shot and after each of ``--steps`` distillation steps (``Candidate``,
the default fine-tuning settings, as a trial trains).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

from autocompress.compress.layers import discover_layers
from autocompress.config import FinetuneConfig
from autocompress.evaluate.candidate import Candidate
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.tasks.metric import evaluate

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import load_model, time_plans  # noqa: E402  (built-in task names with options after @; shared timing)

STUDENTS = ("w0.5+d0.5", "w0.5+keep0.5")


def plans(task) -> dict[str, CompressionPlan]:
    infos = discover_layers(task.model, task.example_input)

    def plan(width=1.0, depth=1.0, int8=False, keep=1.0) -> CompressionPlan:
        bits = {"weight_bits": 8, "activation_bits": 8} if int8 else {}
        return CompressionPlan(layers={i.name: LayerPlan(channel_keep=keep, **bits) for i in infos},
                               student=StudentPlan(width=width, depth=depth))

    return {"fp32": plan(), "int8": plan(int8=True), "w0.5": plan(0.5), "w0.5+int8": plan(0.5, int8=True),
            "w0.75+d0.5": plan(0.75, 0.5), "w0.5+d0.5": plan(0.5, 0.5), "w0.5+d0.5+int8": plan(0.5, 0.5, True),
            "w0.5+keep0.5": plan(0.5, keep=0.5)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="mnist-mobilenetv2@size=96")
    ap.add_argument("--steps", default="100,300", help="distillation steps at which the students are evaluated")
    ap.add_argument("--skip-accuracy", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)
    task = load_model(args.task)
    todo = plans(task)
    t, _ = time_plans(task, todo)
    base = t["fp32"].normalized
    for name in todo:
        print(f"{name:16s} {t[name].latency_ms:.3f} ms  {base / t[name].normalized:.2f}x vs fp32", flush=True)
    if args.skip_accuracy:
        return 0
    print(f"teacher validation {evaluate(task.model, task.val, task.metric):.4f}", flush=True)
    for name in STUDENTS:
        start = time.perf_counter()
        cand = Candidate(task, todo[name], FinetuneConfig(student_steps=0))  # from the teacher, as trained alone
        line = [f"{name}: zero-shot {cand.accuracy('val'):.4f}"]
        for steps in (int(s) for s in args.steps.split(",")):
            cand.train_to(steps)
            line.append(f"{steps} steps {cand.accuracy('val'):.4f}")
        print(", ".join(line) + f" ({time.perf_counter() - start:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
