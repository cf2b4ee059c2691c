"""The ``torch`` backend: the baked candidate in eager PyTorch on CPU (``torch.inference_mode``).

What runs: every module and tensor op of the model's ``forward``, one kernel each, as written. No graph fusions,
no int8 or sparse kernels: a baked candidate's quantized weights are float tensors on the plan's grid and its zeros
are stored zeros, so every layer runs float (decided once by :func:`~.base.resolve_kernels`). A candidate's
activation-quantizer hooks are removed (on a copy) first, as a deployed eager model would not call them.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..compress import CompressedModel
from ..compress.quantize import InputQuantizer
from ..tasks.inputs import Inputs, call, from_named
from .base import Backend, Lowered, Session, resolve_kernels


def strip_input_quantizers(model: nn.Module) -> nn.Module:
    """A copy of ``model`` without a candidate's activation-quantizer hooks (what a deployed eager model runs)."""
    model = copy.deepcopy(model)
    for m in model.modules():
        for key in [k for k, h in m._forward_pre_hooks.items() if isinstance(h, InputQuantizer)]:
            del m._forward_pre_hooks[key]
    return model.eval()


class TorchSession(Session):
    def __init__(self, model: nn.Module, threads: int) -> None:
        self.model, self.threads = model, max(1, threads)

    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        before = torch.get_num_threads()
        if before != self.threads:
            torch.set_num_threads(self.threads)
        try:
            with torch.inference_mode():
                out = call(self.model, from_named(inputs))
        finally:
            if before != self.threads:
                torch.set_num_threads(before)
        return [out.numpy()] if isinstance(out, torch.Tensor) else [o.numpy() for o in out]


class TorchBackend(Backend):
    name = "torch"
    kinds = frozenset({"float"})
    files = False

    def __init__(self, *, device: str = "cpu") -> None:
        if device != "cpu":
            raise ValueError(f"the torch backend runs on device 'cpu' only, not {device!r}")

    def lower(self, cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs],
              folder: Path, *, kinds: Iterable[str] | None = None) -> Lowered:
        if not cm.baked:
            raise ValueError("lowering needs a baked candidate (autocompress.compress.bake)")
        return Lowered(artifact=strip_input_quantizers(cm.model), kernels=resolve_kernels(cm, self.kinds))

    def session(self, artifact, *, threads: int = 1) -> TorchSession:
        if not isinstance(artifact, nn.Module):
            raise ValueError(f"the torch backend runs modules, not {type(artifact).__name__}")
        return TorchSession(artifact.eval(), threads)

    def time(self, artifacts, example_input, spec):
        before = torch.get_num_threads()  # set once around the timed loop, not per call
        torch.set_num_threads(max(1, spec.threads))
        try:
            return super().time(artifacts, example_input, spec)
        finally:
            torch.set_num_threads(before)

    def versions(self) -> dict[str, str]:
        return {"torch": torch.__version__}


__all__ = ["TorchBackend", "TorchSession", "strip_input_quantizers"]
