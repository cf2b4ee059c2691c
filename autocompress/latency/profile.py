"""Latency profiles: micro-benchmarks of a machine + backend, the fitted model, in one versioned JSON file.

``build_profile`` measures, on this machine:

1. **micro-benchmarks** (:mod:`autocompress.latency.micro`): small graphs of every kernel kind compressed models
   are made of (convolutions of every kernel size / stride / depthwise / channel count, on maps from the late
   stages of an ImageNet CNN to its full-resolution stem, residual, inverted-residual and MBConv blocks, Linear
   as Gemm and MatMul, pooling, normalization, activations, attention and ViT blocks), float and int8 (static
   QDQ), low rank, 0-95 % sparse weights, through the same export and lowering as the search, each timed beside
   the reference workload (:mod:`autocompress.runtime.reference`) and fitted on its time relative to it;
2. **other precisions the lowering writes**: int4 weight-only
   MatMul (``MatMulNBits``), on the matrix shapes of Linear layers;
3. **whole-model calibration**: a handful of complete compressed models (architectures of their own, not the
   benchmark's), which fit the per-model offset and scale.

The file (``{"type": "LatencyProfile", "version": 2, "data": {...}}``) holds the machine fingerprint, every raw
sample (the kernel features of the measured graph and its latency) and the fitted :class:`CostModel`. It is
written to a temporary file and renamed, so a crash never leaves half a profile. No pickle anywhere.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import json
import logging
import os
import platform
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime
import torch

from ..compress.layers import discover_layers
from ..errors import AutocompressError
from ..plan import CompressionPlan, LayerPlan, StudentPlan
from ..runtime.reference import REFERENCE_VERSION
from ..tasks.models import SmallResNet, mlp
from . import micro
from .analysis import TeacherAnalysis, _export
from .graph import optimized_graph
from .lowering import Lowerer
from .measure import measure_plan
from .micro import AttentionBlock, Head, InvertedResidual
from .model import STREAM_KNOT_BYTES, CostModel, Sample, at_reference_speed, errors, fit
from .openvino_backend import OpenVinoLowerer
from .runtime_kernels import matmul_variant_samples
from .torch_backend import TorchLowerer

log = logging.getLogger(__name__)

# version 3: samples fitted on time relative to the reference workload (autocompress.runtime.reference), in ms at
# the profile's reference speed (info.reference_ms); version 2 profiles (absolute times) are refused; version 4:
# the streamed-weights term prices all of a model's weight bytes past the cache (model.streamed_bytes), version 3
# only those beyond the knot, so a version 3 profile's coefficient is refused too; version 5: MatMul / Gemm weights
# stream in a term of their own (a version 4 model has one term for all weights)
PROFILE_TYPE, PROFILE_VERSION = "LatencyProfile", 5
BACKENDS = ("onnxruntime", "openvino", "torch")
_FLAGS = ("sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx512_bf16", "avx_vnni",
          "amx_int8", "asimd", "sve", "i8mm")


class ProfileError(AutocompressError, ValueError):
    """A latency profile that cannot be used (missing, corrupt, wrong version, other backend or threads)."""

    exit_code = 2


# --- fingerprint -------------------------------------------------------------------------------------------

def _cpu_info() -> tuple[str, list[str]]:
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key in ("model name", "Model", "Hardware") and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        if key in ("flags", "Features") and not flags:
            have = set(value.split())
            flags = [f for f in _FLAGS if f in have]
    return model, flags


def fingerprint(*, threads: int = 1, backend: str = "onnxruntime") -> dict[str, Any]:
    """What the measurements depend on: CPU, cores, threads, libraries."""
    return dict(_fingerprint(threads, backend))


@functools.lru_cache(maxsize=16)
def _fingerprint(threads: int, backend: str) -> dict[str, Any]:
    model, flags = _cpu_info()
    fp = {"cpu": model, "cpu_flags": flags, "cores": os.cpu_count(), "machine": platform.machine(),
          "system": platform.system(), "threads": threads, "backend": backend,
          "onnxruntime": onnxruntime.__version__, "onnx": onnx.__version__, "torch": torch.__version__,
          "numpy": np.__version__, "python": platform.python_version()}
    if backend == "openvino":  # an optional extra: its version without importing it
        try:
            fp["openvino"] = importlib.metadata.version("openvino")
        except importlib.metadata.PackageNotFoundError:
            raise ProfileError("the openvino backend needs OpenVINO: pip install 'autocompress[openvino]'") from None
    return fp


_ID_KEYS = ("cpu", "cpu_flags", "cores", "machine", "system", "threads", "backend", "onnxruntime")
# what else changes timings on one backend: the torch version for eager PyTorch, OpenVINO's own
_BACKEND_KEYS = {"torch": ("torch",), "openvino": ("openvino",)}


def fingerprint_id(fp: dict[str, Any]) -> str:
    """Short hash of the parts of a fingerprint that change kernel timings."""
    keys = _ID_KEYS + _BACKEND_KEYS.get(str(fp.get("backend")), ())
    key = json.dumps({k: fp.get(k) for k in keys}, sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def fingerprint_diff(profile_fp: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``key: profile value -> this machine's value`` for every differing key that matters."""
    keys = (*_ID_KEYS, "torch", "onnx")
    return [f"{k}: {profile_fp.get(k)!r} -> {current.get(k)!r}" for k in keys if profile_fp.get(k) != current.get(k)]


