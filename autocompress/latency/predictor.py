"""``predict(teacher, plan) -> latency_ms`` without materializing or running the candidate.

Once per teacher (and student depth) :class:`~autocompress.latency.analysis.TeacherAnalysis` records the exported
graph, its shapes, the runtime's fusions and Torch-Pruning's coupled groups. Per plan the predictor derives each
node's channel counts, low-rank splits and precision, lowers the graph as ONNX Runtime would
(:mod:`autocompress.latency.lowering`) and sums the fitted per-kernel costs of a measured profile
(:mod:`autocompress.latency.model`). Once the teacher is analysed, a plan whose kernel structure was seen before
takes well under a millisecond (its structure's compiled program computes every kernel's features at once), a new
structure a few milliseconds (``benchmarks/predict_time.py``).

Predictions are in ms at the profile's reference speed (the reference workload's time while the profile was
measured, :mod:`autocompress.runtime.reference`) until :meth:`LatencyPredictor.at_reference` sets another one:
a study sets the speed it measured at its start, so predictions and measurements of one study are at one speed.
A ``torch`` profile predicts eager PyTorch instead (:mod:`autocompress.latency.torch_backend`).
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import Any

from torch import nn

from ..plan import CompressionPlan
from ..tasks.inputs import Inputs, signature_key
from .analysis import Resolved, TeacherAnalysis
from .lowering import Lowered, Lowerer
from .model import PREDICTED_KINDS
from .profile import OTHER_BACKENDS, LatencyProfile, ProfileError, default_profile_path, load_profile


def resolve_profile(profile: LatencyProfile | str | Path | None, *, threads: int = 1,
                    backend: str | None = None) -> LatencyProfile:
    """A loaded profile: given, read from a path, or this machine's default one (of ``backend``, default
    onnxruntime). With ``backend`` given, a profile of another backend is refused with a clear error."""
    if isinstance(profile, LatencyProfile):
        loaded = profile
    elif profile is None:
        path = default_profile_path(threads=threads, backend=backend or "onnxruntime")
        if not path.is_file():
            raise ProfileError(f"no latency profile for this machine at {path}; make one with `autocompress "
                               f"profile --backend {backend or 'onnxruntime'} --threads {threads}` or pass a "
                               f"profile path")
        loaded = load_profile(path)
    else:
        loaded = load_profile(profile)
    if backend is not None and loaded.backend != backend:
        where = f" {loaded.path}" if loaded.path else ""
        raise ProfileError(f"the latency profile{where} was measured for backend {loaded.backend!r}, but latency is "
                           f"predicted for {backend!r}; make one with `autocompress profile --backend {backend}`")
    return loaded


class LatencyPredictor:
    """Predicts a plan's latency (ms) on ``teacher`` from a latency profile.

    teacher:       the float teacher (not modified)
    example_input: one input batch, shape (1, ...)
    profile:       a :class:`LatencyProfile`, a path to one, or None for this machine's default profile
    batch_size:    the batch size to predict at (the search's ``latency.batch_size``)
    """

    def __init__(self, teacher: nn.Module, example_input: Inputs,
                 profile: LatencyProfile | str | Path | None = None, *, batch_size: int = 1,
                 threads: int = 1, backend: str | None = None) -> None:
        self.profile = resolve_profile(profile, threads=threads, backend=backend)
        if self.profile.backend not in PREDICTED_KINDS:
            raise ProfileError(f"the profile is for backend {self.profile.backend!r}; the predictor knows "
                               f"{', '.join(PREDICTED_KINDS)}")
        self.backend = self.profile.backend
        self.batch_size = batch_size
        self.speed = 1.0   # predictions are multiplied by this (see at_reference)
        self.analysis = TeacherAnalysis(teacher, example_input, batch_size=batch_size)
        self.lowerer: Any
        other = OTHER_BACKENDS.get(self.backend)  # the lowering its profile was fitted with
        self.lowerer = (other[0](self.analysis) if other else
                        Lowerer(block=self.profile.nchwc_block, align=self.profile.nchwc_align))

    def at_reference(self, reference_ms: float | None) -> None:
        """Predict at the machine speed where the reference workload takes ``reference_ms`` (None: the
        profile's own speed)."""
        own = self.profile.reference_ms
        self.speed = reference_ms / own if reference_ms and own else 1.0

    def resolve(self, plan: CompressionPlan) -> Resolved:
        """``plan`` on the teacher, with int4 layers kept float when this predictor does not score int4."""
        res = self.analysis.resolve(plan)
        if "int4" not in self.kinds:
            res.int4 = {}
        return res

    def lower(self, plan: CompressionPlan) -> Lowered:
        """The kernels the backend would run for ``plan`` (no costs)."""
        return self.lowerer.lower(self.resolve(plan))

    def predict(self, plan: CompressionPlan) -> float:
        """Predicted ``InferenceSession.run`` latency in ms (at :attr:`speed`)."""
        return self.speed * self.profile.model.predict(self.lower(plan), where="this plan")

    def predict_lowered(self, plan: CompressionPlan) -> tuple[float, Lowered]:
        lowered = self.lower(plan)
        return self.speed * self.profile.model.predict(lowered, where="this plan"), lowered

    def predict_resolved(self, plan: CompressionPlan) -> tuple[float, Resolved]:
        """Predicted ms and the resolved plan it was predicted for (which layers run int8)."""
        res = self.resolve(plan)
        return self.speed * self.profile.model.predict(self.lowerer.lower(res), where="this plan"), res

    @property
    def kinds(self) -> frozenset[str]:
        """The kernel kinds this predictor can score (see :func:`autocompress.runtime.resolve_kernels`): int4 only
        when the profile measured the int4 MatMul."""
        kinds = PREDICTED_KINDS[self.backend]
        return kinds if "MatMulNBits" in self.profile.model.coef else kinds - {"int4"}

    def explain(self, plan: CompressionPlan) -> list[dict[str, Any]]:
        """Per kernel: kind, output tensor, predicted ms (at :attr:`speed`, before the calibration's scale)."""
        lowered = self.lower(plan)
        model = self.profile.model
        model.check(lowered.kernels, where="this plan")
        return [{"kind": k.kind, "tensor": k.name, "ms": self.speed * model.kernel_ms(k)} for k in lowered.kernels]

    def check(self, plans: list[CompressionPlan]) -> None:
        """Raise :class:`~autocompress.latency.model.UnsupportedOpError` if any of ``plans`` needs a kernel kind
        the profile has no measurements of."""
        for plan in plans:
            self.profile.model.raw_lowered(self.lower(plan), where=plan.summary()[:120])

    def structure_seen(self, plan: CompressionPlan) -> bool:
        """Whether ``plan``'s kernel structure was lowered before (a prediction then only computes features)."""
        return self.lowerer.seen(self.resolve(plan))


_PREDICTORS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, LatencyPredictor]] = weakref.WeakKeyDictionary()


def predict(teacher: nn.Module, plan: CompressionPlan, example_input: Inputs, *,
            profile: LatencyProfile | str | Path | None = None, batch_size: int = 1,
            backend: str | None = None) -> float:
    """Predicted latency (ms) of ``plan`` applied to ``teacher``; the teacher's analysis is cached."""
    prof = resolve_profile(profile, backend=backend)
    key = (id(prof), signature_key(example_input), batch_size)
    per_teacher = _PREDICTORS.setdefault(teacher, {})
    if key not in per_teacher:
        per_teacher[key] = LatencyPredictor(teacher, example_input, prof, batch_size=batch_size)
    return per_teacher[key].predict(plan)
