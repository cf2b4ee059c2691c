"""Where the latency predictor's error comes from: per-op measured time (ONNX Runtime's profiler) against the
predicted kernels, summed per op type over held-out plans.

    .venv/bin/python benchmarks/kernel_errors.py --profile benchmarks/out/latency_profile.json \
        [--families resnet18,mobilenetv2,efficientnet,vit,bert] [--plans 8] [--runs 60] [--seed 1] [--out PATH]

Per family: the teacher and ``--plans`` random plans of ``latency_predictor.py``'s held-out distribution (another
seed than its held-out set by default), each measured as the search measures it (``measure_plan``: 3 rounds of
``--runs`` calls beside the reference workload; the truth is the time relative to the reference, in ms at the
profile's reference speed) and then run ``--runs`` more times under ONNX Runtime's profiler
(``Backend.op_times``: per operator type, the profiler's own per-node cost taken off, scaled to the truth).
Predicted kernels are grouped by the op the runtime names them (``Conv/nchwc/kxk`` -> ``Conv``, ``MaxPool/u8`` ->
``MaxPool``, a fused kernel under the op it fuses into); small ops are uncertain by the profiler's per-node cost.

Prints per family the end-to-end error (prediction vs unprofiled median run) and, per op type, measured and
predicted ms summed over the plans with their difference as a share of the family's measured total: the op types
at the top of the list are where the error is. ``--out`` writes every plan's per-op figures as JSON.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import random_plan, teacher  # noqa: E402  (the held-out families and their plans)

from autocompress.latency.kernels import FEATURES  # noqa: E402
from autocompress.latency.measure import measure_plan  # noqa: E402
from autocompress.latency.model import weight_bytes_per_elem  # noqa: E402
from autocompress.latency.predictor import LatencyPredictor  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402
from autocompress.plan import CompressionPlan  # noqa: E402

# the runtime's op name of a predicted kernel kind, where it is not the kind's first part
# (the runtime's fused kernels are counted under the op they fuse into)
OP_OF = {"FusedConv": "Conv", "FusedGemm": "Gemm", "FusedMatMul": "MatMul"}


def op_of(kind: str) -> str:
    base = kind.split("/")[0]
    return OP_OF.get(base, base)


def weight_mb(lowered) -> float:
    """The plan's weights as the runtime stores them (int8 kernels 1 byte, int4 half, float 4), MB."""
    col = FEATURES.index("weight_elems")
    return sum(k.features[col] * weight_bytes_per_elem(k.kind) for k in lowered.kernels) / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--families", default="resnet18,mobilenetv2,efficientnet,vit,bert")
    ap.add_argument("--plans", type=int, default=8)
    ap.add_argument("--runs", type=int, default=60)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    if profile.backend != "onnxruntime":
        print(f"{args.profile}: a {profile.backend} profile; this benchmark reads ONNX Runtime's profiler",
              file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    rows = []
    for family in args.families.split(","):
        model, x, calib = teacher(family, 0)
        predictor = LatencyPredictor(model, x, profile)
        measured: collections.Counter = collections.Counter()
        predicted: collections.Counter = collections.Counter()
        errors = []
        plans = [CompressionPlan()] + [random_plan(family, model, x, rng) for _ in range(args.plans)]
        for i, plan in enumerate(plans):
            m = measure_plan(model, plan, x, calibration=calib, runs=args.runs, rounds=3, op_runs=args.runs)
            truth = m.normalized * profile.reference_ms  # ms at the profile's reference speed
            to_truth = truth / m.latency_ms
            m_ops: collections.Counter = collections.Counter()
            for op, ms in (m.op_ms or {}).items():
                m_ops[op_of(op)] += ms * to_truth
            p_ops: collections.Counter = collections.Counter()
            for k in predictor.explain(plan):
                p_ops[op_of(k["kind"])] += k["ms"]  # explain(): before the per-model overhead
            pred = predictor.predict(plan)
            errors.append(pred / truth - 1)
            measured.update(m_ops)
            predicted.update(p_ops)
            mb = weight_mb(predictor.lower(plan))
            rows.append({"family": family, "plan": i, "measured_ms": truth, "absolute_ms": m.latency_ms,
                         "predicted_ms": pred, "weight_mb": mb, "measured_ops": dict(m_ops),
                         "predicted_ops": dict(p_ops), "plan_summary": plan.summary()[:300]})
            print(f"{family:13s} plan {i}: measured {truth:.3f} ms, predicted {pred:.3f} ({100 * errors[-1]:+.1f} %),"
                  f" weights {mb:.1f} MB", flush=True)
        total = sum(measured.values())
        print(f"{family}: end-to-end error mean {100 * np.mean(errors):+.1f} %, RMS {100 * np.sqrt(np.mean(np.square(errors))):.1f} %"
              f" over {len(plans)} plans (the teacher first); per op, summed (ms, share of measured):")
        for op in sorted(set(measured) | set(predicted), key=lambda o: -abs(measured[o] - predicted[o])):
            d = predicted[op] - measured[op]
            if abs(d) < 0.002 * total:
                continue
            print(f"    {op:22s} measured {measured[op]:8.3f}  predicted {predicted[op]:8.3f}  "
                  f"diff {d:+8.3f} ({100 * d / total:+5.1f} %)")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
