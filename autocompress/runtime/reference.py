"""The reference workload: fixed ONNX Runtime graphs timed beside every measurement, as the machine's speed.

A shared machine runs slower for seconds to minutes at a time (other tenants, frequency, cache pressure).
:func:`~autocompress.runtime.base.time_interleaved` therefore times this workload before and after each round of
every measured artifact, in the same process and on the same thread count, and reports the artifact's time
**relative** to it beside the absolute figure (:attr:`~autocompress.runtime.base.Timing.normalized`). Relative
times measured at different moments compare; a relative time becomes milliseconds again at a stated reference
speed (:meth:`Timing.at_speed`).

A slow state does not slow every kernel alike: on this project's shared machines it is mostly contention for
the caches and memory, which a compute-bound graph hardly feels while a model with megabytes of weights and
activations does. The workload is therefore three parts (:data:`PARTS`), each timed as a median of a few calls,
their medians weighted so each counts about a third on the machine it was designed on (about 1 ms in all):

- ``compute``: two 3x3 convolutions on a 16x32x32 map and two 256x512 MatMuls on 64 rows, ReLUs and reductions
  (the convolution and GEMM kernels of CNNs and transformers; about 1 MB of weights);
- ``cache``: a 512 -> 1024 -> 512 matrix-vector pair, 4 MB of weights (read from the last-level cache);
- ``memory``: a 1024 -> 3072 -> 1024 pair, 24 MB of weights (beyond what the shared last-level cache keeps).

Measured side by side (``benchmarks/reference_noise.py``), measurements within one process relative to the three
parts together deviate about a quarter less than relative to the compute part alone; across fresh processes the
two did equally well (``benchmarks/RESULTS.md``). The graphs are built here (no
file, no download) from seeded weights, so they are the same on every machine and version of autocompress; it is
executed with ONNX Runtime whatever the measured backend is: it gauges the machine, not the backend. Changing it
changes every relative time: :data:`REFERENCE_VERSION` is stored beside them.
"""

from __future__ import annotations

import statistics
import time

import numpy as np

# version 2: the cache and memory parts beside the compute graph (version 1, the compute graph alone)
REFERENCE_VERSION = 2
REFERENCE_CALLS = 6   # timed calls per reference block of the compute part (the others in proportion; ~4 ms a block)


def _model(nodes: list, inputs: list, outputs: list[str], inits: list):
    from onnx import TensorProto, helper

    graph = helper.make_graph(nodes, "autocompress-reference",
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, shape) for n, shape in inputs],
                              [helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in outputs],
                              initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _weight(rng: np.random.Generator, name: str, *shape: int):
    from onnx import numpy_helper

    return numpy_helper.from_array((rng.standard_normal(shape) * 0.1).astype(np.float32), name)


def reference_model(part: str = "compute"):
    """One part's graph (an ``onnx.ModelProto``; see :data:`PARTS`), the same bytes on every machine."""
    from onnx import helper

    if part != "compute":
        k, n = PARTS[part][0]
        rng = np.random.default_rng({"cache": 20261202, "memory": 20261203}[part])
        return _model([helper.make_node("MatMul", ["v", "w1"], ["h"]), helper.make_node("Relu", ["h"], ["hr"]),
                       helper.make_node("MatMul", ["hr", "w2"], ["y"])], [("v", [1, k])], ["y"],
                      [_weight(rng, "w1", k, n), _weight(rng, "w2", n, k)])
    rng = np.random.default_rng(20261201)
    inits = [_weight(rng, "w1", 32, 16, 3, 3), _weight(rng, "b1", 32), _weight(rng, "w2", 32, 32, 3, 3),
             _weight(rng, "b2", 32), _weight(rng, "w3", 256, 512), _weight(rng, "w4", 512, 256)]
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
    return _model(nodes, [("x", [1, 16, 32, 32]), ("t", [64, 256])], ["pooled", "rows"], inits)


# part -> (matrix-vector sizes (in, hidden), or None for the compute graph; calls per block as a share of
# REFERENCE_CALLS; weight of its median in the reference's time). The weights make each part about a third of
# the ~1 ms whole on the machine they were chosen on (0.33, 0.064 and 1.05 ms a call).
PARTS: dict[str, tuple[tuple[int, int] | None, float, float]] = {
    "compute": (None, 1.0, 1.0),
    "cache": ((512, 1024), 1.5, 5.0),
    "memory": ((1024, 3072), 0.34, 1 / 3),
}


class Reference:
    """An open session of the reference graph at ``threads`` intra-op threads."""

    def __init__(self, threads: int = 1) -> None:
        from .onnxruntime import OnnxRuntimeBackend

        self.threads = threads
        backend = OnnxRuntimeBackend()
        rng = np.random.default_rng(0)
        self.parts = []  # (session, feeds, calls share, weight)
        for part, (sizes, share, weight) in PARTS.items():
            session = backend.inference_session(reference_model(part).SerializeToString(), threads=threads)
            feeds = {"x": rng.random((1, 16, 32, 32), dtype=np.float32),
                     "t": rng.random((64, 256), dtype=np.float32)} if sizes is None else \
                {"v": rng.random((1, sizes[0]), dtype=np.float32)}
            self.parts.append((session, feeds, share, weight))
        self.names = list(PARTS)
        self.last_parts: list[float] = []  # each part's median ms in the last block
        self.warmed = False

    def call(self) -> None:
        for session, feeds, _, _ in self.parts:
            session.run(None, feeds)

    def block(self, calls: int = REFERENCE_CALLS) -> float:
        """The weighted sum of the parts' median ms over their timed calls (``calls`` for the compute part, the
        others in proportion; warmed up on first use)."""
        if not self.warmed:
            for _ in range(3):
                self.call()
            self.warmed = True
        medians = []
        for session, feeds, share, _ in self.parts:
            times = []
            for _ in range(max(1, round(calls * share))):
                t0 = time.perf_counter_ns()
                session.run(None, feeds)
                times.append((time.perf_counter_ns() - t0) / 1e6)
            medians.append(statistics.median(times))
        self.last_parts = medians
        return sum(m * part[3] for m, part in zip(medians, self.parts, strict=True))

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


__all__ = ["PARTS", "REFERENCE_CALLS", "REFERENCE_VERSION", "Reference", "reference", "reference_model",
           "reference_ms"]
