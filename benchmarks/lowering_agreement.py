"""Does the lowering predict the kernels ONNX Runtime runs? Per micro-benchmark family of a profile, the share of
its samples whose predicted kernel list equals the runtime's optimized graph op for op (counts per op type), and the
most frequent differences.

    .venv/bin/python benchmarks/lowering_agreement.py --profile benchmarks/out/latency_profile.json [--per-family 30]
        [--families attention,mbconv,...]

Each sample's spec and plan are stored in the profile; the sample is rebuilt, lowered with this checkout's code and
materialized and exported as the search does (``lower_plan``), and the exported file's graph after the runtime's
optimizations (``optimized_graph(..., "all")``) is counted. A sample whose kernels disagree is fitted against the
wrong kernels: the fit then moves time between kinds (``benchmarks/kernel_errors.py`` shows where on held-out
models). Prints one line per family: matches / samples and the differences as ``OP+n`` (n more predicted than run).
"""

from __future__ import annotations

import argparse
import collections
import sys
import tempfile
from pathlib import Path

import onnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import _norm  # noqa: E402  (the runtime's op names, as the held-out benchmark counts them)

from autocompress.latency import micro  # noqa: E402
from autocompress.latency.analysis import TeacherAnalysis  # noqa: E402
from autocompress.latency.graph import optimized_graph  # noqa: E402
from autocompress.latency.lowering import lower_ops  # noqa: E402
from autocompress.latency.measure import default_calibration, lower_plan  # noqa: E402
from autocompress.latency.profile import load_profile  # noqa: E402
from autocompress.plan import CompressionPlan  # noqa: E402


def op_counts(ops) -> collections.Counter:
    return collections.Counter(_norm(op) for op in ops)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--profile", required=True)
    ap.add_argument("--per-family", type=int, default=30)
    ap.add_argument("--families", default=None, help="comma-separated micro families (default: all in the profile)")
    args = ap.parse_args()
    profile = load_profile(args.profile)
    if profile.backend != "onnxruntime":
        raise SystemExit(f"{args.profile}: a {profile.backend} profile; this benchmark reads ONNX Runtime's graphs")
    wanted = set(args.families.split(",")) if args.families else None
    by_family: dict[str, list] = collections.defaultdict(list)
    for s in profile.samples:
        if s.group == "micro" and "plan" in (s.spec or {}) and (wanted is None or s.tag in wanted):
            by_family[s.tag].append(s)
    total = matched = 0
    for family, samples in sorted(by_family.items()):
        ok, diffs = 0, collections.Counter()
        for s in samples[:args.per_family]:
            spec = dict(s.spec)
            plan = CompressionPlan.from_dict(spec.pop("plan"))
            module, x = micro.build(spec)
            analysis = TeacherAnalysis(module, x, prune_probes=False)
            predicted = op_counts(op.op for op in lower_ops(analysis.resolve(plan), block=profile.nchwc_block,
                                                          align=profile.nchwc_align))
            with tempfile.TemporaryDirectory(prefix="bench-agreement-") as tmp:
                path, _ = lower_plan(module, plan, x, Path(tmp), calibration=default_calibration(x))
                runtime = op_counts(n.op for n in optimized_graph(onnx.load(str(path)), "all").nodes)
            d = {k: predicted[k] - runtime[k] for k in set(predicted) | set(runtime) if predicted[k] != runtime[k]}
            ok += not d
            diffs.update(f"{k}{v:+d}" for k, v in d.items())
        n = min(len(samples), args.per_family)
        total, matched = total + n, matched + ok
        print(f"{family:18s} {ok:3d}/{n:3d} match   {', '.join(f'{k} x{c}' for k, c in diffs.most_common(6))}",
              flush=True)
    print(f"all: {matched}/{total} ({100 * matched / max(total, 1):.1f} %) samples lowered to the runtime's kernels")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
