"""Does a convolution get slower when the model around it has more weights? (weights beyond the cache)

    .venv/bin/python benchmarks/weight_streaming.py [--channels 512,256] [--layers 1,2,3,4,6,8] [--h 3]
        [--tokens T]

Stacks of ``L`` identical 3x3 convolutions (C -> C channels, ReLU) on an ``h`` x ``h`` map, float, exported and run
in ONNX Runtime at 1 thread as the search runs them: every layer does the same work, so if each call took the same
time per layer whatever the stack, the per-layer time would not change with ``L``. Prints per stack the model's
weight MB, the best of 5 blocks of 20 calls, the time per layer, and the reference workload's time beside it
(the machine's speed; :mod:`autocompress.runtime.reference`). ``--tokens T``: stacks of ``C x C`` Linear layers
(GELU) over ``T`` tokens instead, as a transformer's weights are. The cost model's streamed-weights term
(``latency.model.STREAMED``) is what this measures: the extra time over ``L`` x the one-layer time, against the
model's weight bytes, phased in around half the last-level cache (``latency.model.streamed_bytes``; the line's
last figure is that term's bytes for the stack, ``streamed``).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from autocompress.latency.model import STREAM_PHASE, stream_share
from autocompress.latency.profile import stream_knot_bytes
from autocompress.runtime import get_backend
from autocompress.runtime.onnx import export_onnx
from autocompress.runtime.reference import reference_ms


def best_ms(session, feed: dict, blocks: int = 5, calls: int = 20) -> float:
    for _ in range(10):
        session.run(feed)
    out = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(calls):
            session.run(feed)
        out.append(1e3 * (time.perf_counter() - t0) / calls)
    return min(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--channels", default="512,256")
    ap.add_argument("--layers", default="1,2,3,4,6,8")
    ap.add_argument("--h", type=int, default=3)
    ap.add_argument("--tokens", type=int, default=0, help="Linear layers over this many tokens instead")
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(1)
    backend = get_backend("onnxruntime")
    knot = stream_knot_bytes()
    part = "gemm" if args.tokens else "conv"
    lo, hi = (f * knot / 1e6 for f in STREAM_PHASE[part])
    print(f"knot (half the last-level cache): {knot / 2**20:.0f} MiB; streamed weights phase in over {lo:.1f}-{hi:.1f} MB")
    for c in map(int, args.channels.split(",")):
        one = None
        for layers in map(int, args.layers.split(",")):
            if args.tokens:
                model = nn.Sequential(*[nn.Sequential(nn.Linear(c, c), nn.GELU()) for _ in range(layers)])
                x = torch.randn(1, args.tokens, c)
            else:
                model = nn.Sequential(*[nn.Sequential(nn.Conv2d(c, c, 3, 1, 1), nn.ReLU()) for _ in range(layers)])
                x = torch.randn(1, c, args.h, args.h)
            with tempfile.TemporaryDirectory(prefix="bench-stream-") as tmp:
                path = Path(tmp) / "model.onnx"
                export_onnx(model.eval(), x, path)
                session = backend.session(path)
                ms = best_ms(session, {session.input_names[0]: x.numpy()})
            mb = layers * (c * c * (1 if args.tokens else 9) + c) * 4 / 1e6
            one = one if one is not None else ms / layers
            print(f"C {c:4d} x {layers} layers: weights {mb:6.1f} MB  {ms:7.3f} ms  per layer {ms / layers:.3f} ms"
                  f"  extra over {layers} x the first {ms - layers * one:+.3f} ms  reference {reference_ms():.3f} ms"
                  f"  streamed {mb * stream_share(mb * 1e6, knot, part):.1f} MB",
                  flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
