"""End-to-end measurement of a plan, exactly as the search measures it, with repeated rounds.

``measure_plan`` materializes the plan (``compress.apply``, calibration, ``bake``), lowers it on the backend with
the kernels the predictor scores (:data:`~autocompress.latency.model.PREDICTED_KINDS`, decided by
:func:`autocompress.runtime.resolve_kernels`, as in the search) and times it with the runtime layer's one
statistic: ``rounds`` rounds of ``runs`` timed calls on one session, the median of the round medians (one round is
what the search reports), with the reference workload timed around every round (``normalized``, ``reference_ms``:
see :mod:`autocompress.runtime.reference`). The profile's samples and the benchmark's ground truth
(``benchmarks/latency_predictor.py``) use it, so the predictor is not biased against its own ground truth.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from ..compress import CompressedModel, apply, bake, calibrate
from ..plan import CompressionPlan
from ..runtime import Kernels, TimingSpec, get_backend
from ..tasks.inputs import Inputs, first, map_inputs
from .model import PREDICTED_KINDS


@dataclass
class Measurement:
    """``latency_ms``: median of the round medians; ``rounds_ms``: every round's median; ``int8_nodes``;
    ``normalized``: time relative to the reference workload; ``reference_ms``: the reference's time meanwhile;
    ``op_ms``: per runtime operator type, the ms its nodes took in one call by the runtime's profiler (absolute;
    None unless asked for, {} where the backend has no profiler)."""

    latency_ms: float
    rounds_ms: list[float] = field(default_factory=list)
    int8_nodes: int = 0
    normalized: float | None = None
    reference_ms: float | None = None
    op_ms: dict[str, float] | None = None
    parts: dict[str, list[float]] | None = None  # Timing.parts: against each part of the reference alone


def default_calibration(example_input: Inputs) -> list[Inputs]:
    """Eight random samples shaped like ``example_input`` (integer inputs: copies of it, as token ids have no
    distribution to draw from)."""
    g = torch.Generator().manual_seed(0)
    return [map_inputs(lambda t: torch.randn(8, *t.shape[1:], generator=g) if t.is_floating_point()
                       else t[:1].repeat(8, *([1] * (t.dim() - 1))), example_input)]


def materialize_plan(teacher: nn.Module, plan: CompressionPlan, example_input: Inputs,
                     calibration: Sequence[torch.Tensor]) -> CompressedModel:
    """``plan`` applied to ``teacher``, activation ranges calibrated, baked (no fine-tuning: latency only)."""
    cm = apply(teacher, plan, first(example_input))
    calibrate(cm, calibration)
    cm.model.eval()
    return bake(cm)


def lower_plan(teacher: nn.Module, plan: CompressionPlan, example_input: Inputs, folder: Path, *,
               calibration: Sequence[torch.Tensor], backend: str = "onnxruntime",
               kinds: Iterable[str] | None = None) -> tuple[Path | nn.Module, Kernels]:
    """Materialize ``plan`` and lower it into ``folder`` as the search would time it: (artifact, kernels);
    ``kinds``: the kernel kinds allowed (default: all the backend's predictor scores)."""
    cm = materialize_plan(teacher, plan, example_input, calibration)
    lowered = get_backend(backend).lower(cm, first(example_input), calibration, folder,
                                        kinds=PREDICTED_KINDS[backend] if kinds is None else kinds)
    return lowered.artifact, lowered.kernels


def measure_plan(teacher: nn.Module, plan: CompressionPlan, example_input: Inputs, *,
                 calibration: Sequence[torch.Tensor] | None = None, backend: str = "onnxruntime", threads: int = 1,
                 batch_size: int = 1, warmup: int = 20, runs: int = 100, rounds: int = 3,
                 kinds: Iterable[str] | None = None, op_runs: int = 0) -> Measurement:
    """Materialize, lower and time ``plan`` as the search does (see the module docstring); ``op_runs`` > 0: then
    run it that many more times under the runtime's profiler for the per-operator times (``op_ms``)."""
    calibration = calibration if calibration is not None else default_calibration(example_input)
    spec = TimingSpec(threads=threads, batch_size=batch_size, warmup=warmup, runs=runs, rounds=rounds)
    with tempfile.TemporaryDirectory(prefix="autocompress-measure-") as tmp:
        artifact, kernels = lower_plan(teacher, plan, example_input, Path(tmp), calibration=calibration,
                                       backend=backend, kinds=kinds)
        t = get_backend(backend).time({"m": artifact}, example_input, spec)["m"]
        op_ms = get_backend(backend).op_times(artifact, example_input, runs=op_runs, threads=threads) \
            if op_runs > 0 else None
    return Measurement(latency_ms=t.latency_ms, rounds_ms=t.rounds_ms, int8_nodes=len(kernels.int8),
                       normalized=t.normalized, reference_ms=t.reference_ms, op_ms=op_ms, parts=t.parts)
