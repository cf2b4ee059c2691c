"""A candidate: one plan materialized on the teacher, trained up the fidelity ladder, and scored.

Used by the search (each trial), export (the pick, at full fidelity) and the end-of-study checks, so every one of
them starts from the same point: the plan applied to the teacher, BatchNorm statistics re-estimated, activation
ranges calibrated on the first training batches.
"""

from __future__ import annotations

import math
import threading
import time
import weakref
from collections.abc import Iterable

import torch

from ..compress import CompressedModel, apply, bake, calibrate
from ..compress.distill import finetune
from ..config import FinetuneConfig
from ..plan import CompressionPlan, StudentPlan
from ..runtime import Backend, Kernels, Timing, TimingSpec
from ..tasks import Task
from ..tasks.inputs import Inputs, batch_len, call, collate_of, hooked_eval, resolve_device, tensors
from ..tasks.metric import evaluate
from .size import compressed_size


def first_batches(task: Task, n: int, batch_size: int = 32) -> list[tuple[Inputs, torch.Tensor]]:
    """The first ``n`` training batches (deterministic) as ``(inputs, targets)``, made as training makes them."""
    out = []
    for i in range(n):
        chunk = [task.train[j] for j in range(i * batch_size, min((i + 1) * batch_size, len(task.train)))]
        if not chunk:
            break
        out.append(collate_of(task.train)(chunk))
    return out


def calibration_batches(task: Task, n: int, batch_size: int = 32) -> list[Inputs]:
    """The inputs of the first ``n`` training batches, used to calibrate activation ranges."""
    return [x for x, _ in first_batches(task, n, batch_size)]


# BatchNorm statistics are re-estimated only from at least this many calibration samples (a few small batches of a
# user's data misestimate them: on a pretrained MobileNetV2 that alone took agreement with the teacher from 1.00 to
# 0.33), and only for a BatchNorm whose input statistics the plan moved by more than BN_SHIFT (in units of the
# teacher's per-channel standard deviation, or relative variance).
MIN_BN_SAMPLES = 64
BN_SHIFT = 0.05


def _batchnorms(model: torch.nn.Module) -> dict[str, torch.nn.Module]:
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


def _channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Per-channel (dim 1) sum, sum of squares (float64) and element count of a BatchNorm's input."""
    x = x.detach()
    dims = [0, *range(2, x.dim())]
    return x.sum(dims, dtype=torch.float64), (x * x).sum(dims, dtype=torch.float64), x.numel() // x.shape[1]


@torch.no_grad()
def _input_stats(model: torch.nn.Module, names: list[str], batches: list[Inputs]) -> dict[str, tuple]:
    """``{BatchNorm: (per-channel mean, biased variance)}`` of its inputs over ``batches`` (float64)."""
    sums: dict[str, list] = {}

    def hook(name):
        def record(module, args):
            s, ss, n = _channel_stats(args[0])
            acc = sums.setdefault(name, [0.0, 0.0, 0])
            acc[0], acc[1], acc[2] = acc[0] + s, acc[1] + ss, acc[2] + n
        return record

    mods = dict(model.named_modules())
    with hooked_eval(model, [mods[n].register_forward_pre_hook(hook(n)) for n in names]):
        for x in batches:
            call(model, x)
    out = {}
    for name, (s, ss, n) in sums.items():
        mean = s / n
        out[name] = (mean, (ss / n - mean * mean).clamp_min(0))
    return out


# The teacher's BatchNorm input statistics on a study's calibration batches are the same for every candidate:
# computed once per teacher and batches (weakly keyed: a teacher no longer used is let go).
_TEACHER_STATS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _teacher_stats(teacher: torch.nn.Module, batches: list[Inputs]) -> dict[str, tuple]:
    key = tuple((tuple(b.shape), float(b.double().sum()), float(b.double().abs().sum()))
                for batch in batches for b in tensors(batch))
    per = _TEACHER_STATS.setdefault(teacher, {})
    if key not in per:
        per[key] = _input_stats(teacher, list(_batchnorms(teacher)), batches)
    return per[key]


