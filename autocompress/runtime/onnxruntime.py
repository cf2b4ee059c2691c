"""The ``onnxruntime`` backend: the candidate as an ONNX graph (int8 QDQ, int4 ``MatMulNBits``, float) in an
ONNX Runtime session, CPU execution provider by default.

``provider`` selects another execution provider where it is installed (``CUDAExecutionProvider``,
``TensorrtExecutionProvider``); a provider this ONNX Runtime build does not have is a clear error. Sessions run
sequentially with ``threads`` intra-op threads and every graph optimization on, as latency is measured.
"""

from __future__ import annotations

import contextlib
import json
import logging
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from ..compress import CompressedModel
from ..tasks.inputs import Inputs
from .base import KINDS, Backend, Lowered, Session, feed_arrays
from .onnx import graph_ops, lower_onnx

log = logging.getLogger(__name__)

OPTIMIZATION_LEVELS = ("disable", "basic", "extended", "all")


def session_options(*, threads: int = 1, level: str = "all", optimized_path: Path | None = None,
                    log_level: int = 3):
    """The session options every ONNX Runtime session of autocompress uses (``level``: graph optimizations)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[level]
    opts.log_severity_level = log_level
    if optimized_path is not None:
        opts.optimized_model_filepath = str(optimized_path)
    return opts


class OrtSession(Session):
    def __init__(self, sess) -> None:
        self.sess = sess
        self.input_names = [i.name for i in sess.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self.sess.run(None, {n: inputs[n] for n in self.input_names})


class OnnxRuntimeBackend(Backend):
    name = "onnxruntime"
    kinds = frozenset(KINDS)

    def __init__(self, *, device: str = "CPUExecutionProvider") -> None:
        provider = device
        have = ort.get_available_providers()
        if provider not in have:
            raise ValueError(f"ONNX Runtime execution provider {provider!r} is not available in this build; "
                             f"available: {', '.join(have)}")
        self.provider = provider

    def inference_session(self, model: Path | bytes, *, threads: int = 1, level: str = "all",
                          optimized_path: Path | None = None, log_level: int = 3):
        """A raw ``onnxruntime.InferenceSession`` (of a file or serialized model) with this backend's options."""
        opts = session_options(threads=threads, level=level, optimized_path=optimized_path, log_level=log_level)
        return ort.InferenceSession(str(model) if isinstance(model, Path) else model, opts,
                                    providers=[self.provider])

    def lower(self, cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs],
              folder: Path, *, kinds: Iterable[str] | None = None) -> Lowered:
        allowed = self.kinds if kinds is None else self.kinds & frozenset(kinds)
        path = Path(folder) / "model.onnx"
        kernels = lower_onnx(cm, example_input, calibration, path, allowed)
        if kernels.int4:
            try:  # this runtime build must accept the int4 kernels; otherwise those layers run float
                self.session(path).run(feed_arrays(example_input))
            except Exception as e:
                log.warning("ONNX Runtime refused the int4 (MatMulNBits) layers (%s); keeping them float", e)
                int4 = list(kernels.int4)
                kernels = lower_onnx(cm, example_input, calibration, path, allowed - {"int4"})
                for name in int4:
                    kernels.add(name, "float", f"int4 planned, kept float: ONNX Runtime refused MatMulNBits ({e})"[:300])
        return Lowered(artifact=path, kernels=kernels)

    def session(self, artifact, *, threads: int = 1) -> OrtSession:
        return OrtSession(self.inference_session(Path(artifact), threads=threads))

    def versions(self) -> dict[str, str]:
        return {"onnxruntime": ort.__version__, "onnx": onnx.__version__, "provider": self.provider}

    def op_times(self, artifact, example_input, *, runs: int = 30, threads: int = 1) -> dict[str, float]:
        """ONNX Runtime's profiler: each node's ``kernel_time`` events (the first 5 calls dropped), summed per
        ``op_name`` after the median. The profiler adds a fixed cost to every node, estimated here as (sum of
        the node medians - the median call of an unprofiled session, timed alternately) / nodes and taken off
        every node (floored at 0)."""
        arrays = feed_arrays(example_input)
        with tempfile.TemporaryDirectory(prefix="autocompress-opprofile-") as tmp:
            opts = session_options(threads=threads)
            opts.enable_profiling = True
            opts.profile_file_prefix = str(Path(tmp) / "profile")
            profiled = ort.InferenceSession(str(artifact), opts, providers=[self.provider])
            plain = self.session(Path(artifact), threads=threads)
            calls = []
            for i in range(runs + 5):
                profiled.run(None, {n: arrays[n] for n in plain.input_names})
                t0 = time.perf_counter()
                plain.run(arrays)
                if i >= 5:
                    calls.append(1e3 * (time.perf_counter() - t0))
            events = json.loads(Path(profiled.end_profiling()).read_text())
        per: dict[str, list[float]] = {}
        op_of: dict[str, str] = {}
        for e in events:
            name = e.get("name", "")
            if e.get("cat") == "Node" and name.endswith("_kernel_time"):
                per.setdefault(name, []).append(e["dur"] / 1e3)
                op_of[name] = e.get("args", {}).get("op_name", "?")
        medians = {n: float(np.median(v[5:] or v)) for n, v in per.items()}
        if not medians:
            return {}
        cost = max(0.0, (sum(medians.values()) - float(np.median(calls))) / len(medians))
        out: dict[str, float] = {}
        for n, ms in medians.items():
            out[op_of[n]] = out.get(op_of[n], 0.0) + max(0.0, ms - cost)
        return out

    def runtime_ops(self, path: Path) -> dict[str, int]:
        """Operator counts of the graph the runtime actually runs (after its fusions, e.g. QDQ -> QLinearConv)."""
        with tempfile.TemporaryDirectory(prefix="autocompress-ops-") as tmp:
            out = Path(tmp) / "optimized.onnx"
            with contextlib.suppress(Exception):
                self.inference_session(Path(path), optimized_path=out)
            return graph_ops(out) if out.is_file() else {}


__all__ = ["OnnxRuntimeBackend", "OrtSession", "session_options"]
