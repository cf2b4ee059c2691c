"""Score one candidate: apply the plan, fine-tune with distillation, measure accuracy, size and latency."""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from ..compress import CompressedModel, apply, bake, calibrate, set_input_quantizers
from ..compress.distill import finetune
from ..config import FinetuneConfig, LatencyConfig
from ..evaluate.accuracy import evaluate
from ..evaluate.latency import LatencyResult, measure_latency
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
    latency_source: str = "measured"           # "predicted" when the study predicts candidates' latency
    latency_measured_ms: float | None = None   # the measurement, also kept when latency_ms is predicted

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def measure_teacher(task: Task, latency: LatencyConfig) -> TeacherReference:
    lat = measure_latency(task.model, task.example_input, threads=latency.threads, batch_size=latency.batch_size,
                          warmup=latency.warmup, repeats=latency.repeats,
                          backend=latency.backend)
    test = evaluate(task.model, task.test, task.metric) if task.test is not None else None
    ref = TeacherReference(accuracy=evaluate(task.model, task.val, task.metric), test_accuracy=test,
                           latency_ms=lat.latency_ms, size_bytes=dense_size_bytes(task.model),
                           latency_measured_ms=lat.latency_ms)
    from ..latency.study import predicted_latency

    # Candidates' latencies are compared with the teacher's (ratios, hypervolume): when they are predicted, the
    # teacher is predicted too (the empty plan), so a ratio never mixes a prediction with a measurement taken
    # under whatever load the machine had at that moment.
    predicted = predicted_latency(task, CompressionPlan(), latency)
    if predicted is not None:
        ref.latency_ms, ref.latency_source = predicted.latency_ms, "predicted"
    return ref


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: list[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``batches`` (cumulative average), weights untouched."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or not batches:
        return
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
        bn.train()
    for x in batches:
        model(x)
    for bn, (momentum, training) in zip(bns, saved, strict=True):
        bn.momentum = momentum
        bn.train(training)


class Candidate:
    """One materialized plan that can be trained up the fidelity ladder step by step.

    Fine-tuning is cumulative: ``train_to(400)`` after ``train_to(200)`` trains 200 more steps, so promoting a
    candidate to a higher level pays only the difference.
    """

    def __init__(self, task: Task, plan: CompressionPlan, finetune_cfg: FinetuneConfig, *, seed: int = 0) -> None:
        t0 = time.perf_counter()
        self.task, self.plan, self.cfg, self.seed = task, plan, finetune_cfg, seed
        self.cm = apply(task.model, plan, task.example_input)
        self.calib = calibration_batches(task, finetune_cfg.calibration_batches)
        recalibrate_batchnorm(self.cm.model, self.calib)
        calibrate(self.cm, self.calib)
        self.cm.model.eval()
        self.steps_done = 0
        self.seconds: dict[str, float] = {"apply": time.perf_counter() - t0}

    def _add_time(self, key: str, t0: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def train_to(self, steps: int) -> None:
        """Fine-tune (KD) until ``steps`` mini-batches in total have been trained."""
        t0 = time.perf_counter()
        if steps > self.steps_done:
            finetune(self.cm, self.task.model, self.task.train, steps=steps - self.steps_done,
                     batch_size=self.cfg.batch_size, lr=self.cfg.lr, seed=self.seed + self.steps_done)
            self.steps_done = steps
        self._add_time("finetune", t0)

    def accuracy(self, split: str = "val") -> float | None:
        """Metric on ``val`` or ``test`` (None when the task has no test split)."""
        t0 = time.perf_counter()
        data = self.task.val if split == "val" else self.task.test
        value = None if data is None else evaluate(self.cm.model, data, self.task.metric)
        self._add_time("evaluate", t0)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"the metric returned {value} on the {split} split")
        return value

    def baked(self) -> CompressedModel:
        """A copy with the compressed weights written into plain parameters (this candidate can train on)."""
        # Parametrized modules cannot be deep-copied; replaying the (deterministic) plan gives the same structure
        # and masks, into which the trained state and the calibrated activation ranges are loaded.
        cm = apply(self.task.model, self.plan, self.task.example_input)
        cm.model.load_state_dict(self.cm.model.state_dict())
        for name, q in cm.input_quantizers.items():
            src = self.cm.input_quantizers[name]
            q.lo, q.hi, q.calibrating = src.lo, src.hi, False
        cm.model.eval()
        return bake(cm)

    def size_bytes(self) -> int:
        return compressed_size(self.baked())[0]

    def latency(self, latency: LatencyConfig) -> LatencyResult:
        """Measured in ONNX Runtime: int8 kernels for the layers whose plan says so (``LayerPlan.int8_kernel``), or
        in eager PyTorch with ``latency.backend: torch``. Predicted instead when the study uses a latency profile
        (see :mod:`autocompress.latency.study`)."""
        t0 = time.perf_counter()
        from ..latency.study import predicted_latency

        predicted = predicted_latency(self.task, self.plan, latency)
        if predicted is not None:
            self._add_time("latency", t0)
            return predicted
        cm = self.baked()
        from ..latency.measure import int8_modules

        set_input_quantizers(cm, False)  # the runtime quantizes activations itself
        result = measure_latency(cm.model, self.task.example_input, int8_modules=int8_modules(cm, self.plan),
                                 calibration=self.calib, threads=latency.threads, batch_size=latency.batch_size,
                                 warmup=latency.warmup, repeats=latency.repeats,
                                 backend=latency.backend)
        self._add_time("latency", t0)
        return result


def evaluate_candidate(task: Task, plan: CompressionPlan, *, finetune_cfg: FinetuneConfig,
                       latency: LatencyConfig, teacher_size_bytes: int, seed: int = 0,
                       steps: int | None = None) -> CandidateResult:
    """Materialize ``plan``, fine-tune ``steps`` (default ``finetune_cfg.steps``), measure everything. Raises on
    failure (the trial is then failed)."""
    cand = Candidate(task, plan, finetune_cfg, seed=seed)
    lat = cand.latency(latency)
    cand.train_to(finetune_cfg.steps if steps is None else steps)
    accuracy = cand.accuracy("val")
    assert accuracy is not None
    test_accuracy = cand.accuracy("test")
    size_bytes = cand.size_bytes()
    return CandidateResult(accuracy=accuracy, test_accuracy=test_accuracy, latency_ms=lat.latency_ms,
                           latency_p10_ms=lat.p10_ms, latency_p90_ms=lat.p90_ms, int8_nodes=lat.int8_nodes,
                           size_bytes=size_bytes, compression_ratio=teacher_size_bytes / size_bytes,
                           skipped=cand.cm.skipped, seconds={k: round(v, 3) for k, v in cand.seconds.items()})
