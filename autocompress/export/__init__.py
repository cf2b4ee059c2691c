"""Export a study's pick as a deployable, measured artifact; load and verify it; gate a study's front.

    autocompress export studies/quickstart.yaml --pick 'accuracy >= 0.97' --by latency_ms -o exports/lenet
    autocompress verify exports/lenet

    import autocompress
    model = autocompress.load("exports/lenet")                  # torch.nn.Module, checksums verified
    onnx = autocompress.load("exports/lenet", runtime="onnx")   # the ONNX Runtime artifact as a module

Modules: ``materialize`` (plan -> fine-tuned, baked model; what "full" fine-tuning means), ``pack`` (packed
weights), ``card`` (model card, checksums; lowering and timing are :mod:`autocompress.runtime`),
``loader`` (load, rebuild), ``artifact`` (export, verify), ``gate`` (the study's deployability gate), ``cli``.
Imported lazily so that ``autocompress --help`` stays fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "load": "autocompress.export.loader",
    "verify_files": "autocompress.export.loader",
    "export_plan": "autocompress.export.artifact",
    "export_from_study": "autocompress.export.artifact",
    "verify": "autocompress.export.artifact",
    "ExportResult": "autocompress.export.artifact",
    "VerifyReport": "autocompress.export.artifact",
    "FULL_FINETUNE_STEPS": "autocompress.export.materialize",
    "deployability_gate": "autocompress.export.gate",
    "check_deployable": "autocompress.export.gate",
    "ExportError": "autocompress.export.card",
    "ArtifactError": "autocompress.export.card",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'autocompress.export' has no attribute {name!r}")
