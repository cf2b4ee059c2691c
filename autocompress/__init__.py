"""autocompress: find the best compressed versions of a PyTorch model automatically.

Public API (imported lazily, so ``autocompress --help`` stays fast)::

    from autocompress import load_study_config, run_study, load_front
    loaded = load_study_config("studies/quickstart.yaml")
    outcome = run_study(loaded)            # resumable; SQLite in studies/quickstart/
    # or, with a model and data in hand (no config file, no task module):
    outcome = autocompress.search_model(model, example_input, train=train_set, val=val_set, n_trials=60)
    front = outcome.front.front            # pandas DataFrame of Pareto-optimal trials
    best = outcome.front.pick("accuracy >= 0.97", by="size_bytes")
"""

from __future__ import annotations

import importlib
from typing import Any

from ._version import __version__

_EXPORTS = {
    "CompressionPlan": "autocompress.plan",
    "LayerPlan": "autocompress.plan",
    "StudentPlan": "autocompress.plan",
    "DistillPlan": "autocompress.plan",
    "apply": "autocompress.compress",
    "bake": "autocompress.compress",
    "Task": "autocompress.tasks",
    "Metric": "autocompress.tasks",
    "ACCURACY": "autocompress.tasks",
    "PERPLEXITY": "autocompress.tasks",
    "MSE": "autocompress.tasks",
    "load_task": "autocompress.tasks",
    "load_study_config": "autocompress.config",
    "load_search_space": "autocompress.config",
    "StudyConfig": "autocompress.config",
    "SearchSpace": "autocompress.space",
    "run_study": "autocompress.search.driver",
    "search_model": "autocompress.search.api",
    "Front": "autocompress.front",
    "load_front": "autocompress.front",
    "load": "autocompress.export",
    "AutocompressError": "autocompress.errors",
    "ConfigError": "autocompress.errors",
    "TaskError": "autocompress.errors",
}

__all__ = ["__version__", *_EXPORTS]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autocompress' has no attribute {name!r}")