def cache_dir() -> Path:
    return Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress"))


def default_profile_path(*, threads: int = 1, backend: str = "onnxruntime") -> Path:
    """``$AUTOCOMPRESS_CACHE/profiles/<fingerprint id>.json`` for this machine."""
    return cache_dir() / "profiles" / f"{fingerprint_id(fingerprint(threads=threads, backend=backend))}.json"


# --- the profile -------------------------------------------------------------------------------------------

@dataclass
class LatencyProfile:
    """A measured machine + backend: fingerprint, settings, raw samples, fitted model."""

    backend: str
    threads: int
    batch_size: int
    nchwc_block: int
    fingerprint: dict[str, Any]
    model: CostModel
    nchwc_align: int = 4
    samples: list[Sample] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def fingerprint_id(self) -> str:
        return fingerprint_id(self.fingerprint)

    def to_dict(self) -> dict[str, Any]:
        return {"type": PROFILE_TYPE, "version": PROFILE_VERSION, "data": {
            "backend": self.backend, "threads": self.threads, "batch_size": self.batch_size,
            "nchwc_block": self.nchwc_block, "nchwc_align": self.nchwc_align, "fingerprint": self.fingerprint,
            "fingerprint_id": self.fingerprint_id, "info": self.info, "model": self.model.to_dict(),
            "samples": [s.to_dict() for s in self.samples]}}

    @classmethod
    def from_dict(cls, obj: Any, *, source: str = "profile") -> LatencyProfile:
        if not isinstance(obj, dict) or obj.get("type") != PROFILE_TYPE:
            got = obj.get("type") if isinstance(obj, dict) else type(obj).__name__
            raise ProfileError(f"{source}: not a latency profile (expected type {PROFILE_TYPE!r}, got {got!r})")
        if obj.get("version") != PROFILE_VERSION:
            raise ProfileError(f"{source}: latency profile version {obj.get('version')!r} is not supported; this "
                               f"autocompress reads version {PROFILE_VERSION}. Re-run `autocompress profile`.")
        d = obj.get("data")
        ref_version = (d.get("info") or {}).get("reference_version") if isinstance(d, dict) else None
        if ref_version not in (None, REFERENCE_VERSION):
            raise ProfileError(f"{source}: latency profile timed against reference workload version {ref_version}; "
                               f"this autocompress times against version {REFERENCE_VERSION}, so its relative "
                               f"times do not compare. Re-run `autocompress profile`.")
        try:
            return cls(backend=str(d["backend"]), threads=int(d["threads"]), batch_size=int(d["batch_size"]),
                       nchwc_block=int(d["nchwc_block"]), nchwc_align=int(d.get("nchwc_align", 4)),
                       fingerprint=dict(d["fingerprint"]),
                       model=CostModel.from_dict(d["model"]),
                       samples=[Sample.from_dict(s) for s in d.get("samples", [])], info=dict(d.get("info", {})))
        except (KeyError, TypeError, ValueError) as e:
            raise ProfileError(f"{source}: malformed latency profile ({type(e).__name__}: {e}). Re-run "
                               f"`autocompress profile`.") from None

    def save(self, path: Path | str) -> Path:
        """Write atomically (temporary file in the same folder, then rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(self.to_dict(), f)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.path = path
        return path

    @property
    def reference_ms(self) -> float | None:
        """The reference workload's time (ms) while this profile was measured: the speed its predictions are at."""
        ref = self.info.get("reference_ms")
        return float(ref) if ref else None

    def mismatch(self) -> list[str]:
        """How this machine differs from the profiled one (empty when they match)."""
        return fingerprint_diff(self.fingerprint, fingerprint(threads=self.threads, backend=self.backend))


