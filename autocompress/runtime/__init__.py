"""Runtimes a candidate is lowered to, run on and timed with: one interface (:class:`~.base.Backend`), a registry.

=============  ===================================  ==========================  ======================
name           module                               kernels                     install
=============  ===================================  ==========================  ======================
onnxruntime    :mod:`autocompress.runtime.onnxruntime`  int8 QDQ, int4, float   (always)
openvino       :mod:`autocompress.runtime.openvino`     int8 QDQ, float         ``autocompress[openvino]``
torch          :mod:`autocompress.runtime.eager`        float (eager PyTorch)   (always)
=============  ===================================  ==========================  ======================

A new backend is one module with a :class:`~.base.Backend` subclass plus one line in :data:`BACKENDS`. Backend
modules are imported when first asked for (an optional runtime is imported only by a study that names it).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any

from .base import (
    KINDS,
    Backend,
    Kernels,
    Lowered,
    Session,
    Timing,
    TimingSpec,
    resolve_kernels,
    time_interleaved,
)


@dataclass(frozen=True)
class BackendEntry:
    module: str          # autocompress.runtime.<module>
    cls: str
    requires: str        # the Python package it needs
    extra: str | None    # the autocompress extra that installs it (None: always installed)


BACKENDS: dict[str, BackendEntry] = {
    "onnxruntime": BackendEntry("onnxruntime", "OnnxRuntimeBackend", "onnxruntime", None),
    "openvino": BackendEntry("openvino", "OpenVINOBackend", "openvino", "openvino"),
    "torch": BackendEntry("eager", "TorchBackend", "torch", None),
}


class BackendError(ValueError):
    """An unknown backend, or one whose runtime is not installed."""


def installed() -> list[str]:
    """The registered backends whose runtime is importable here."""
    return [n for n, e in BACKENDS.items() if importlib.util.find_spec(e.requires) is not None]


def check_backend(name: str) -> None:
    """Raise :class:`BackendError` naming the known and installed backends (and the extra to install)."""
    if name not in BACKENDS:
        raise BackendError(f"unknown latency backend {name!r}; known: {', '.join(BACKENDS)} (installed here: "
                           f"{', '.join(installed())})")
    entry = BACKENDS[name]
    if importlib.util.find_spec(entry.requires) is None:
        how = f"pip install 'autocompress[{entry.extra}]'" if entry.extra else f"pip install {entry.requires}"
        raise BackendError(f"latency backend {name!r} needs the {entry.requires!r} package, which is not installed "
                           f"(install it with `{how}`); installed backends: {', '.join(installed())}")


@functools.lru_cache(maxsize=16)
def _backend(name: str, options: tuple[tuple[str, Any], ...]) -> Backend:
    check_backend(name)
    entry = BACKENDS[name]
    cls = getattr(importlib.import_module(f"{__name__}.{entry.module}"), entry.cls)
    try:
        return cls(**dict(options))
    except (TypeError, ValueError) as e:
        raise BackendError(f"latency backend {name!r}: {e}") from None


def get_backend(name: str = "onnxruntime", **options: Any) -> Backend:
    """The backend registered as ``name`` (one instance per name and options)."""
    return _backend(name, tuple(sorted((k, v) for k, v in options.items() if v is not None)))


def backend_for(cfg: Any) -> Backend:
    """The backend of a study's :class:`~autocompress.config.LatencyConfig` (``backend`` and ``device``)."""
    return get_backend(cfg.backend, device=cfg.device)


__all__ = ["BACKENDS", "Backend", "BackendError", "Kernels", "KINDS", "Lowered", "Session", "Timing", "TimingSpec",
           "backend_for", "check_backend", "get_backend", "installed", "resolve_kernels",
           "time_interleaved"]
