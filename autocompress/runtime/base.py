"""The backend interface: lower a baked candidate, open a session, time it with one statistic.

A backend (one file each: :mod:`.onnxruntime`, :mod:`.openvino`, :mod:`.torch`, registered in
:mod:`autocompress.runtime`) is the only code that exports, quantizes, opens inference sessions and times them.
The search's measurements, ``autocompress profile``, ``export``, ``verify`` and the deployability gate all go
through it, so what a front member was scored with is what ships.

**Kernels are decided in one place**, :func:`resolve_kernels`: from a layer's resolved plan and the kernel kinds
the backend (and, when latency is predicted, the predictor) can run, each compressed module runs ``int8``,
``int4`` or ``float``. Lowering then records what really happened (a node the graph does not have stays float)
in a :class:`Kernels` report, which trials store and export reproduces.

**One timing statistic**, :func:`time_interleaved`: ``warmup`` untimed calls, then ``rounds`` rounds of ``runs``
timed calls on one open session per artifact, artifacts interleaved round by round (A B A B ...), so machine noise
hits them alike. The figure is the median of the round medians; each round's median is kept beside it. A block of
the fixed reference workload (:mod:`.reference`) is timed before the first round and after every round, and each
round's median is also divided by the mean of the two blocks around it: :attr:`Timing.normalized`, the time in
units of the reference, which measurements taken in different machine states (or processes) can be compared by.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from torch import nn

from ..compress import CompressedModel
from ..compress.layers import get_module
from ..plan import INT4_MAX_BITS
from ..tasks.inputs import Inputs, feed, repeat_first

KINDS = ("int8", "int4", "float")  # kernel kinds a compressed module can run; float is always possible


@dataclass(frozen=True, kw_only=True)
class TimingSpec:
    """How to time: thread count, batch size, untimed warm-up calls, timed calls per round, rounds."""

    threads: int = 1
    batch_size: int = 1
    warmup: int = 20
    runs: int = 100
    rounds: int = 1
    reference: bool = True   # time the reference workload around every round (see the module docstring)

    @classmethod
    def of(cls, cfg: Any, *, rounds: int = 1, min_runs: int = 0) -> TimingSpec:
        """From a study's :class:`~autocompress.config.LatencyConfig` (``repeats`` timed calls per round)."""
        return cls(threads=cfg.threads, batch_size=cfg.batch_size, warmup=cfg.warmup,
                   runs=max(cfg.repeats, min_runs), rounds=max(1, rounds))


@dataclass
class Timing:
    """``latency_ms``: median of the round medians; ``rounds_ms``: each round's median; p10/p90 over all runs.

    ``normalized``: the median over rounds of (round median / reference time around that round), dimensionless;
    ``reference_ms``: the median reference block of the measurement (both None when timed without reference);
    ``parts``: per part of the reference (:data:`~autocompress.runtime.reference.PARTS`), the same two figures
    against that part alone, ``{part: [normalized, reference ms]}`` (what compares reference workloads side by
    side, ``benchmarks/reference_noise.py``)."""

    latency_ms: float
    rounds_ms: list[float]
    p10_ms: float
    p90_ms: float
    runs: int
    threads: int
    batch_size: int
    backend: str
    normalized: float | None = None
    reference_ms: float | None = None
    parts: dict[str, list[float]] | None = None

    def at_speed(self, reference_ms: float | None) -> float:
        """The latency (ms) at a machine speed where the reference takes ``reference_ms``: the normalized time
        converted back; the absolute ``latency_ms`` when either is unknown."""
        if self.normalized is None or not reference_ms:
            return self.latency_ms
        return self.normalized * reference_ms

    def record(self) -> dict[str, Any]:
        """The figures an export card stores of a timing."""
        return {"median_ms": self.latency_ms, "rounds_ms": self.rounds_ms, "spread": self.spread,
                "p10_ms": self.p10_ms, "p90_ms": self.p90_ms, "repeats": self.runs // max(1, len(self.rounds_ms)),
                "normalized": self.normalized, "reference_ms": self.reference_ms}

    @property
    def spread(self) -> float:
        """(max - min) / median of the round medians: how much the rounds disagreed."""
        return (max(self.rounds_ms) - min(self.rounds_ms)) / self.latency_ms if self.latency_ms > 0 else 0.0


