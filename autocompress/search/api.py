"""One call from Python: ``autocompress.search_model(model, example_input, train=..., val=...)``.

It runs the study a YAML config would (same storage, resumable, same front, dashboard and export), with the model
and data given here instead of a task module::

    import autocompress
    outcome = autocompress.search_model(model, example_input, train=train_set, val=val_set, n_trials=60,
                                  name="my-model", folder="studies")
    outcome.front.front                      # the Pareto front (pandas)
    autocompress.export.export_from_study("studies/my-model", "exports/pick", pick="accuracy >= 0.9", task=...)

Any other field of a study config is a keyword argument (``objectives``, ``constraints``, ``finetune``,
``latency``, ``sampler``, ``seed``, ...), validated as a config would be. Results go to ``<folder>/<name>/``
(SQLite) unless ``storage`` names another database. The study records its task as ``python:<name>``: commands
that rebuild a task (``export``, ``verify``) need it passed back (``task=autocompress.Task(...)``).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from pydantic import ValidationError
from torch import nn
from torch.utils.data import Dataset

from ..config import LoadedStudy, SearchSpaceConfig, StudyConfig, load_search_space, resolve_search_space
from ..errors import ConfigError
from ..tasks import Task
from ..tasks.inputs import Inputs
from ..tasks.loss import UserLoss
from ..tasks.metric import ACCURACY, Metric, MetricFn
from .driver import StudyOutcome, run_study

WHERE = "autocompress.search_model()"


def search_model(model: nn.Module, example_input: Inputs, *, train: Dataset, val: Dataset,
                 test: Dataset | None = None, metric: Metric | MetricFn = ACCURACY,
                 forward: Callable[[nn.Module, Inputs], torch.Tensor] | None = None, loss: str | UserLoss = "kd",
                 name: str = "study", folder: str | Path = "studies",
           search_space: str | Path | dict[str, Any] = "default", n_trials: int | None = 30,
           storage: str | None = None, progress: bool = True, **config: Any) -> StudyOutcome:
    """Search compressed versions of ``model`` (see the module docstring); returns the study's outcome.

    example_input, metric, forward, loss: as the fields of :class:`autocompress.Task` (inputs of any structure; a
                  metric with a name and direction, e.g. ``autocompress.PERPLEXITY``; the distillation loss)
    search_space: a built-in space's name (``default``, ``small``, ``deep_compression``), a YAML file, or a
                  mapping like a space file's content
    config:       any other study-config field, e.g. ``objectives={"accuracy": "maximize", "size_bytes":
                  "minimize"}``, ``latency={"backend": "openvino"}``, ``finetune={"steps": 200}``
    """
    if not re.fullmatch(r"[A-Za-z0-9_.\-]+", name):
        raise ConfigError("must be letters, digits, '.', '_' or '-'", file=WHERE, field="name", value=name)
    task = Task(name=name, model=model, example_input=example_input, train=train, val=val, test=test, metric=metric,
                forward=forward, loss=loss)
    folder = Path(folder)
    if isinstance(search_space, dict):
        try:
            space = SearchSpaceConfig.model_validate(search_space)
        except ValidationError as e:
            raise ConfigError(f"invalid search space: {e.errors()[0]['msg']} at "
                              f"{'.'.join(str(p) for p in e.errors()[0]['loc'])}", file=WHERE,
                              field="search_space") from None
    else:
        space = load_search_space(resolve_search_space(str(search_space), Path.cwd(), file=WHERE))
    try:
        cfg = StudyConfig.model_validate({"task": f"python:{name}", "name": name, "search_space": space.model_dump(),
                                          "n_trials": n_trials, "storage": storage, **config})
    except ValidationError as e:
        err = e.errors()[0]
        raise ConfigError(err["msg"], file=WHERE, field=".".join(str(p) for p in err["loc"]),
                          value=err.get("input"), has_value=True) from None
    study_dir = (folder / name).resolve()
    loaded = LoadedStudy(config=cfg, space=space, config_path=(folder / f"{name}.yaml").resolve(), study_name=name,
                         study_dir=study_dir, storage_url=storage or f"sqlite:///{study_dir / 'study.db'}")
    return run_study(loaded, progress=progress, task=task)


__all__ = ["search_model"]
