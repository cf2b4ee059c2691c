"""How long one latency prediction takes, in process, on the held-out families of ``latency_predictor.py``.

    .venv/bin/python benchmarks/predict_time.py --profile benchmarks/out/latency_profile.json \
        [--backend onnxruntime] [--families resnet18,mobilenetv2,efficientnet,vit,bert] [--plans 40] [--warmup 10]

Per family: the teacher is analysed (both student depths), ``--warmup`` random plans are predicted untimed (a
study's first trials do the same: the lowering's per-op records fill up), then ``--plans`` new random plans
(the default search space's choices, as the held-out set draws them) are predicted once each, timed, and
again. "Unseen" is a first prediction whose kernel structure the lowering had not cached (counted only when it
really was a miss); "seen" is the second prediction of the same plan. Times include everything ``predict`` does
(resolving the plan, lowering, features, costs) and Python's garbage collector as it runs in a study.
Prints per family and overall mean and p95 in ms, and merges them into ``--out`` (JSON, one entry per backend).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import random_plan, teacher  # noqa: E402  (the held-out families and their plans)

from autocompress.latency.analysis import AnalysisError  # noqa: E402
from autocompress.latency.model import UnsupportedOpError  # noqa: E402
from autocompress.latency.predictor import LatencyPredictor  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402

REAL = "resnet18,mobilenetv2,efficientnet,vit,bert"


def stats(ms: list[float]) -> dict[str, float]:
    return {"n": len(ms), "mean": float(np.mean(ms)) if ms else float("nan"),
            "p95": float(np.percentile(ms, 95)) if ms else float("nan")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--backend", default=None, help="the profile's backend (default: whatever it was measured for)")
    ap.add_argument("--families", default=REAL)
    ap.add_argument("--plans", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    profile = load_profile(args.profile)
    rng = np.random.default_rng(args.seed)
    rows: dict[str, dict] = {}
    all_unseen: list[float] = []
    all_seen: list[float] = []
    for family in args.families.split(","):
        model, x, _ = teacher(family, args.seed)
        predictor = LatencyPredictor(model, x, profile, backend=args.backend)
        predictor.analysis.variant(1.0)
        predictor.analysis.variant(0.5)
        try:
            for _ in range(args.warmup):
                predictor.predict(random_plan(family, model, x, rng))
        except (AnalysisError, UnsupportedOpError) as e:  # e.g. a kernel kind this backend's profile never measured
            print(f"{family:13s} not predictable: {str(e)[:160]}", flush=True)
            rows[family] = {"unpredictable": str(e)[:300]}
            continue
        plans = [random_plan(family, model, x, rng) for _ in range(args.plans)]
        unseen, seen = [], []
        for plan in plans:
            miss = not predictor.structure_seen(plan)
            t0 = time.perf_counter()
            predictor.predict(plan)
            if miss:
                unseen.append(1e3 * (time.perf_counter() - t0))
        for plan in plans:
            t0 = time.perf_counter()
            predictor.predict(plan)
            seen.append(1e3 * (time.perf_counter() - t0))
        rows[family] = {"unseen": stats(unseen), "seen": stats(seen)}
        all_unseen += unseen
        all_seen += seen
        print(f"{family:13s} unseen ({len(unseen):2d}) mean {rows[family]['unseen']['mean']:.2f} p95 "
              f"{rows[family]['unseen']['p95']:.2f} ms | seen mean {rows[family]['seen']['mean']:.2f} p95 "
              f"{rows[family]['seen']['p95']:.2f} ms", flush=True)
    total = {"unseen": stats(all_unseen), "seen": stats(all_seen)}
    print(f"all           unseen ({len(all_unseen)}) mean {total['unseen']['mean']:.2f} p95 {total['unseen']['p95']:.2f}"
          f" ms | seen mean {total['seen']['mean']:.2f} p95 {total['seen']['p95']:.2f} ms")
    if args.out:  # one entry per backend, merged into what the file holds
        out = Path(args.out)
        merged = json.loads(out.read_text()) if out.is_file() else {}
        merged.setdefault("backends", {})[profile.backend] = {
            "command": " ".join(["benchmarks/predict_time.py", *sys.argv[1:]]),
            "machine": {"python": sys.version.split()[0], "cpu": platform.processor() or platform.machine()},
            "families": rows, "all": total}
        out.write_text(json.dumps(merged, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
