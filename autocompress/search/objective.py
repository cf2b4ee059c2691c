"""Score one candidate: apply the plan, fine-tune with distillation, measure accuracy, size and latency."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..compress import apply, bake, calibrate, set_input_quantizers
from ..compress.distill import finetune
from ..config import FinetuneConfig, LatencyConfig
from ..evaluate.accuracy import evaluate
from ..evaluate.latency import measure_latency
from ..evaluate.size import compressed_size, dense_size_bytes
from ..plan import CompressionPlan
from ..tasks import Task


@dataclass
class CandidateResult:
    """Everything measured about one candidate. Accuracy is on validation; test accuracy is reported only."""

    accuracy: float
    test_accuracy: float | None
    latency_ms: float
    latency_p10_ms: float
    latency_p90_ms: float
    int8_nodes: int
    size_bytes: int
    compression_ratio: float
    skipped: dict[str, str] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def calibration_batches(task: Task, n: int, batch_size: int = 32) -> list[torch.Tensor]:
    """The first ``n`` training batches (deterministic), used to calibrate activation ranges."""
    xs = []
    for i in range(n):
        chunk = [task.train[j][0] for j in range(i * batch_size, min((i + 1) * batch_size, len(task.train)))]
        if not chunk:
            break
        xs.append(torch.stack(chunk))
    return xs


@dataclass
class TeacherReference:
    """The uncompressed teacher measured the same way as candidates."""

    accuracy: float
    test_accuracy: float | None
    latency_ms: float
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_teacher(task: Task, latency: LatencyConfig) -> TeacherReference:
    lat = measure_latency(task.model, task.example_input, threads=latency.threads, batch_size=latency.batch_size,
                          warmup=latency.warmup, repeats=latency.repeats)
    test = evaluate(task.model, task.test, task.metric) if task.test is not None else None
    return TeacherReference(accuracy=evaluate(task.model, task.val, task.metric), test_accuracy=test,
                            latency_ms=lat.latency_ms, size_bytes=dense_size_bytes(task.model))


def evaluate_candidate(task: Task, plan: CompressionPlan, *, finetune_cfg: FinetuneConfig,
                       latency: LatencyConfig, teacher_size_bytes: int, seed: int = 0) -> CandidateResult:
    """Materialize ``plan`` on the task's teacher and measure it. Raises on failure (the trial is then failed)."""
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    cm = apply(task.model, plan, task.example_input)
    calib = calibration_batches(task, finetune_cfg.calibration_batches)
    calibrate(cm, calib)
    seconds["apply"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    finetune(cm, task.model, task.train, steps=finetune_cfg.steps, batch_size=finetune_cfg.batch_size,
             lr=finetune_cfg.lr, seed=seed)
    bake(cm)
    seconds["finetune"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    accuracy = evaluate(cm.model, task.val, task.metric)
    if not math.isfinite(accuracy):
        raise ValueError(f"the metric returned {accuracy} on the validation split")
    test_accuracy = evaluate(cm.model, task.test, task.metric) if task.test is not None else None
    size_bytes, _ = compressed_size(cm)
    seconds["evaluate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # int8 kernels for layers whose weights are <= 8 bits and whose inputs are 8-bit; float kernels otherwise
    int8 = [f"{m}.weight" for layer, mods in cm.modules.items() for m in mods
            if cm.weight_bits[m] <= 8 and cm.act_bits.get(layer, 32) == 8]
    set_input_quantizers(cm, False)  # the runtime quantizes activations itself
    lat = measure_latency(cm.model, task.example_input, int8_weights=int8, calibration=calib,
                          threads=latency.threads, batch_size=latency.batch_size, warmup=latency.warmup,
                          repeats=latency.repeats)
    set_input_quantizers(cm, True)
    seconds["latency"] = time.perf_counter() - t0
    return CandidateResult(accuracy=accuracy, test_accuracy=test_accuracy, latency_ms=lat.latency_ms,
                           latency_p10_ms=lat.p10_ms, latency_p90_ms=lat.p90_ms, int8_nodes=lat.int8_nodes,
                           size_bytes=size_bytes, compression_ratio=teacher_size_bytes / size_bytes,
                           skipped=cm.skipped, seconds={k: round(v, 3) for k, v in seconds.items()})