def load_profile(path: Path | str, *, warn_mismatch: bool = True) -> LatencyProfile:
    """Read and validate a profile; warns (with the fingerprint difference) when made on another machine."""
    path = Path(path)
    if not path.is_file():
        raise ProfileError(f"{path}: latency profile not found (make one with `autocompress profile -o {path}`)")
    try:
        obj = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ProfileError(f"{path}: corrupt latency profile, not valid JSON ({e.msg} at line {e.lineno}). Re-run "
                           f"`autocompress profile`.") from None
    except UnicodeDecodeError:
        raise ProfileError(f"{path}: corrupt latency profile (not a UTF-8 text file)") from None
    profile = LatencyProfile.from_dict(obj, source=str(path))
    profile.path = path
    if warn_mismatch:
        diff = profile.mismatch()
        if diff:
            msg = (f"latency profile {path} was measured on another machine or setup; predictions may be off: "
                   + "; ".join(diff))
            warnings.warn(msg, stacklevel=2)
            log.warning(msg)
    return profile


# --- building ----------------------------------------------------------------------------------------------

@dataclass
class ProfileSettings:
    """How much to measure. ``quick`` is for tests (seconds); the default is the full profile (<= 10 min)."""

    micro: int = 2400
    calibration_plans: int = 3
    calibration_models: int | None = None   # None: all of them
    extra_precisions: int = 24
    runs: int = 150
    rounds: int = 3
    warmup: int = 20
    seed: int = 0
    time_budget_s: float = 570.0

    @classmethod
    def quick(cls) -> ProfileSettings:
        return cls(micro=24, calibration_plans=1, calibration_models=3, extra_precisions=4, runs=40, rounds=2,
                   warmup=5, time_budget_s=120.0)


def stream_knot_bytes() -> float:
    """The model weight size (bytes) around which weights start to stream from memory on every call
    (:func:`~autocompress.latency.model.streamed_bytes`): half this machine's last-level cache (other tenants and
    the activations share it; on the machine the default was measured on, a 32 MiB L3, the slowdown sets in
    between 7 and 19 MB, earlier for GEMM weights), the default where the cache size cannot be read."""
    best = 0
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            text = (index / "size").read_text().strip().upper()
            size = int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1)
        except (OSError, ValueError):
            continue
        best = max(best, size)
    return best / 2 if best >= 2**20 else STREAM_KNOT_BYTES


def detect_nchwc() -> tuple[int, int]:
    """The runtime's NCHWc block size on this CPU (0 when it does not use the NCHWc layout) and the input-channel
    alignment it needs to switch a convolution's input to that layout, from what it does to probe convolutions."""
    from torch import nn


    def ops(cin: int) -> list[str]:
        m = nn.Sequential(nn.Conv2d(cin, 16, 3, padding=1)).eval()
        return [n.op for n in optimized_graph(_export(m, torch.randn(1, cin, 8, 8)), "all").nodes]

    sixteen = ops(16)
    if "ReorderOutput" not in sixteen and "ReorderInput" not in sixteen:
        return 0, 1
    block = 4 if "ReorderInput" in ops(4) else 8 if "ReorderInput" in ops(8) else 16
    align = next((a for a in (1, 2, 4, 8) if "ReorderInput" in ops(block + a)), block)
    return block, align


