"""The reference workload: a fixed ONNX Runtime graph timed beside every measurement, as the machine's speed.

A shared machine runs slower for seconds to minutes at a time (other tenants, frequency, cache pressure), and a
slow state slows every kernel alike. :func:`~autocompress.runtime.base.time_interleaved` therefore times this
workload before and after each round of every measured artifact, in the same process and on the same thread
count, and reports the artifact's time **relative** to it beside the absolute figure
(:attr:`~autocompress.runtime.base.Timing.normalized`). Relative times measured at different moments compare; a
relative time becomes milliseconds again at a stated reference speed (:meth:`Timing.at_speed`).

The graph is built here (no file, no download) from seeded weights, so it is the same on every machine and
version of autocompress: two 3x3 convolutions on a 16x32x32 map (the convolution kernels of CNNs), two
256x512 MatMuls on 64 rows (the GEMMs of Linear and attention layers), ReLUs and reductions: about 0.25 ms on one
core of the machine it was designed on. It is executed with ONNX Runtime whatever the measured backend is:
it gauges the machine, not the backend. Changing it changes every relative time: :data:`REFERENCE_VERSION` is
stored beside them.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

REFERENCE_VERSION = 1
REFERENCE_CALLS = 10   # timed calls per reference block (about 2.5 ms)


def reference_model():
    """The reference graph (an ``onnx.ModelProto``), the same bytes on every machine."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(20261201)

    def weight(name: str, *shape: int):
        return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)

    inits = [weight("w1", 32, 16, 3, 3), weight("b1", 32), weight("w2", 32, 32, 3, 3), weight("b2", 32),
             weight("w3", 256, 512), weight("w4", 512, 256)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["pooled"]),
        helper.make_node("MatMul", ["t", "w3"], ["m1"]),
        helper.make_node("Relu", ["m1"], ["m1r"]),
        helper.make_node("MatMul", ["m1r", "w4"], ["m2"]),
        helper.make_node("ReduceMean", ["m2"], ["rows"], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "autocompress-reference",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32, 32]),
         helper.make_tensor_value_info("t", TensorProto.FLOAT, [64, 256])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, None),
         helper.make_tensor_value_info("rows", TensorProto.FLOAT, None)],
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


class Reference:
    """An open session of the reference graph at ``threads`` intra-op threads."""

    def __init__(self, threads: int = 1) -> None:
        from .onnxruntime import OnnxRuntimeBackend

        self.threads = threads
        self.session = OnnxRuntimeBackend().inference_session(reference_model().SerializeToString(), threads=threads)
        rng = np.random.default_rng(0)
        self.feeds = {"x": rng.random((1, 16, 32, 32), dtype=np.float32),
                      "t": rng.random((64, 256), dtype=np.float32)}
        self.warmed = False

    def call(self) -> None:
        self.session.run(None, self.feeds)

    def block(self, calls: int = REFERENCE_CALLS) -> float:
        """Median ms of ``calls`` timed calls (warmed up on first use)."""
        if not self.warmed:
            for _ in range(calls):
                self.call()
            self.warmed = True
        times = []
        for _ in range(max(1, calls)):
            t0 = time.perf_counter_ns()
            self.call()
            times.append((time.perf_counter_ns() - t0) / 1e6)
        return statistics.median(times)

    def speed_ms(self, blocks: int = 9, calls: int = REFERENCE_CALLS) -> float:
        """The reference's time now (ms): the median of ``blocks`` blocks (what a study records at its start)."""
        return statistics.median(self.block(calls) for _ in range(max(1, blocks)))


_OPEN: dict[int, Reference] = {}


def reference(threads: int = 1) -> Reference:
    """This process's reference session at ``threads`` threads (opened once)."""
    if threads not in _OPEN:
        _OPEN[threads] = Reference(threads)
    return _OPEN[threads]


def reference_ms(threads: int = 1, *, blocks: int = 9) -> float:
    """The reference workload's time on this machine now, in ms (see :meth:`Reference.speed_ms`)."""
    return reference(threads).speed_ms(blocks)


__all__ = ["REFERENCE_CALLS", "REFERENCE_VERSION", "Reference", "reference", "reference_model", "reference_ms"]
