"""Which reference workload tracks the machine's slow states? Real-size models timed between reference blocks,
their time relative to the reference's compute part alone (the reference of version 1) and to the whole
reference (compute, cache and memory parts; :mod:`autocompress.runtime.reference`), measured side by side.

    .venv/bin/python benchmarks/reference_noise.py [--rounds 900] [--group 3] [--block-ms 10] [--out PATH]

Models: held-out families of ``latency_predictor.py`` (the teacher and one random plan of EfficientNet, the
MobileNetV2 and BERT teachers, a ResNet-18 plan, the ViT teacher, LeNet-5 and the MLP), each exported and run in
ONNX Runtime at 1 thread as the search runs it. A round times every model for ``--block-ms`` (a median over its
calls), with a reference block before the first and after each model, as ``time_interleaved`` does; every
reference block records each part's median. A measurement is ``--group`` consecutive rounds (a measurement's
three rounds): its absolute figure is the median of the round medians, its normalized figure the median of the
per-round ratios to the mean of the reference blocks around the round. Prints per model the RMS deviation of the
measurements from their median: absolute, relative to the compute part (version 1), relative to the whole
reference (version 2), and relative to each part alone. Lower is better; every figure comes from the same calls.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from latency_predictor import random_plan, teacher  # noqa: E402  (the held-out families and their plans)

from autocompress.latency.measure import lower_plan  # noqa: E402
from autocompress.plan import CompressionPlan  # noqa: E402
from autocompress.runtime import get_backend  # noqa: E402
from autocompress.runtime.reference import PARTS, reference  # noqa: E402

MODELS = [("efficientnet", None), ("efficientnet", 5), ("mobilenetv2", None), ("resnet18", 3), ("bert", None),
          ("vit", None), ("lenet5", None), ("mlp", None)]


def rms_dev(v) -> float:
    v = np.asarray(v, dtype=float)
    return float(np.sqrt(np.mean((v / np.median(v) - 1) ** 2)))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=900)
    ap.add_argument("--group", type=int, default=3)
    ap.add_argument("--block-ms", type=float, default=10.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    backend = get_backend("onnxruntime")
    ref = reference(1)
    calls = {}
    with tempfile.TemporaryDirectory(prefix="bench-refnoise-") as tmp:
        for family, seed in MODELS:
            model, x, calib = teacher(family, 0)
            plan = CompressionPlan() if seed is None else random_plan(family, model, x, np.random.default_rng(seed))
            folder = Path(tmp) / f"{family}-{seed}"
            folder.mkdir()
            path, _ = lower_plan(model, plan, x, folder, calibration=calib)
            session = backend.session(path)
            feed = {session.input_names[0]: x.numpy()}
            calls[family if seed is None else f"{family} plan {seed}"] = (lambda s=session, f=feed: s.run(f))

        def ref_block() -> list[float]:  # each part's median ms, as every timing's reference block records them
            ref.block()
            return list(ref.last_parts)

        n_calls = {}
        for key, call in calls.items():
            for _ in range(5):
                call()
            t0 = time.perf_counter()
            call()
            n_calls[key] = max(5, int(args.block_ms / 1e3 / (time.perf_counter() - t0)))
        ref.call()
        rounds = {k: [] for k in calls}   # per model: (round median, parts before, parts after)
        start = time.perf_counter()
        before = ref_block()
        for _ in range(args.rounds):
            for key, call in calls.items():
                times = []
                for _ in range(n_calls[key]):
                    t0 = time.perf_counter_ns()
                    call()
                    times.append((time.perf_counter_ns() - t0) / 1e6)
                after = ref_block()
                rounds[key].append((statistics.median(times), before, after))
                before = after
        seconds = time.perf_counter() - start
    weights = np.array([w for _, _, w in PARTS.values()])
    names = list(PARTS)
    refs = {"compute (v1)": lambda p: p[0], "whole (v2)": lambda p: float(np.dot(weights, p)),
            **{f"{n} alone": (lambda p, i=i: p[i]) for i, n in enumerate(names) if i > 0}}
    table = {}
    for key, rs in rounds.items():
        g = len(rs) // args.group
        groups = [rs[i * args.group:(i + 1) * args.group] for i in range(g)]
        row = {"absolute": rms_dev([statistics.median(r[0] for r in grp) for grp in groups])}
        for name, f in refs.items():
            row[name] = rms_dev([statistics.median(r[0] / ((f(r[1]) + f(r[2])) / 2) for r in grp) for grp in groups])
        table[key] = row
    cols = ["absolute", *refs]
    print(f"{args.rounds} rounds in {seconds:.0f} s, measurements of {args.group} rounds; RMS deviation from the median:")
    print(f"{'model':22s}" + "".join(f"{c:>15s}" for c in cols))
    for key, row in table.items():
        print(f"{key:22s}" + "".join(f"{100 * row[c]:14.1f}%" for c in cols))
    mean = {c: float(np.mean([row[c] for row in table.values()])) for c in cols}
    print(f"{'mean':22s}" + "".join(f"{100 * mean[c]:14.1f}%" for c in cols))
    if args.out:
        Path(args.out).write_text(json.dumps({"command": " ".join(sys.argv), "seconds": seconds, "models": table,
                                              "mean": mean}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
