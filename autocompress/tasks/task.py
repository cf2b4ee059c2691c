"""The task contract: what a study needs to know about the model being compressed."""

from __future__ import annotations

import importlib
import math
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import TaskError
from .inputs import Collated, Inputs, call, describe, from_call, problem
from .loss import UserLoss, resolve_loss
from .metric import ACCURACY, Metric, MetricFn, evaluate


def import_user_module(name: str) -> ModuleType:
    """Import the user's module ``name`` (their task or data code) as ``python -m`` would: the current directory is
    searched too, so ``autocompress search`` finds ``mypackage.tasks`` run from the folder holding ``mypackage``."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.append(cwd)
    return importlib.import_module(name)


class TaskForward(nn.Module):
    """The user's model run by the task's ``forward(model, inputs) -> tensor`` (e.g. ``model(**x).logits``).

    The model is this module's child ``model``, so its layers' names start with ``model.``; export and every runtime
    run this module, so what is exported is what the task's forward computes."""

    def __init__(self, model: nn.Module, forward: Callable[[nn.Module, Inputs], torch.Tensor]) -> None:
        super().__init__()
        self.model = model
        self.task_forward = forward

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        return self.task_forward(self.model, from_call(args, kwargs))


@dataclass(kw_only=True)
class Task:
    """Everything a study needs to know about the model being compressed.

    model:         the trained teacher (float32; moved to the study's ``device`` for training)
    example_input: one input batch of size 1: a tensor, a tuple of tensors (positional arguments) or a dict of
                   tensors (keyword arguments, e.g. ``input_ids`` and ``attention_mask``), of any dtype
    train / val:   datasets of ``(input, target)`` pairs, inputs structured like ``example_input``; the search
                   fine-tunes on train and scores on val
    test:          held out; reported, never used for selection
    metric:        an :class:`~autocompress.tasks.metric.Metric` (name, direction, range), or a function
                   ``(outputs, targets) -> float`` scored like accuracy (higher is better, in [0, 1]);
                   default top-1 accuracy
    forward:       optional ``forward(model, inputs) -> tensor`` when calling the model is not ``model(inputs)``,
                   ``model(*inputs)`` or ``model(**inputs)`` returning a tensor (e.g. ``model(**x).logits``)
    loss:          the distillation loss while candidates fine-tune: ``"kd"`` (class logits; default), ``"lm"``
                   (causal-LM token logits), ``"mse"`` or ``"cosine"`` (embeddings, regression), or a function
                   ``loss(student_out, teacher_out, targets) -> scalar tensor`` (see :mod:`autocompress.tasks.loss`)
    collate:       optional ``collate(samples) -> (inputs, targets)`` batching the splits' samples (e.g. padding
                   sequences of different lengths); default: PyTorch's default collate
    """

    name: str
    model: nn.Module
    example_input: Inputs
    train: Dataset
    val: Dataset
    test: Dataset | None = None
    metric: Metric | MetricFn = ACCURACY
    forward: Callable[[nn.Module, Inputs], torch.Tensor] | None = None
    loss: str | UserLoss | None = "kd"
    collate: Callable[[list], Any] | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        try:
            self.metric = Metric.of(self.metric)
            resolve_loss(self.loss)
        except (TypeError, ValueError) as e:
            raise TaskError(f"task {self.name!r}: {e}") from None
        if isinstance(self.example_input, list):
            self.example_input = tuple(self.example_input)
        if self.collate is not None:  # every loader of a split batches with it (autocompress.tasks.inputs.loader)
            for split in ("train", "val", "test"):
                data = getattr(self, split)
                if data is not None and not isinstance(data, Collated):
                    setattr(self, split, Collated(data, self.collate))
        if self.forward is not None and not isinstance(self.model, TaskForward):
            self.model = TaskForward(self.model, self.forward)

    @property
    def distill_loss(self):
        return resolve_loss(self.loss)


@torch.no_grad()
def check_task(task: Task) -> float:
    """Check the teacher before any trial; returns its validation metric. Raises
    :class:`~autocompress.errors.TaskError` with one paragraph naming the task and what is wrong.

    The teacher must run on its example input and give finite outputs; train and validation splits (and test, when
    given) must be non-empty; the metric on validation must be a finite number.
    """
    def fail(what: str) -> TaskError:
        return TaskError(f"task {task.name!r}: {what}. Nothing was written; fix the task and run again.")

    for split in ("train", "val"):
        data = getattr(task, split)
        if data is None or len(data) == 0:
            raise fail(f"its {split} split is empty (the search fine-tunes on train and scores on validation)")
    if task.test is not None and len(task.test) == 0:
        raise fail("its test split is given but empty (give None to have no test split)")
    why = problem(task.example_input)
    if why is not None:
        raise fail(f"its example_input is {why}")
    task.model.eval()
    try:
        out = call(task.model, task.example_input)
    except Exception as e:
        raise fail(f"the teacher does not run on its own example input ({describe(task.example_input)}): "
                   f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if not isinstance(out, torch.Tensor):
        raise fail(f"the teacher returned a {type(out).__name__}, not one tensor; give the task a "
                   "`forward(model, inputs)` returning the tensor to score (e.g. lambda m, x: m(**x).logits)")
    if out.is_floating_point() and not torch.isfinite(out).all():
        raise fail("the teacher's outputs on its example input are not finite (NaN or inf): a broken checkpoint?")
    try:
        value = float(evaluate(task.model, task.val, task.metric))
    except Exception as e:
        raise fail(f"its metric could not be computed on the validation split: {type(e).__name__}: {e}") from None
    if not math.isfinite(value):
        raise fail(f"its metric on the validation split is {value}, not a finite number")
    return value
