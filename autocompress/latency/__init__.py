"""Hardware-aware latency prediction: profile a machine's kernels once, predict any plan's latency in milliseconds.

- ``autocompress profile`` / :func:`build_profile`: micro-benchmarks -> a versioned JSON :class:`LatencyProfile`
  (machine fingerprint, raw samples, fitted per-kernel regressions);
- :class:`LatencyPredictor` / :func:`predict`: ``plan -> latency_ms`` for a teacher, without materializing the
  candidate (graph analysis + ONNX Runtime lowering rules + fitted kernel costs);
- ``--backend torch`` (:mod:`autocompress.latency.torch_backend`): the same for eager PyTorch on CPU (float
  kernels only: eager PyTorch has no int8 or sparse kernels for these layers);
- ``--backend openvino`` (:mod:`autocompress.latency.openvino_backend`): the same for OpenVINO's CPU plugin (int8
  and float kernels, its fusions and uint8 re-quantization modelled);
- :mod:`autocompress.latency.study`: how studies use it (``latency: {predictor: PATH}``, the default profile of
  this machine, or ``{measure: true}``) and the end-of-study check of the front.

Imports are lazy: ``import autocompress.latency`` stays light (the CLI imports it at start-up).
"""

from __future__ import annotations

from typing import Any

_EXPORTS = {
    "LatencyProfile": "profile", "ProfileError": "profile", "build_profile": "profile", "load_profile": "profile",
    "default_profile_path": "profile", "fingerprint": "profile", "ProfileSettings": "profile",
    "LatencyPredictor": "predictor", "predict": "predictor",
    "UnsupportedOpError": "model", "CostModel": "model",
    "AnalysisError": "analysis", "TeacherAnalysis": "analysis",
    "measure_plan": "measure",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
