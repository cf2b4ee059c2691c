"""Score latency profiles side by side on the same measured held-out models (no new measurements).

    .venv/bin/python benchmarks/predictor_rescore.py --rows benchmarks/out/latency_predictor.json \
        --profiles benchmarks/out/latency_profile.json,benchmarks/out/latency_profile_ops.json [--families ...]

``--rows``: the per-model details ``latency_predictor.py --out`` writes (each model's plan and its measured time
relative to the reference workload). Every plan is predicted again with each profile, at that profile's own
reference speed, against the measured relative time at the same speed: two profiles are compared on identical
ground truth, so the machine's noise at the time of comparison plays no part (it did when the rows were
measured). Prints per profile and family: share within +-10 %, RMSPE, mean error, Kendall tau.

``--reference-part compute`` (or ``cache``, ``memory``): score against the time relative to that part of the
reference workload alone instead of the whole reference, with each profile refitted on its samples' times
relative to the same part (profiles and rows measured since the reference has parts record each one,
``Timing.parts``): two references compared on the same calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
from pathlib import Path

import numpy as np
from scipy import stats

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import teacher  # noqa: E402  (the held-out families)

from autocompress.latency.model import fit  # noqa: E402
from autocompress.latency.predictor import LatencyPredictor  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402
from autocompress.plan import CompressionPlan  # noqa: E402


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    err = pred / truth - 1
    return {"n": len(err), "within_10pct": float(np.mean(np.abs(err) <= 0.10)),
            "rmspe": float(np.sqrt(np.mean(err**2))), "mean_error": float(np.mean(err)),
            "kendall_tau": float(stats.kendalltau(pred, truth)[0]) if len(err) > 1 else float("nan")}


def refit_on_part(profile, part: str) -> float:
    """Refit ``profile`` (in place) on its samples' times relative to reference part ``part`` alone, in ms at that
    part's median speed over the samples, as ``autocompress profile`` fits on the whole reference; returns the
    speed (ms)."""
    samples = profile.samples
    if any(part not in (s.spec.get("reference_parts") or {}) for s in samples):
        raise SystemExit(f"{profile.path}: samples without times against reference part {part!r}")
    speed = float(np.median([s.spec["reference_parts"][part][1] for s in samples]))
    for s in samples:
        s.latency_ms = s.spec["reference_parts"][part][0] * speed
    micro = [s for s in samples if s.group == "micro"]
    profile.model = fit(micro, calibration=[s for s in samples if s.group == "calibration"],
                        stream_knot_bytes=profile.model.stream_knot_bytes)
    return speed


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", required=True)
    ap.add_argument("--profiles", required=True, help="comma-separated profile paths")
    ap.add_argument("--families", default=None, help="comma-separated (default: every family in the rows)")
    ap.add_argument("--out", default=None, help="write the figures as JSON")
    ap.add_argument("--reference-part", default=None, help="normalize by this part of the reference alone")
    args = ap.parse_args()
    rows = json.loads(Path(args.rows).read_text())["rows"]
    families = args.families.split(",") if args.families else list(dict.fromkeys(r["family"] for r in rows))
    rows = [r for r in rows if r["family"] in families]
    seed = 0
    results = {}
    for path in args.profiles.split(","):
        profile = load_profile(path)
        speed = profile.reference_ms
        if args.reference_part:
            speed = refit_on_part(profile, args.reference_part)
        by_family: dict[str, list[tuple[float, float]]] = collections.defaultdict(list)
        for family in families:
            model, x, _ = teacher(family, seed)
            predictor = LatencyPredictor(model, x, profile)
            for r in (r for r in rows if r["family"] == family):
                truth = float(np.median([q["reference_parts"][args.reference_part][0] if args.reference_part
                                         else q["normalized"] for q in r["passes"]])) * speed
                by_family[family].append((predictor.predict(CompressionPlan.from_dict(r["plan"])), truth))
        table = {f: scores(*map(np.array, zip(*v, strict=True))) for f, v in by_family.items()}
        both = [p for v in by_family.values() for p in v]
        table["all"] = scores(*map(np.array, zip(*both, strict=True)))
        results[path] = table
        print(f"{path} (reference {speed:.4f} ms)")
        for f, s in table.items():
            print(f"  {f:13s} n {s['n']:3d}  within 10 % {100 * s['within_10pct']:5.1f} %  RMSPE "
                  f"{100 * s['rmspe']:5.1f} %  mean {100 * s['mean_error']:+5.1f} %  tau {s['kendall_tau']:.3f}")
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "profiles": results}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
