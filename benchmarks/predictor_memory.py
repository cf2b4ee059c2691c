"""Memory the latency predictor's caches hold as a study predicts new plans.

    .venv/bin/python benchmarks/predictor_memory.py --profile benchmarks/out/latency_profile.json \
        [--family efficientnet] [--plans 800]

One predictor of the family's teacher (from ``latency_predictor.py``), then ``--plans`` random plans of the default
space predicted one after another (nearly every one a structure never seen); Python's own allocation tracing
(``tracemalloc``, started after the teacher is analysed) reports what is still held after 100, 200, 400, ... plans,
after a full garbage collection: compiled structures, coefficient rows, op recipes and per-layer decisions.
"""

from __future__ import annotations

import argparse
import gc
import sys
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import FAMILIES, random_plan, teacher  # noqa: E402

from autocompress.latency.predictor import LatencyPredictor  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--family", default="efficientnet", choices=sorted(FAMILIES))
    ap.add_argument("--plans", type=int, default=800)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    model, x, _ = teacher(args.family, args.seed)
    predictor = LatencyPredictor(model, x, load_profile(args.profile))
    predictor.predict(random_plan(args.family, model, x, rng))
    gc.collect()
    tracemalloc.start()
    report = 100
    for i in range(1, args.plans + 1):
        predictor.predict(random_plan(args.family, model, x, rng))
        if i == report or i == args.plans:
            gc.collect()
            print(f"{i:5d} plans: {tracemalloc.get_traced_memory()[0] / 2**20:.0f} MB held by the predictor's caches",
                  flush=True)
            report *= 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
