"""The ``openvino`` backend: the same ONNX graph (int8 QDQ and float; no int4 kernels) compiled by OpenVINO's CPU
plugin. An optional extra: ``pip install autocompress[openvino]``. A session compiles the graph for the static input
shape it is run with (batch 1 when timed).

OpenVINO reads the QDQ graph the ONNX lowering writes and runs its quantized layers on its own int8 kernels (its
low-precision transformations fold each QuantizeLinear/DequantizeLinear pair into the convolution or matrix
product). The model compiles for latency: one stream, ``threads`` inference threads, and fp32 inference precision:
OpenVINO's default on a CPU with bf16 instructions runs float layers in bf16 (MobileNetV2 at 96 px, 1 thread, on
this project's AMD EPYC: 0.44 ms in its default bf16 vs 0.78 ms in fp32), which would change the accuracy the
search measured in fp32 without saying so. ``MatMulNBits`` is an ONNX Runtime operator, so
<= 4-bit weight-only layers run float here, decided once by :func:`~.base.resolve_kernels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import openvino as ov

from ..compress import CompressedModel
from ..tasks.inputs import Inputs
from .base import Backend, Lowered, Session
from .onnx import lower_onnx


def compile_options(threads: int = 1) -> dict[str, object]:
    return {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1,
            "INFERENCE_PRECISION_HINT": "f32"}


class OvSession(Session):
    """The artifact compiled for the input shapes it is run with: the exported graph has a dynamic batch
    dimension, and OpenVINO runs a static shape markedly faster (one compilation per shape, kept)."""

    def __init__(self, core, artifact: Path, device: str, threads: int) -> None:
        self.core, self.artifact, self.device, self.threads = core, artifact, device, threads
        self.compiled: dict[tuple, tuple] = {}
        self.names: list[str] | None = None

    def _request(self, shapes: tuple):
        if shapes not in self.compiled:
            model = self.core.read_model(str(self.artifact))
            model.reshape({inp.get_any_name(): list(shape) for inp, shape in zip(model.inputs, shapes, strict=True)})
            compiled = self.core.compile_model(model, self.device, compile_options(self.threads))
            self.compiled[shapes] = (compiled, compiled.create_infer_request())
        return self.compiled[shapes]

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.names is None:
            self.names = [i.get_any_name() for i in self.core.read_model(str(self.artifact)).inputs]
        arrays = [inputs[n] for n in self.names]
        compiled, request = self._request(tuple(tuple(x.shape) for x in arrays))
        request.infer(arrays)
        return [request.get_output_tensor(i).data.copy() for i in range(len(compiled.outputs))]


class OpenVINOBackend(Backend):
    name = "openvino"
    kinds = frozenset({"int8", "float"})

    def __init__(self, *, device: str = "CPU") -> None:
        self.core = ov.Core()
        if device not in self.core.available_devices:
            raise ValueError(f"OpenVINO device {device!r} is not available; available: "
                             f"{', '.join(self.core.available_devices)}")
        self.device = device

    def lower(self, cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs],
              folder: Path, *, kinds: Iterable[str] | None = None) -> Lowered:
        allowed = self.kinds if kinds is None else self.kinds & frozenset(kinds)
        path = Path(folder) / "model.onnx"
        return Lowered(artifact=path, kernels=lower_onnx(cm, example_input, calibration, path, allowed))

    def compile(self, artifact: Path, *, threads: int = 1):
        return self.core.compile_model(str(artifact), self.device, compile_options(threads))

    def session(self, artifact, *, threads: int = 1) -> OvSession:
        return OvSession(self.core, Path(artifact), self.device, threads)

    def versions(self) -> dict[str, str]:
        return {"openvino": ov.__version__, "device": self.device}

    def runtime_ops(self, artifact: Path) -> dict[str, int]:
        """Counts of ``<layer type>/<runtime precision>`` in the compiled model (e.g. ``FullyConnected/u8``)."""
        counts: dict[str, int] = {}
        for kind, precision in self.runtime_precisions(artifact).values():
            counts[f"{kind}/{precision}"] = counts.get(f"{kind}/{precision}", 0) + 1
        return counts

    def runtime_precisions(self, artifact: Path) -> dict[str, tuple[str, str]]:
        """``{layer name: (layer type, runtime precision)}`` of the compiled model (``u8``/``i8`` = int8 kernel)."""
        out = {}
        for op in self.compile(Path(artifact)).get_runtime_model().get_ordered_ops():
            info = op.get_rt_info()
            precision = info["runtimePrecision"].astype(str) if "runtimePrecision" in info else ""
            out[op.get_friendly_name()] = (info["layerType"].astype(str), precision)
        return out


__all__ = ["OpenVINOBackend", "OvSession", "compile_options"]
