"""Load an exported artifact (checksums first), rebuild the PyTorch model, and re-measure it (``verify``).

The PyTorch artifact is the plan, the packed weights and an architecture reference. Loading builds the teacher's
architecture (random weights), replays the *structure* of the plan on it with :func:`autocompress.apply` (depth,
channels, low rank: these depend only on shapes), loads the unpacked weights, and re-installs the calibrated input
quantizers. The architecture comes from, in order: the ``architecture=`` argument; the built-in architecture
of a built-in task; the user task's function (``package.module:function``, called with its options: this runs
the user's code, and needs it importable). An artifact made from a bare ``Task`` object (no spec) needs
``architecture=``. The ONNX artifact needs nothing but ONNX Runtime.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..compress import apply
from ..compress.layers import get_module
from ..compress.quantize import InputQuantizer
from ..plan import CompressionPlan, LayerPlan
from ..runtime.onnxruntime import OnnxRuntimeBackend
from ..tasks import load_task, models
from ..tasks.inputs import INPUT_NAME, feed, from_call, from_spec
from .card import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    INDEX_FILE,
    MODEL_JSON,
    ONNX_FILE,
    PLAN_FILE,
    WEIGHTS_FILE,
    ArtifactError,
    read_sums,
    safe_path,
    sha256_file,
)
from .pack import PackError, unpack_state

TORCH_FORMAT = "autocompress-torch-artifact"


def builtin_architectures() -> dict[str, Callable[[], nn.Module]]:
    """Untrained architectures of the built-in tasks (so loading never trains a teacher)."""

    return {
        "mnist-lenet5": models.LeNet5,
        "mnist-lenet300": models.lenet300,
        "digits-mlp": lambda: models.mlp([64, 64, 32, 10]),
        "mnist-resnet": lambda: models.SmallResNet(width=16, blocks=(1, 1, 1)),
    }


def _same_structure(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(sa[k].shape == sb[k].shape for k in sa)


def architecture_ref(teacher: nn.Module, spec: str | None, options: dict[str, Any] | None) -> dict[str, Any]:
    """How ``load`` will rebuild the teacher's architecture (stored in ``weights.json``)."""
    builtins = builtin_architectures()
    if spec in builtins and not options and _same_structure(builtins[spec](), teacher):
        return {"kind": "builtin", "name": spec}
    if spec and ":" in spec:
        return {"kind": "task", "task": spec, "task_options": options or {},
                "note": "loading calls this task function (runs its code) to get the architecture"}
    return {"kind": "unknown", "class": f"{type(teacher).__module__}.{type(teacher).__qualname__}",
            "note": "pass architecture=<an instance of the teacher's class> to autocompress.load"}


def resolve_architecture(ref: dict[str, Any]) -> nn.Module:
    kind = ref.get("kind")
    if kind == "builtin":
        builtins = builtin_architectures()
        if ref.get("name") not in builtins:
            raise ArtifactError(f"unknown built-in architecture {ref.get('name')!r}; known: {sorted(builtins)}")
        return builtins[ref["name"]]()
    if kind == "task":

        return load_task(ref["task"], ref.get("task_options") or {}).model
    raise ArtifactError(f"this artifact cannot rebuild its architecture by itself ({ref.get('class', '?')}): "
                        "pass architecture=<an instance of the teacher's model class> to autocompress.load, or "
                        "load it with runtime='onnx'")


def structure_plan(plan: CompressionPlan) -> CompressionPlan:
    """The shape-changing part of ``plan`` only (student size, channels, low rank)."""
    layers = {k: LayerPlan(channel_keep=v.channel_keep, rank_ratio=v.rank_ratio) for k, v in plan.layers.items()}
    return CompressionPlan(layers=layers, student=plan.student, distill=plan.distill)


def rebuild_torch(folder: Path, architecture: nn.Module | None = None) -> nn.Module:
    """The PyTorch model of an artifact folder (checksums are *not* checked here; see :func:`load`)."""
    folder = Path(folder)
    try:
        meta = json.loads(safe_path(folder, INDEX_FILE).read_text())
        plan = CompressionPlan.from_json(safe_path(folder, PLAN_FILE).read_text())
        data = safe_path(folder, WEIGHTS_FILE).read_bytes()
    except (OSError, ValueError) as e:
        raise ArtifactError(f"{folder}: cannot read the PyTorch artifact: {e}") from None
    if meta.get("type") != TORCH_FORMAT or meta.get("version") != 1:
        raise ArtifactError(f"{folder / INDEX_FILE}: not a version-1 {TORCH_FORMAT}")
    arch = architecture if architecture is not None else resolve_architecture(meta.get("architecture", {}))
    example = from_spec(meta["inputs"] if "inputs" in meta else {INPUT_NAME: meta["input"]})
    try:
        with torch.enable_grad():  # the pruning dependency graph traces with autograd
            cm = apply(arch, structure_plan(plan), example)
    except Exception as e:
        raise ArtifactError(f"cannot replay the plan's structure on {type(arch).__name__}: {e}") from None
    try:
        state = unpack_state(data, meta["weights"])
    except PackError as e:
        raise ArtifactError(f"{folder / WEIGHTS_FILE}: {e}") from None
    expected = cm.model.state_dict()
    wrong = [k for k in expected if k not in state or state[k].shape != expected[k].shape]
    extra = [k for k in state if k not in expected]
    if wrong or extra:
        raise ArtifactError(f"the architecture does not match the packed weights (missing or reshaped: "
                            f"{wrong[:5]}, unexpected: {extra[:5]}); is it the teacher's architecture?")
    cm.model.load_state_dict(state, strict=True)
    for q in meta.get("input_quantizers", []):
        iq = InputQuantizer(int(q["bits"]))
        iq.calibrating, iq.lo, iq.hi = False, float(q["lo"]), float(q["hi"])
        get_module(cm.model, q["module"]).register_forward_pre_hook(iq)
    return cm.model.eval()


