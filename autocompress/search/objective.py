"""The teacher's reference figures, measured the way candidates are (each trial's scoring is in :mod:`.trial`)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from ..config import LatencyConfig
from ..evaluate.size import dense_size_bytes
from ..latency.study import measure_model, predicted_latency
from ..plan import CompressionPlan
from ..tasks import Task
from ..tasks.metric import evaluate


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


def measure_teacher(task: Task, latency: LatencyConfig, *, accuracy: float | None = None) -> TeacherReference:
    """The teacher's figures; ``accuracy``: its validation metric when already computed (by ``check_task``)."""
    measured = measure_model(task, latency)
    test = evaluate(task.model, task.test, task.metric) if task.test is not None else None
    val = evaluate(task.model, task.val, task.metric) if accuracy is None else accuracy
    ref = TeacherReference(accuracy=val, test_accuracy=test,
                           latency_ms=measured, size_bytes=dense_size_bytes(task.model),
                           latency_measured_ms=measured)
    # Candidates' latencies are compared with the teacher's (ratios, hypervolume): when they are predicted, the
    # teacher is predicted too (the empty plan), so a ratio never mixes a prediction with a measurement taken
    # under whatever load the machine had at that moment.
    predicted = predicted_latency(task, CompressionPlan(), latency)
    if predicted is not None:
        ref.latency_ms, ref.latency_source = predicted.latency_ms, "predicted"
    return ref