@dataclass
class Kernels:
    """How each compressed module runs on a backend: ``int8``, ``int4`` or ``float``, with the reason when a
    quantized plan runs float."""

    int8: list[str] = field(default_factory=list)
    int4: list[str] = field(default_factory=list)
    float: list[str] = field(default_factory=list)
    notes: dict[str, str] = field(default_factory=dict)

    def kind(self, module: str) -> str | None:
        return next((k for k in KINDS if module in getattr(self, k)), None)

    def add(self, module: str, kind: str, note: str | None = None) -> None:
        for k in KINDS:
            if module in getattr(self, k):
                getattr(self, k).remove(module)
        getattr(self, kind).append(module)
        if note:
            self.notes[module] = note
        else:
            self.notes.pop(module, None)

    def to_dict(self) -> dict[str, Any]:
        return {"int8": list(self.int8), "int4": list(self.int4), "float": list(self.float),
                "notes": dict(self.notes)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Kernels:
        return cls(int8=list(d.get("int8", [])), int4=list(d.get("int4", [])), float=list(d.get("float", [])),
                   notes=dict(d.get("notes", {})))


def resolve_kernels(cm: CompressedModel, kinds: Iterable[str]) -> Kernels:
    """The one kernel decision: which kernel kind each compressed module of ``cm`` is lowered to.

    - ``int8`` where the layer's plan is int8-runnable (:attr:`~autocompress.plan.LayerPlan.int8_kernel`: <= 8-bit
      weights on a uniform grid and 8-bit inputs) and ``int8`` is among ``kinds``;
    - ``int4`` for a ``Linear`` whose <= 4-bit weights run with float inputs, where ``int4`` is among ``kinds``;
    - ``float`` otherwise (the weights are on the plan's grid, stored as float32), with the reason.
    """
    allowed = frozenset(kinds)
    out = Kernels()
    for layer, names in cm.modules.items():
        lp = cm.plan.layer(layer)
        for name in names:
            bits = cm.weight_bits.get(name, 32)
            if cm.weight_sharing.get(name, False):
                out.add(name, "float", f"k-means shared {bits}-bit weights run as float32 (a codebook, not a "
                                       "uniform grid: smaller on disk only)")
            elif lp.int8_kernel:
                if "int8" in allowed:
                    out.add(name, "int8")
                else:
                    out.add(name, "float", "int8 planned, run as float32 (no int8 kernel on this backend or "
                                           "predictor)")
            elif (lp.int4_kernel and bits <= INT4_MAX_BITS and isinstance(get_module(cm.model, name), nn.Linear)
                  and "int4" in allowed):
                # (8-bit inputs were taken by the int8 branch: what reaches here has float or 16-bit inputs)
                out.add(name, "int4")
            elif bits < 32:
                why = ("16-bit activations: no int16 kernel on this backend" if lp.activation_bits == 16 else
                       "weight-only quantization: no faster kernel for this layer type/bit-width here")
                out.add(name, "float", f"{bits}-bit weights run as float32 ({why})")
            else:
                out.add(name, "float")
    return out


def feed_arrays(example_input: Inputs, batch_size: int = 1) -> dict[str, np.ndarray]:
    """``batch_size`` copies of the first sample of ``example_input`` as the named arrays a session is fed
    (:func:`autocompress.tasks.inputs.feed`)."""
    return feed(repeat_first(example_input, batch_size))


class Session(ABC):
    """An open inference session of one artifact: ``run(named arrays) -> list of output arrays``.

    ``inputs`` maps input names to arrays (:func:`autocompress.tasks.inputs.feed`); inputs the artifact does not
    have (an input the exporter found unused) are not fed."""

    @abstractmethod
    def run(self, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
        ...


@dataclass
class Lowered:
    """A lowered candidate: the artifact (a file, or a module for the eager backend) and its kernels."""

    artifact: Path | nn.Module
    kernels: Kernels


class Backend(ABC):
    """A runtime a candidate is lowered to, run on and timed with (see the module docstring).

    ``kinds``: the kernel kinds it can run (:data:`KINDS`); ``files``: whether ``lower`` writes a file.
    """

    name: ClassVar[str]
    kinds: ClassVar[frozenset[str]]
    files: ClassVar[bool] = True

    @abstractmethod
    def lower(self, cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs],
              folder: Path, *, kinds: Iterable[str] | None = None) -> Lowered:
        """Lower the baked ``cm`` into ``folder`` with the kernels :func:`resolve_kernels` picks among ``kinds``
        (default: all this backend has); ``calibration``: input batches for int8 activation ranges."""

    @abstractmethod
    def session(self, artifact: Path | nn.Module, *, threads: int = 1) -> Session:
        ...

    def versions(self) -> dict[str, str]:
        """Library versions that decide which kernels run."""
        return {}

    def runtime_ops(self, artifact: Path) -> dict[str, int]:
        """What the runtime really runs for a lowered file (operator or layer-precision counts); {} when unknown."""
        return {}

    def op_times(self, artifact: Path | nn.Module, example_input: Inputs, *, runs: int = 30,
                 threads: int = 1) -> dict[str, float]:
        """Per operator type of the runtime graph: the ms of one call its own profiler attributes to those nodes
        (median over ``runs`` calls per node, the profiler's own per-node cost taken off); {} where the runtime
        has no per-node profiler. Absolute ms, at the machine's speed of the moment."""
        return {}

    def time(self, artifacts: dict[str, Path | nn.Module], example_input: Inputs,
             spec: TimingSpec) -> dict[str, Timing]:
        """Time each artifact, interleaved round by round (:func:`time_interleaved`)."""
        arrays = feed_arrays(example_input, spec.batch_size)
        calls = {}
        for key, artifact in artifacts.items():
            sess = self.session(artifact, threads=spec.threads)
            calls[key] = (lambda s=sess: s.run(arrays))
        return time_interleaved(calls, spec, backend=self.name)

    def measure(self, cm: CompressedModel, example_input: Inputs, calibration: Sequence[Inputs],
                spec: TimingSpec, *, kinds: Iterable[str] | None = None,
                keep_dir: Path | None = None) -> tuple[Timing, Kernels]:
        """Lower ``cm`` (in a temporary folder, or ``keep_dir``) and time it."""
        with tempfile.TemporaryDirectory(prefix=f"autocompress-{self.name}-") as tmp:
            lowered = self.lower(cm, example_input, calibration, Path(keep_dir or tmp), kinds=kinds)
            timing = self.time({"model": lowered.artifact}, example_input, spec)["model"]
        return timing, lowered.kernels


def time_interleaved(calls: dict[str, Callable[[], Any]], spec: TimingSpec, *,
                     backend: str = "") -> dict[str, Timing]:
    """The one timing statistic (see the module docstring), for several callables at once."""
    ref = None
    if spec.reference:
        from .reference import reference

        ref = reference(spec.threads)
    for call in calls.values():
        for _ in range(spec.warmup):
            call()
    samples: dict[str, list[float]] = {k: [] for k in calls}
    medians: dict[str, list[float]] = {k: [] for k in calls}
    ratios: dict[str, list[float]] = {k: [] for k in calls}
    part_ratios: dict[str, list[list[float]]] = {k: [] for k in calls}
    blocks: list[float] = []
    part_blocks: list[list[float]] = []
    before = ref.block() if ref is not None else 0.0
    before_parts = list(ref.last_parts) if ref is not None else []
    for _ in range(max(1, spec.rounds)):
        for key, call in calls.items():
            times = []
            for _ in range(spec.runs):
                t0 = time.perf_counter_ns()
                call()
                times.append((time.perf_counter_ns() - t0) / 1e6)
            medians[key].append(statistics.median(times))
            samples[key].extend(times)
            if ref is not None:
                after = ref.block()
                after_parts = list(ref.last_parts)
                blocks.append(before)
                part_blocks.append(before_parts)
                ratios[key].append(medians[key][-1] / ((before + after) / 2))
                part_ratios[key].append([medians[key][-1] / ((b + a) / 2) for b, a in zip(before_parts, after_parts,
                                                                                        strict=True)])
                before, before_parts = after, after_parts
    part_blocks.append(before_parts)
    names = list(ref.names) if ref is not None else []
    out = {}
    for key in calls:
        q = statistics.quantiles(samples[key], n=10) if len(samples[key]) > 1 else samples[key] * 9
        out[key] = Timing(latency_ms=statistics.median(medians[key]), rounds_ms=[round(m, 6) for m in medians[key]],
                          p10_ms=q[0], p90_ms=q[-1], runs=len(samples[key]), threads=spec.threads,
                          batch_size=spec.batch_size, backend=backend,
                          normalized=statistics.median(ratios[key]) if ratios[key] else None,
                          reference_ms=statistics.median(blocks + [before]) if ref is not None else None,
                          parts={n: [statistics.median(r[i] for r in part_ratios[key]),
                                     statistics.median(b[i] for b in part_blocks)] for i, n in enumerate(names)}
                          if part_ratios[key] else None)
    return out