class OnnxModule(nn.Module):
    """The ONNX artifact in an ONNX Runtime session, callable like the model it was exported from (one tensor,
    positional tensors or keyword tensors in; a tensor out)."""

    def __init__(self, path: Path, threads: int = 1) -> None:
        super().__init__()
        self.path = Path(path)
        self.session = OnnxRuntimeBackend().inference_session(self.path, threads=threads)
        self.input_names = [i.name for i in self.session.get_inputs()]

    def forward(self, *args: torch.Tensor, **kwargs: torch.Tensor) -> torch.Tensor:
        arrays = feed(from_call(args, kwargs))
        out = self.session.run(None, {n: arrays[n] for n in self.input_names})[0]
        return torch.from_numpy(out)


def verify_files(path: str | Path) -> dict[str, Any]:
    """Check every file against ``SHA256SUMS`` and the card; return the card. Raises :class:`ArtifactError`."""
    folder = Path(path)
    if not folder.is_dir():
        raise ArtifactError(f"{folder} is not a folder (an autocompress export is a folder)")
    sums = read_sums(folder)
    if MODEL_JSON not in sums:
        raise ArtifactError(f"{folder}: SHA256SUMS does not list {MODEL_JSON}")
    for name, digest in sums.items():
        p = safe_path(folder, name)
        if not p.is_file():
            raise ArtifactError(f"{folder}: {name} is missing (listed in SHA256SUMS)")
        got = sha256_file(p)
        if got != digest:
            raise ArtifactError(f"{p}: checksum mismatch (SHA256SUMS says {digest[:16]}…, the file is "
                                f"{got[:16]}…): it was changed after export; refusing to load it")
    try:
        card = json.loads((folder / MODEL_JSON).read_text())
    except ValueError as e:
        raise ArtifactError(f"{folder / MODEL_JSON}: not JSON: {e}") from None
    if card.get("format") != ARTIFACT_FORMAT or card.get("version") != ARTIFACT_VERSION:
        raise ArtifactError(f"{folder / MODEL_JSON}: not a version-{ARTIFACT_VERSION} {ARTIFACT_FORMAT} card")
    for name, f in card.get("files", {}).items():
        if sums.get(name) != f.get("sha256"):
            raise ArtifactError(f"{folder}: {name} has different checksums in {MODEL_JSON} and SHA256SUMS")
    return card


def load(path: str | Path, *, runtime: str | None = None, architecture: nn.Module | None = None,
         threads: int = 1) -> nn.Module:
    """A runnable model from an export folder, after checking every file's SHA-256.

    runtime:      ``"torch"`` (the packed PyTorch artifact, rebuilt; default when exported) or ``"onnx"``
                  (the ONNX Runtime artifact wrapped as a module; default when only ONNX was exported)
    architecture: an instance of the teacher's model class (weights are ignored), for artifacts whose
                  architecture cannot be rebuilt from the card alone (see the module docstring)
    The model carries its card as ``model.autocompress_card``. Raises :class:`ArtifactError`.
    """
    folder = Path(path)
    card = verify_files(folder)
    formats = card.get("formats", [])
    runtime = runtime or ("torch" if "torch" in formats else "onnx")
    if runtime not in ("torch", "onnx"):
        raise ArtifactError(f"runtime must be 'torch' or 'onnx', but got {runtime!r}")
    if runtime not in formats:
        raise ArtifactError(f"{folder} was exported without the {runtime!r} format (it has {formats})")
    model = rebuild_torch(folder, architecture) if runtime == "torch" else OnnxModule(folder / ONNX_FILE, threads)
    model.autocompress_card = card
    return model


__all__ = ["load", "verify_files", "rebuild_torch", "OnnxModule", "builtin_architectures", "architecture_ref",
           "resolve_architecture", "structure_plan"]