def _moved(theirs: tuple | None, mean: torch.Tensor, var: torch.Tensor) -> bool:
    """Whether input statistics ``(mean, var)`` differ from the teacher's ``theirs`` by more than BN_SHIFT (or in
    their channels)."""
    if theirs is None or theirs[0].shape != mean.shape:
        return True
    m0, v0 = theirs
    std = v0.sqrt().clamp_min(1e-6)
    return float(((mean - m0).abs() / std).max()) > BN_SHIFT or \
        float(((var - v0).abs() / v0.clamp_min(1e-12)).max()) > 2 * BN_SHIFT


@torch.no_grad()
def changed_batchnorms(teacher: torch.nn.Module, model: torch.nn.Module, batches: list[Inputs]) -> list[str]:
    """The BatchNorms of ``model`` whose input statistics on ``batches`` differ from the same BatchNorm's in
    ``teacher`` (by more than :data:`BN_SHIFT`), or whose channels changed; for an identity plan: none."""
    names = list(_batchnorms(model))
    if not names:
        return []
    mine = _input_stats(model, names, batches)
    theirs = _teacher_stats(teacher, batches)
    return [name for name in names if name in mine and _moved(theirs.get(name), *mine[name])]


def _joined(batches: list[Inputs]) -> Inputs | None:
    """The batches as one batch (tensors concatenated along dim 0), or None when their shapes differ beyond it
    (per-batch padding)."""
    parts = [tensors(x) for x in batches]
    if any(len(p) != len(parts[0]) or any(t.shape[1:] != u.shape[1:] for t, u in zip(p, parts[0], strict=True))
           for p in parts):
        return None
    if len(batches) == 1:
        return batches[0]
    first = batches[0]
    if isinstance(first, dict):
        return {k: torch.cat([x[k] for x in batches]) for k in first}
    if isinstance(first, tuple | list):
        return tuple(torch.cat([x[i] for x in batches]) for i in range(len(first)))
    return torch.cat(batches)


@torch.no_grad()
def _reestimate_moved(model: torch.nn.Module, bn_of: dict[str, torch.nn.Module], batch: Inputs,
                      theirs: dict[str, tuple]) -> list[str]:
    """One forward pass over ``batch`` in eval mode: each BatchNorm, just before it runs, compares its input
    statistics with the teacher's and, where they moved, takes them as its running statistics (the unbiased
    variance, as training would record it). Layers run in order, so a BatchNorm sees its input as the re-estimated
    BatchNorms before it make it: its statistics are exactly those the re-estimated model has on ``batch``."""
    moved: list[str] = []

    def hook(name):
        def update(bn, args):
            if bn.running_mean is None:  # no running statistics (track_running_stats=False): nothing to estimate
                return
            s, ss, n = _channel_stats(args[0])
            mean = s / n
            var = (ss / n - mean * mean).clamp_min(0)
            if _moved(theirs.get(name), mean, var):
                bn.running_mean.copy_(mean)
                bn.running_var.copy_(var * n / max(n - 1, 1))
                moved.append(name)
        return update

    with hooked_eval(model, [bn.register_forward_pre_hook(hook(name)) for name, bn in bn_of.items()]):
        call(model, batch)
    return [name for name in bn_of if name in moved]


@torch.no_grad()
def recalibrate_batchnorm(model: torch.nn.Module, batches: list[Inputs], *,
                          reference: torch.nn.Module | None = None) -> list[str]:
    """Re-estimate BatchNorm running statistics on ``batches``, weights untouched; returns the BatchNorms
    re-estimated.

    With ``reference`` (the teacher), only those whose input statistics the plan moved (:func:`_moved`), and only
    from at least :data:`MIN_BN_SAMPLES` samples; the others keep the teacher's statistics. Done in one forward
    pass over the batches joined into one (:func:`_reestimate_moved`); batches of different shapes take two
    passes (find the moved ones, then re-estimate them as below). Without ``reference``, every BatchNorm, in
    training mode over the batches (cumulative average).
    """
    bn_of = _batchnorms(model)
    if not bn_of or not batches:
        return []
    if reference is not None:
        if sum(batch_len(x) for x in batches) < MIN_BN_SAMPLES:
            return []
        joined = _joined(batches)
        if joined is not None:
            return _reestimate_moved(model, bn_of, joined, _teacher_stats(reference, batches))
        bn_of = {n: bn_of[n] for n in changed_batchnorms(reference, model, batches)}
        if not bn_of:
            return []
    bns = list(bn_of.values())
    saved = [(bn.momentum, bn.training) for bn in bns]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative moving average over the batches below
        bn.train()
    for x in batches:
        call(model, x)
    for bn, (momentum, training) in zip(bns, saved, strict=True):
        bn.momentum = momentum
        bn.train(training)
    return list(bn_of)


