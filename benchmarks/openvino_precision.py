"""OpenVINO's inference precision on this CPU: its default against the fp32 hint the openvino backend sets.

    .venv/bin/python benchmarks/openvino_precision.py [--px 96] [--rounds 5] [--runs 200]

MobileNetV2 (ImageNet layout, random weights) exported to ONNX as the runtime layer exports it, compiled by the
CPU plugin at a static shape, 1 thread, one stream, latency hint; once with OpenVINO's defaults and once with the
backend's options (``INFERENCE_PRECISION_HINT: f32``). Prints each compiled model's inference precision and the
median of ``--rounds`` round medians of ``--runs`` calls, the two interleaved round by round.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import openvino as ov
import torch

from autocompress.runtime import TimingSpec, time_interleaved
from autocompress.runtime.onnx import export_onnx
from autocompress.runtime.openvino import compile_options
from autocompress.tasks.models import MobileNetV2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--px", type=int, default=96)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--runs", type=int, default=200)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.randn(1, 3, args.px, args.px)
    core = ov.Core()
    options = {"default": {"INFERENCE_NUM_THREADS": 1, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1},
               "backend (fp32 hint)": compile_options(1)}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mobilenet_v2.onnx"
        export_onnx(MobileNetV2().eval(), x, path)
        calls = {}
        for label, opts in options.items():
            model = core.read_model(str(path))
            model.reshape({model.inputs[0].get_any_name(): list(x.shape)})
            compiled = core.compile_model(model, "CPU", opts)
            request = compiled.create_infer_request()
            print(f"{label}: inference precision {compiled.get_property('INFERENCE_PRECISION_HINT')}")
            calls[label] = (lambda r=request: r.infer([x.numpy()]))
        got = time_interleaved(calls, TimingSpec(warmup=50, runs=args.runs, rounds=args.rounds), backend="openvino")
    for label, t in got.items():
        print(f"{label:22s} {t.latency_ms:.4f} ms (rounds {min(t.rounds_ms):.4f}-{max(t.rounds_ms):.4f})")


if __name__ == "__main__":
    main()
