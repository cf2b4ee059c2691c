"""Fresh-process noise of ONNX Runtime and OpenVINO side by side: the same fp32 ONNX files timed in alternating
fresh processes of each backend, RMS deviation of each model's time from its median, absolute and normalized.

    .venv/bin/python benchmarks/noise_backends.py [--processes 8] [--families resnet18,mobilenetv2,efficientnet,bert]

Each process times every model through ``Backend.time`` (5 rounds of 100 calls, 1 thread, the reference workload
around every round). Processes of the two backends alternate, so a slow spell of the machine meets both.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import latency_predictor as lp  # noqa: E402  (the latency benchmark's model families)

from autocompress.latency.measure import lower_plan  # noqa: E402
from autocompress.plan import CompressionPlan  # noqa: E402
from autocompress.runtime import TimingSpec, get_backend  # noqa: E402

BACKENDS = ("onnxruntime", "openvino")


def child(backend: str, spec: dict) -> None:
    out = {}
    for name, (path, shape) in spec.items():
        x = torch.randint(1, 1000, shape) if name == "bert" else torch.randn(*shape)
        t = get_backend(backend).time({"m": Path(path)}, x, TimingSpec(threads=1, warmup=20, runs=100, rounds=5))["m"]
        out[name] = [t.latency_ms, t.normalized]
    print(json.dumps(out))


def rms(values: list[float]) -> float:
    med = statistics.median(values)
    return (sum((v / med - 1) ** 2 for v in values) / len(values)) ** 0.5


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], json.loads(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--processes", type=int, default=8, help="fresh processes per backend")
    ap.add_argument("--families", default="resnet18,mobilenetv2,efficientnet,bert")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        spec = {}
        for family in args.families.split(","):
            model, x, calib = lp.teacher(family, 0)
            folder = Path(tmp) / family
            folder.mkdir()
            path, _ = lower_plan(model, CompressionPlan(), x, folder, calibration=calib)
            spec[family] = (str(path), list(x.shape))
        runs: dict[str, list[dict]] = {b: [] for b in BACKENDS}
        for i in range(args.processes):
            for backend in BACKENDS:
                out = subprocess.run([sys.executable, __file__, "--child", backend, json.dumps(spec)],
                                     capture_output=True, text=True, check=True)
                runs[backend].append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"  process pair {i + 1}/{args.processes} done", flush=True)
    for backend, rows in runs.items():
        for family in spec:
            absolute = [r[family][0] for r in rows]
            normalized = [r[family][1] for r in rows]
            print(f"{backend:12s} {family:13s} median {statistics.median(absolute):.3f} ms  absolute RMS "
                  f"{rms(absolute):6.1%}  normalized {rms(normalized):6.1%}  range {min(absolute):.3f}-"
                  f"{max(absolute):.3f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