def baked_teacher(task: Task) -> CompressedModel:
    """The teacher as a baked candidate of the plan that compresses nothing (what latency and export compare with)."""
    return bake(apply(task.model, CompressionPlan(), task.example_input))


# Distilled students, one per teacher and student size (width, depth, channel multiple) and distillation settings,
# shared by every candidate of that size in this process (weakly keyed: a teacher no longer used is let go).
_STUDENTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
_STUDENTS_LOCK = threading.Lock()
STUDENT_SEED = 0  # one seed for every trial, the end-of-study checks and export: the same student everywhere


def short_level_lr(cfg: FinetuneConfig) -> float:
    """The rate a candidate's first ``cfg.steps`` mini-batches train at: ``short_lr``, or ``lr`` when it is unset or
    ``auto`` (a study replaces ``auto`` by its choice, :func:`autocompress.front.study_finetune`; outside a study
    there is none)."""
    return cfg.lr if cfg.short_lr in (None, "auto") else float(cfg.short_lr)


def student_steps(cfg: FinetuneConfig) -> int:
    """Distillation steps of a student size (``finetune.student_steps``; default three times the short level)."""
    return cfg.student_steps if cfg.student_steps is not None else 3 * cfg.steps


def distilled_student(task: Task, student: StudentPlan, cfg: FinetuneConfig,
                      calib: list[Inputs]) -> tuple[CompressedModel | None, float]:
    """``(the student, seconds spent making it here)``: the teacher cut to ``student`` (width and depth, no
    per-layer decisions), BatchNorm re-estimated where it moved, then distilled for ``cfg.student_steps`` (default
    3 x ``cfg.steps``) with the default distillation settings. Made once per process and shared. None when the
    size changes nothing on this model (no block removable, no channel prunable): its candidates start from the
    teacher.

    Why: a student starts far from the teacher (a half-width, half-depth MobileNetV2 scores 0.21 zero-shot where
    the teacher scores 0.96) and needs hundreds of steps to recover, while a plan of bits and sparsity starts near
    it; trained the same few steps from the teacher, students are ranked far below what full fine-tuning makes of
    them. Distilled once per size, every candidate of that size starts from a student that has recovered, and the
    short levels compare what each plan adds on top of it (weight inheritance, as once-for-all networks share
    trained weights among their sub-networks)."""
    steps = student_steps(cfg)
    device = resolve_device(cfg.device)
    key = (student, steps, cfg.batch_size, cfg.lr, len(calib), str(device))
    with _STUDENTS_LOCK:  # one distillation per size, even with several trials running in threads
        per = _STUDENTS.setdefault(task.model, {})
        if key in per:
            return per[key], 0.0
        t0 = time.perf_counter()
        made: CompressedModel | None = apply(task.model, CompressionPlan(student=student), task.example_input)
        shapes = {k: v.shape for k, v in task.model.state_dict().items()}
        if not made.removed and {k: v.shape for k, v in made.model.state_dict().items()} == shapes:
            made = None  # nothing to distil: training the teacher's copy would only change its candidates
        else:
            recalibrate_batchnorm(made.model, calib, reference=task.model)
            finetune(made, task.model, task.train, steps=steps, batch_size=cfg.batch_size, lr=cfg.lr,
                     seed=STUDENT_SEED, loss_fn=task.distill_loss, device=device)
            made.model.eval()
        per[key] = made
        return made, time.perf_counter() - t0


