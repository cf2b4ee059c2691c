"""The task contract: what a study needs to know about the model being compressed."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import TaskError
from .metric import Metric, evaluate, top1


@dataclass(kw_only=True)
class Task:
    """Everything a study needs to know about the model being compressed.

    model:         the trained teacher (float32, CPU)
    example_input: one input batch of shape (1, ...) used to trace shapes and export
    train / val:   datasets of ``(input, target)``; the search fine-tunes on train and scores on val
    test:          held out; reported, never used for selection
    metric:        ``metric(outputs, targets) -> float``, higher is better (default: top-1 accuracy)
    """

    name: str
    model: nn.Module
    example_input: torch.Tensor
    train: Dataset
    val: Dataset
    test: Dataset | None = None
    metric: Metric = top1
    info: dict[str, Any] = field(default_factory=dict)


def _tensors(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, list | tuple):
        return [t for v in out for t in _tensors(v)]
    return []


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
    task.model.eval()
    try:
        out = task.model(task.example_input)
    except Exception as e:
        shape = tuple(task.example_input.shape) if isinstance(task.example_input, torch.Tensor) else "?"
        raise fail(f"the teacher does not run on its own example input (shape {shape}): {type(e).__name__}: "
                   f"{str(e).splitlines()[0] if str(e) else ''}") from None
    tensors = _tensors(out)
    if not tensors:
        raise fail(f"the teacher returned {type(out).__name__}, not tensors")
    if not all(torch.isfinite(t).all() for t in tensors if t.is_floating_point()):
        raise fail("the teacher's outputs on its example input are not finite (NaN or inf): a broken checkpoint?")
    try:
        value = float(evaluate(task.model, task.val, task.metric))
    except Exception as e:
        raise fail(f"its metric could not be computed on the validation split: {type(e).__name__}: {e}") from None
    if not math.isfinite(value):
        raise fail(f"its metric on the validation split is {value}, not a finite number")
    return value
