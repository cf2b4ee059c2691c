"""Prediction time of this checkout against another checkout, in one process, interleaved plan by plan.

    .venv/bin/python benchmarks/predict_ab.py --other /path/to/other/checkout \
        --profile benchmarks/out/latency_profile.json [--families resnet18,mobilenetv2,efficientnet,vit,bert] \
        [--plans 40] [--warmup 10]

On this shared machine two separate runs of ``predict_time.py`` differ by more than a 10-20 % change in the code
(its "all" line moved 5.1-7.5 ms between runs of one commit), so a comparison is made in one process: the other
checkout's ``autocompress`` package is copied to a temporary folder under another name and imported beside this one;
each family's teacher is analysed by both, ``--warmup`` random plans are predicted untimed by both, then
``--plans`` new random plans (as ``predict_time.py`` draws them) are predicted by both, alternating which goes
first, once (mostly structures never seen) and again (seen). Every prediction of the two must agree to 1e-9.
Prints per family and overall the median of the per-plan time ratio (this / other) and each side's mean and p95.
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import random_plan, teacher  # noqa: E402  (the held-out families and their plans)
from predict_time import REAL  # noqa: E402

from autocompress.latency.predictor import LatencyPredictor  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402


def other_package(checkout: Path, tmp: Path):
    """The other checkout's ``autocompress`` imported as ``autocompress_other`` (its imports are relative)."""
    src = checkout / "autocompress"
    if not (src / "__init__.py").is_file():
        raise SystemExit(f"--other {checkout}: no autocompress package there")
    shutil.copytree(src, tmp / "autocompress_other")
    sys.path.insert(0, str(tmp))
    return (importlib.import_module("autocompress_other.latency.predictor"),
            importlib.import_module("autocompress_other.latency.profile"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--other", required=True, help="another checkout of this project (its root folder)")
    ap.add_argument("--profile", required=True)
    ap.add_argument("--families", default=REAL)
    ap.add_argument("--plans", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="autocompress-ab-") as tmp:
        other_predictor, other_profile = other_package(Path(args.other).resolve(), Path(tmp))
        ratios: dict[str, list[float]] = {"unseen": [], "seen": []}
        ms: dict[str, dict[str, list[float]]] = {s: {"unseen": [], "seen": []} for s in ("this", "other")}
        for family in args.families.split(","):
            rng = np.random.default_rng(args.seed)
            model, x, _ = teacher(family, args.seed)
            sides = {"this": LatencyPredictor(model, x, load_profile(args.profile)),
                     "other": other_predictor.LatencyPredictor(model, x, other_profile.load_profile(args.profile))}
            for p in sides.values():
                p.analysis.variant(1.0)
                p.analysis.variant(0.5)
            for _ in range(args.warmup):
                plan = random_plan(family, model, x, rng)
                for p in sides.values():
                    p.predict(plan)
            plans = [random_plan(family, model, x, rng) for _ in range(args.plans)]
            row = {}
            for phase in ("unseen", "seen"):
                per_plan = []
                for i, plan in enumerate(plans):
                    order = ("this", "other") if i % 2 else ("other", "this")
                    took, value = {}, {}
                    for name in order:
                        t0 = time.perf_counter()
                        value[name] = sides[name].predict(plan)
                        took[name] = time.perf_counter() - t0
                    if abs(value["this"] - value["other"]) > 1e-9 * abs(value["other"]):
                        raise SystemExit(f"{family}: the two predict {value} for one plan")
                    for name in took:
                        ms[name][phase].append(1e3 * took[name])
                    per_plan.append(took["this"] / took["other"])
                ratios[phase] += per_plan
                row[phase] = float(np.median(per_plan))
            print(f"{family:13s} this/other, median per plan: unseen {row['unseen']:.3f}, seen {row['seen']:.3f}",
                  flush=True)
        for phase in ("unseen", "seen"):
            r = ratios[phase]
            print(f"all {phase:6s}: this/other median {np.median(r):.3f} (quartiles {np.percentile(r, 25):.3f}-"
                  f"{np.percentile(r, 75):.3f}); this mean {np.mean(ms['this'][phase]):.2f} p95 "
                  f"{np.percentile(ms['this'][phase], 95):.2f} ms, other mean {np.mean(ms['other'][phase]):.2f} p95 "
                  f"{np.percentile(ms['other'][phase], 95):.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
