"""Attention-head pruning: what removing heads buys (measured latency at real size, with the predictor's figure
beside) and what it costs (metric of trained Hugging Face models, zero-shot and after distillation).

    .venv/bin/python benchmarks/heads.py [--profile benchmarks/out/latency_profile.json] [--steps 200]
                                         [--out benchmarks/results/heads.json]

Latency (random weights, ONNX Runtime, 1 thread, batch 1): the latency benchmark's BERT-mini-like encoder (4
layers, hidden 256, 4 heads, sequence 128) and ViT (6 blocks of width 192, 3 heads, 64 px), every block's heads cut
to ``keep`` x heads (rounded, at least one), fp32 and with int8 kernels everywhere. All plans of a model are timed
interleaved in one process (7 rounds, speed-normalized by the reference workload); the latency predictor's figure
(``--profile``, at the profile's reference speed) is printed beside, with its error.

Metric (trained byte-level models of ``examples/hf``; built by ``examples/hf/make_models.py`` when missing): the
BERT classifier (accuracy, maximized) and the GPT-2 LM (perplexity, minimized), heads cut to ``keep`` in every
block: the validation metric zero-shot (BatchNorm-free, so nothing is re-estimated) and after ``--steps`` steps of
distillation from the teacher (the study's fine-tuning, as a trial at that level trains).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from autocompress.compress import apply, discover_layers
from autocompress.compress.heads import attention_groups, current_heads
from autocompress.config import FinetuneConfig
from autocompress.evaluate.candidate import Candidate
from autocompress.latency.measure import lower_plan
from autocompress.latency.predictor import LatencyPredictor
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.runtime import TimingSpec, get_backend
from autocompress.tasks import load_task
from autocompress.tasks.metric import evaluate

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import latency_predictor as lp  # noqa: E402  (the latency benchmark's model families)

KEEPS = (1.0, 0.75, 0.5, 0.25)
HF = {"bert-bytes": ("hf-classifier", "examples.hf.data:classifier_splits"),
      "gpt2-bytes": ("hf-causal-lm", "examples.hf.data:lm_splits")}


def head_plan(model, x, keep: float, int8: bool = False) -> CompressionPlan:
    """Every recognised attention block cut to ``keep`` of its heads (through its first projection's keep);
    ``int8``: 8-bit weights and inputs on every layer."""
    firsts = {g.members[0] for g in attention_groups(model) if g.skip is None}
    bits = {"weight_bits": 8, "activation_bits": 8} if int8 else {}
    return CompressionPlan(layers={i.name: LayerPlan(channel_keep=keep if i.name in firsts else 1.0, **bits)
                                   for i in discover_layers(model, x)})


def heads_left(model, x, plan) -> list[int]:
    cm = apply(model, plan, x)
    return [current_heads(cm.model, g) for g in attention_groups(cm.model) if g.skip is None]


def latency_rows(family: str, profile: str | None) -> list[dict]:
    model, x, calib = lp.teacher(family, 0)
    predictor = LatencyPredictor(model, x, profile) if profile else None
    plans = {(keep, int8): head_plan(model, x, keep, int8) for int8 in (False, True) for keep in KEEPS}
    with tempfile.TemporaryDirectory(prefix="bench-heads-") as tmp:
        paths = {}
        for (keep, int8), plan in plans.items():
            folder = Path(tmp) / f"{keep}-{int8}"
            folder.mkdir()
            paths[f"{keep}-{int8}"], _ = lower_plan(model, plan, x, folder, calibration=calib)
        spec = TimingSpec(threads=1, warmup=10, runs=lp.runs_for(5.0, 100), rounds=7)
        timings = get_backend("onnxruntime").time(paths, x, spec)
    rows = []
    for (keep, int8), plan in plans.items():
        t = timings[f"{keep}-{int8}"]
        ref = predictor.profile.reference_ms if predictor else None
        measured = t.normalized * ref if ref else t.latency_ms
        row = {"family": family, "keep": keep, "int8": int8, "heads": heads_left(model, x, plan),
               "measured_ms": measured, "absolute_ms": t.latency_ms}
        if predictor:
            row["predicted_ms"] = predictor.predict(plan)
            row["error"] = row["predicted_ms"] / measured - 1
        rows.append(row)
    base = {r["int8"]: r["measured_ms"] for r in rows if r["keep"] == 1.0}
    fp32 = base[False]
    for r in rows:
        r["speedup_vs_fp32"] = fp32 / r["measured_ms"]
        r["speedup_vs_same_kernels"] = base[r["int8"]] / r["measured_ms"]
    return rows


def metric_rows(name: str, steps: int) -> list[dict]:
    kind, data = HF[name]
    folder = ROOT / "examples" / "hf" / "models" / name
    if not folder.exists():
        subprocess.run([sys.executable, str(ROOT / "examples" / "hf" / "make_models.py")], check=True, cwd=ROOT)
    task = load_task(kind, {"folder": str(folder), "data": data})
    teacher = evaluate(task.model, task.val, task.metric)
    cfg = FinetuneConfig(steps=steps, batch_size=16)
    rows = [{"model": name, "metric": task.metric.name, "keep": 1.0, "zero_shot": teacher, "finetuned": teacher}]
    for keep in KEEPS[1:]:
        cand = Candidate(task, head_plan(task.model, task.example_input, keep), cfg)
        zero = cand.accuracy("val")
        cand.train_to(steps)
        rows.append({"model": name, "metric": task.metric.name, "keep": keep,
                     "heads": heads_left(task.model, task.example_input, cand.plan),
                     "zero_shot": zero, "finetuned": cand.accuracy("val"), "teacher": teacher})
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", default=str(ROOT / "benchmarks" / "out" / "latency_profile.json"),
                    help="latency profile for the predicted column ('' to skip)")
    ap.add_argument("--steps", type=int, default=200, help="distillation steps after the cut")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "heads.json"))
    args = ap.parse_args()
    torch.set_num_threads(2)
    profile = args.profile if args.profile and Path(args.profile).exists() else None
    result = {"machine": {"python": sys.version.split()[0], "torch": torch.__version__,
                          "cpu": platform.processor() or platform.machine()},
              "command": " ".join(["benchmarks/heads.py", *sys.argv[1:]]), "latency": [], "metric": []}
    for family in ("bert", "vit"):
        for r in latency_rows(family, profile):
            result["latency"].append(r)
            pred = f"  predicted {r['predicted_ms']:.3f} ({r['error']:+.1%})" if "predicted_ms" in r else ""
            print(f"{family:5s} keep {r['keep']:<4} {'int8' if r['int8'] else 'fp32'} heads {r['heads']}: "
                  f"{r['measured_ms']:.3f} ms ({r['speedup_vs_fp32']:.2f}x vs fp32, "
                  f"{r['speedup_vs_same_kernels']:.2f}x vs uncut){pred}", flush=True)
    for name in HF:
        for r in metric_rows(name, args.steps):
            result["metric"].append(r)
            print(f"{name} keep {r['keep']:<4} {r['metric']}: zero-shot {r['zero_shot']:.4f}, after "
                  f"{args.steps} KD steps {r['finetuned']:.4f}", flush=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