class Candidate:
    """One materialized plan that can be trained up the fidelity ladder step by step.

    Fine-tuning is cumulative: ``train_to(400)`` after ``train_to(200)`` trains 200 more steps, so promoting a
    candidate to a higher level pays only the difference. A plan with a student size (width or depth below 1) is
    applied to that student distilled beforehand (:func:`distilled_student`; ``finetune.student_steps: 0`` = from
    the teacher); ``warm_student=False`` skips it where only the structure matters (latency, size).
    """

    def __init__(self, task: Task, plan: CompressionPlan, finetune_cfg: FinetuneConfig, *, seed: int = 0,
                 warm_student: bool = True) -> None:
        t0 = time.perf_counter()
        self.task, self.plan, self.cfg, self.seed = task, plan, finetune_cfg, seed
        self.device = resolve_device(finetune_cfg.device)  # where it trains and is evaluated
        self.calib = calibration_batches(task, finetune_cfg.calibration_batches)
        self.seconds: dict[str, float] = {}
        self.student: CompressedModel | None = None
        if warm_student and not plan.student.is_identity and finetune_cfg.student_steps != 0:
            self.student, spent = distilled_student(task, plan.student, finetune_cfg, self.calib)
            if spent:
                self.seconds["student"] = spent
        self.cm = apply(task.model, plan, task.example_input, start=self.student)
        # BatchNorm re-estimated only where this plan moved its inputs from the model it started from
        reference = self.student.model if self.student is not None else task.model
        self.recalibrated = recalibrate_batchnorm(self.cm.model, self.calib, reference=reference)
        calibrate(self.cm, self.calib)
        self.cm.model.eval()
        self.steps_done = 0
        self.seconds["apply"] = time.perf_counter() - t0 - self.seconds.get("student", 0.0)

    def _add_time(self, key: str, t0: float) -> None:
        self.seconds[key] = self.seconds.get(key, 0.0) + time.perf_counter() - t0

    def train_to(self, steps: int) -> None:
        """Fine-tune (KD) until ``steps`` mini-batches in total have been trained: those below ``finetune.steps``
        (the short level) at ``finetune.short_lr``, the rest at ``finetune.lr``, each call's part of a level one
        cosine cycle. A plan that compresses nothing is not trained (the teacher is its own best student): it scores
        exactly the teacher's metric at every level."""
        t0 = time.perf_counter()
        if steps > self.steps_done and self.plan.is_identity:
            self.steps_done = steps
        for end, lr in ((min(steps, self.cfg.steps), short_level_lr(self.cfg)), (steps, self.cfg.lr)):
            if end > self.steps_done:
                finetune(self.cm, self.task.model, self.task.train, steps=end - self.steps_done,
                         batch_size=self.cfg.batch_size, lr=lr, seed=self.seed + self.steps_done,
                         loss_fn=self.task.distill_loss, device=self.device)
                self.steps_done = end
        self._add_time("finetune", t0)

    def accuracy(self, split: str = "val") -> float | None:
        """Metric on ``val`` or ``test`` (None when the task has no test split)."""
        t0 = time.perf_counter()
        data = self.task.val if split == "val" else self.task.test
        value = None if data is None else evaluate(self.cm.model, data, self.task.metric, device=self.device)
        self._add_time("evaluate", t0)
        if value is not None and not math.isfinite(value):
            raise ValueError(f"the metric returned {value} on the {split} split")
        return value

    def baked(self) -> CompressedModel:
        """A copy with the compressed weights written into plain parameters (this candidate can train on)."""
        # Parametrized modules cannot be deep-copied; replaying the (deterministic) plan from the same start gives
        # the same structure and masks, into which the trained state and the calibrated activation ranges are loaded.
        cm = apply(self.task.model, self.plan, self.task.example_input, start=self.student)
        cm.model.load_state_dict(self.cm.model.state_dict())
        for name, q in cm.input_quantizers.items():
            src = self.cm.input_quantizers[name]
            q.lo, q.hi, q.calibrating = src.lo, src.hi, False
        cm.model.eval()
        return bake(cm)

    def size_bytes(self) -> int:
        """Exact stored bytes of the candidate as it is now (read from its compressed weights, no replay)."""
        return compressed_size(self.cm)[0]

    def measure_latency(self, backend: Backend, spec: TimingSpec, *,
                        kinds: Iterable[str] | None = None) -> tuple[Timing, Kernels]:
        """Lower the baked candidate on ``backend`` (kernels among ``kinds``) and time it."""
        t0 = time.perf_counter()
        timing, kernels = backend.measure(self.baked(), self.task.example_input, self.calib, spec, kinds=kinds)
        self._add_time("latency", t0)
        return timing, kernels


__all__ = ["Candidate", "baked_teacher", "calibration_batches", "distilled_student", "first_batches",
           "recalibrate_batchnorm", "short_level_lr", "student_steps"]