def _calibration_models() -> list[tuple[str, Callable[[], torch.nn.Module], tuple[int, ...], str]]:
    """Whole models for the per-model term: architectures of their own (not the benchmark's families)."""
    from torch import nn


    def vgg() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 24, 3, 1, 1), nn.ReLU(), nn.Conv2d(24, 24, 3, 1, 1), nn.ReLU(),
                             nn.MaxPool2d(2), nn.Conv2d(24, 48, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                             nn.Linear(48 * 8 * 8, 64), nn.ReLU(), nn.Linear(64, 10))

    def dwsep() -> nn.Module:
        return nn.Sequential(nn.Conv2d(3, 24, 3, 2, 1), nn.ReLU(), InvertedResidual(24, 24, 1, 3),
                             InvertedResidual(24, 40, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(40, 10))

    def encoder() -> nn.Module:
        return Head(nn.Sequential(nn.Linear(12, 48), AttentionBlock(48, 3, 96)), 48, 5)

    # (name, constructor, input shape, regex of the layers whose channels may be pruned)
    return [("vgg", vgg, (1, 3, 32, 32), "."), ("mlp", lambda: mlp([256, 384, 192, 10]), (1, 256), "."),
            ("resnet", lambda: SmallResNet(width=12, blocks=(1, 1, 1), in_channels=3), (1, 3, 32, 32), "."),
            ("dwsep", dwsep, (1, 3, 32, 32), "."), ("encoder", encoder, (1, 12, 12), r"ff1$")]


def _calibration_plan(model: torch.nn.Module, x: torch.Tensor, rng: np.random.Generator, prunable_re: str):
    import re


    layers = {}
    for info in discover_layers(model, x):
        prunable = re.search(prunable_re, info.name) is not None
        layers[info.name] = LayerPlan(
            sparsity=float(rng.choice([0.0, 0.5, 0.9])), weight_bits=int(rng.choice([4, 8, 32])),
            activation_bits=int(rng.choice([8, 32])),
            channel_keep=float(rng.choice([0.5, 0.75, 1.0])) if prunable else 1.0,
            rank_ratio=float(rng.choice([0.25, 0.5, 1.0, 1.0])))
    return CompressionPlan(layers=layers, student=StudentPlan(depth=float(rng.choice([0.5, 1.0]))))


def _matmul_samples(n: int, rng: np.random.Generator, settings: ProfileSettings, threads: int,
                    block: int) -> list[Sample]:
    """Dynamic int8 and int4 weight-only MatMul (and the float MatMul they replace) on Linear-sized matrices."""

    return matmul_variant_samples(n, rng, threads=threads, block=block, runs=settings.runs, rounds=settings.rounds,
                                  warmup=settings.warmup)


# backends other than ONNX Runtime: their lowering (plan -> kernels; the predictor uses it too) and what their
# profile notes
OTHER_BACKENDS: dict[str, tuple[Callable, str]] = {
    "torch": (TorchLowerer, "eager PyTorch runs quantized and sparse layers as float kernels (no int8 kernels here)"),
    "openvino": (OpenVinoLowerer, "OpenVINO runs <= 4-bit weight-only layers as float kernels (no int4 kernels "
                                  "here)"),
}


def build_profile(*, backend: str = "onnxruntime", threads: int = 1, settings: ProfileSettings | None = None,
                  progress: Callable[[str], None] | None = None) -> LatencyProfile:
    """Measure this machine and fit the model (see the module docstring)."""
    if backend not in BACKENDS:
        raise ProfileError(f"unknown backend {backend!r}; choose one of {list(BACKENDS)}")
    settings = settings or ProfileSettings()
    say = progress or (lambda msg: None)
    torch.set_num_threads(max(1, threads))
    start = time.perf_counter()
    rng = np.random.default_rng(settings.seed)
    if backend in OTHER_BACKENDS:
        # the same micro specs and calibration architectures, lowered as the search lowers for that backend, timed
        # on it, and read by its own lowering (see the modules named in OTHER_BACKENDS)
        lowerer, note = OTHER_BACKENDS[backend]
        samples, calibration, failures = _measure_samples(settings, say, start, rng, threads, lowerer,
                                                          functools.partial(measure_plan, backend=backend))
        return _fitted_profile(backend, threads, 0, 1, settings, start, samples, calibration, failures, note=note)
    block, align = detect_nchwc()
    say(f"NCHWc block size {block}, input channel alignment {align}")

    lowerer = Lowerer(block=block, align=align)

    def other_precisions() -> list[Sample]:
        say(f"other precisions: int4 MatMul ({settings.extra_precisions} shapes)")
        try:
            return _matmul_samples(settings.extra_precisions, rng, settings, threads, block)
        except Exception as e:  # e.g. a runtime without these contrib kernels
            log.warning("int4 MatMul micro-benchmarks skipped: %s: %s", type(e).__name__, e)
            return []

    samples, calibration, failures = _measure_samples(settings, say, start, rng, threads, lambda _: lowerer,
                                                      measure_plan, extra=other_precisions)
    return _fitted_profile(backend, threads, block, align, settings, start, samples, calibration, failures)


def _measure_samples(settings: ProfileSettings, say: Callable[[str], None], start: float, rng: np.random.Generator,
                     threads: int, lowerer_for: Callable, measure: Callable,
                     extra: Callable[[], list[Sample]] | None = None) -> tuple[list[Sample], list[Sample], int]:
    """Micro-benchmarks, then ``extra`` samples, then the calibration models, for any backend:
    ``lowerer_for(analysis)`` gives the backend's lowerer, ``measure(model, plan, x, ...)`` times a plan.
    Returns ``(micro samples, calibration samples, failures)``."""

    samples: list[Sample] = []
    failures = 0
    specs = micro.sample_specs(settings.micro, seed=settings.seed)
    calib_budget = settings.time_budget_s * 0.25
    micro_budget = settings.time_budget_s - calib_budget
    timing = dict(threads=threads, warmup=settings.warmup, runs=settings.runs, rounds=settings.rounds)
    for i, spec in enumerate(specs):
        if time.perf_counter() - start > micro_budget * 0.85:
            say(f"time budget: stopping micro-benchmarks after {i} of {len(specs)}")
            break
        try:
            module, x = micro.build(spec)
            plan = micro.random_plan(module, x, rng)
            analysis = TeacherAnalysis(module, x, prune_probes=False)
            lowered = lowerer_for(analysis).lower(analysis.resolve(plan))
            m = measure(module, plan, x, **timing)
        except Exception as e:  # a micro-benchmark the exporter or runtime refuses: skip it, say so
            failures += 1
            log.info("micro-benchmark %s skipped: %s: %s", spec.get("family"), type(e).__name__, e)
            continue
        samples.append(Sample.measured(lowered, m, tag=spec["family"], group="micro",
                                       spec={**spec, "plan": plan.to_dict()}))
        if (i + 1) % 25 == 0:
            say(f"micro-benchmarks: {i + 1}/{len(specs)} ({time.perf_counter() - start:.0f} s)")
    if extra is not None:
        samples.extend(extra())
    calibration: list[Sample] = []
    for name, ctor, shape, prunable in _calibration_models()[:settings.calibration_models]:
        torch.manual_seed(settings.seed)
        model = ctor().eval()
        x = torch.randn(*shape)
        analysis = TeacherAnalysis(model, x)
        lowerer = lowerer_for(analysis)
        plans = [CompressionPlan()] + [_calibration_plan(model, x, rng, prunable)
                                       for _ in range(settings.calibration_plans)]
        for plan in plans:
            try:
                lowered = lowerer.lower(analysis.resolve(plan))
                m = measure(model, plan, x, **timing)
            except Exception as e:
                failures += 1
                log.info("calibration model %s skipped: %s: %s", name, type(e).__name__, e)
                continue
            calibration.append(Sample.measured(lowered, m, tag=name, group="calibration",
                                               spec={"model": name, "plan": plan.to_dict()}))
        say(f"calibration: {name} ({time.perf_counter() - start:.0f} s)")
    return samples, calibration, failures


def _fitted_profile(backend: str, threads: int, block: int, align: int, settings: ProfileSettings, start: float,
                    samples: list[Sample], calibration: list[Sample], failures: int,
                    note: str | None = None) -> LatencyProfile:
    """Fit the model on the measured samples and wrap everything as a profile."""
    if not samples:
        raise ProfileError("no micro-benchmark could be measured on this machine")
    reference_ms = at_reference_speed(samples + calibration)
    knot = stream_knot_bytes()
    model = fit(samples, calibration=calibration, stream_knot_bytes=knot)
    info: dict[str, Any] = {
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "seconds": round(time.perf_counter() - start, 1),
        "reference_ms": reference_ms, "reference_version": REFERENCE_VERSION, "stream_knot_bytes": knot,
        "settings": settings.__dict__, "failed_samples": failures,
        "fit": {"micro": _summary(errors(model, samples)),
                "calibration": _summary(errors(model, calibration)) if calibration else None},
        "kinds": model.kinds,
    }
    if note:
        info["note"] = note
    return LatencyProfile(backend=backend, threads=threads, batch_size=1, nchwc_block=block, nchwc_align=align,
                          fingerprint=fingerprint(threads=threads, backend=backend), model=model,
                          samples=samples + calibration, info=info)


def _summary(err: np.ndarray) -> dict[str, float]:
    a = np.abs(err)
    return {"n": int(len(err)), "rmspe": float(np.sqrt(np.mean(err**2))) if len(err) else 0.0,
            "within_10pct": float(np.mean(a <= 0.10)) if len(err) else 0.0,
            "max_abs": float(a.max()) if len(err) else 0.0}
