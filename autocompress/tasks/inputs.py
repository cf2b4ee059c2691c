"""Model inputs of any structure: one tensor, a tuple of tensors (positional arguments) or a dict of tensors
(keyword arguments, e.g. ``input_ids`` + ``attention_mask``), of any dtype.

Every place that runs a model, slices a batch, or hands inputs to a runtime goes through these functions, so a
structure works everywhere once it works here. Runtimes see named arrays: ``input`` for one tensor, ``input.0``,
``input.1`` ... for a tuple, the keys for a dict (in the order of the model's ``forward`` parameters, which is the
order the ONNX exporter gives the graph's inputs).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Union

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, default_collate

Inputs = Union[torch.Tensor, tuple[torch.Tensor, ...], dict[str, torch.Tensor]]  # noqa: UP007 (a runtime alias)

INPUT_NAME = "input"


def problem(x: Any) -> str | None:
    """Why ``x`` is not an :data:`Inputs` value (None when it is one)."""
    if isinstance(x, torch.Tensor):
        return None if x.dim() >= 1 else "a 0-d tensor has no batch dimension"
    if isinstance(x, tuple | list):
        if not x:
            return "an empty tuple"
        bad = [type(v).__name__ for v in x if not isinstance(v, torch.Tensor)]
        return f"a tuple holding {bad[0]}, not only tensors" if bad else None
    if isinstance(x, dict):
        if not x:
            return "an empty dict"
        bad = [k for k, v in x.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
        return f"a dict whose entry {bad[0]!r} is not a tensor under a string key" if bad else None
    return f"a {type(x).__name__}, not a tensor, a tuple of tensors or a dict of tensors"


def call(model: Callable[..., Any], x: Inputs) -> Any:
    """``model`` run on ``x``: ``model(x)``, ``model(*x)`` or ``model(**x)``."""
    if isinstance(x, dict):
        return model(**x)
    if isinstance(x, tuple | list):
        return model(*x)
    return model(x)


@contextmanager
def hooked_eval(model: nn.Module, handles: Iterable[Any]) -> Iterator[nn.Module]:
    """``model`` in eval mode for the block; afterwards the hook ``handles`` are removed and its mode restored."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        for h in handles:
            h.remove()
        model.train(was)


def from_call(args: tuple, kwargs: dict) -> Inputs:
    """The inputs a module's ``forward(*args, **kwargs)`` was called with, as :func:`call` passes them."""
    return kwargs if kwargs else args[0] if len(args) == 1 else tuple(args)


def map_inputs(fn: Callable[[torch.Tensor], torch.Tensor], x: Inputs) -> Inputs:
    """``x`` with ``fn`` applied to every tensor, structure kept."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    if isinstance(x, tuple | list):
        return tuple(fn(v) for v in x)
    return fn(x)


def tensors(x: Inputs) -> list[torch.Tensor]:
    return list(x.values()) if isinstance(x, dict) else list(x) if isinstance(x, tuple | list) else [x]


def first(x: Inputs, n: int = 1) -> Inputs:
    """The first ``n`` samples of a batch."""
    return map_inputs(lambda t: t[:n], x)


def repeat_first(x: Inputs, batch_size: int = 1) -> Inputs:
    """``batch_size`` copies of the first sample of ``x``."""
    return map_inputs(lambda t: t[:1].repeat(batch_size, *([1] * (t.dim() - 1))).contiguous(), x)


def collate(samples: list[Inputs]) -> Inputs:
    """Samples of one structure stacked into a batch (PyTorch's default collate; tuples stay tuples)."""
    batch = default_collate(samples)
    return tuple(batch) if isinstance(batch, list) else batch


class Collated(Dataset):
    """A task's split with the user's collate function (``Task.collate``), which every loader of it uses."""

    def __init__(self, data: Dataset, collate_fn: Callable[[list], Any]) -> None:
        self.data, self.collate_fn = data, collate_fn

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int) -> Any:
        return self.data[i]


def collate_of(data: Dataset) -> Callable[[list], Any]:
    """The collate function batches of ``data`` are made with: the task's (:class:`Collated`), or PyTorch's
    default (tuples kept as tuples)."""
    return data.collate_fn if isinstance(data, Collated) else collate


def loader(data: Dataset, batch_size: int, **kwargs: Any) -> DataLoader:
    """A DataLoader over a task's split, batched with its collate function (:func:`collate_of`)."""
    return DataLoader(data, batch_size=batch_size, collate_fn=collate_of(data), **kwargs)


def batch_len(x: Inputs) -> int:
    return int(tensors(x)[0].shape[0])


def to_device(x: Inputs, device: torch.device | str) -> Inputs:
    return map_inputs(lambda t: t.to(device), x)


def resolve_device(spec: str = "auto") -> torch.device:
    """``auto`` (CUDA when available, else CPU), ``cpu``, ``cuda``, ``cuda:N`` or ``mps`` as a device; raises
    ValueError saying what this machine has when the device is not available."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(spec)
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (device.index or 0) >= n:
            raise ValueError(f"device {spec!r} is not available: this machine has {n} CUDA device(s) for this torch "
                             f"build (torch {torch.__version__}); use `device: cpu` or `auto`")
    if device.type == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
        raise ValueError(f"device {spec!r} is not available on this machine; use `device: cpu` or `auto`")
    return device


def describe(x: Inputs) -> str:
    """``(1, 3, 32, 32) float32`` or ``input_ids (1, 16) int64, attention_mask (1, 16) int64``."""
    def one(t: torch.Tensor) -> str:
        return f"{tuple(t.shape)} {str(t.dtype).removeprefix('torch.')}"

    if isinstance(x, torch.Tensor):
        return one(x)
    return ", ".join(f"{k} {one(t)}" for k, t in named(None, x).items())


def signature_key(x: Inputs) -> tuple:
    """Shapes (without the batch dimension) and dtypes: what a traced analysis of the model depends on."""
    return tuple((k, tuple(t.shape[1:]), str(t.dtype)) for k, t in named(None, x).items())


def named(model: nn.Module | None, x: Inputs) -> dict[str, torch.Tensor]:
    """``x`` as named tensors, in the order the ONNX exporter gives the graph's inputs (see the module docstring)."""
    if isinstance(x, torch.Tensor):
        return {INPUT_NAME: x}
    if isinstance(x, tuple | list):
        return {f"{INPUT_NAME}.{i}": t for i, t in enumerate(x)}
    order = list(x)
    if model is not None:
        try:
            params = list(inspect.signature(model.forward).parameters)
        except (TypeError, ValueError):
            params = []
        order = [p for p in params if p in x] + [k for k in x if k not in params]
    return {k: x[k] for k in order}


def from_named(arrays: dict[str, Any]) -> Inputs:
    """The inverse of :func:`named` (values may be numpy arrays; they become tensors)."""
    tens = {k: torch.from_numpy(np.asarray(v)) if not isinstance(v, torch.Tensor) else v for k, v in arrays.items()}
    if list(tens) == [INPUT_NAME]:
        return tens[INPUT_NAME]
    if tens and all(k == f"{INPUT_NAME}.{i}" for i, k in enumerate(tens)):
        return tuple(tens.values())
    return tens


def spec(x: Inputs) -> dict[str, dict[str, Any]]:
    """Names, shapes and dtypes of ``x`` (what an artifact's card records of its inputs)."""
    return {k: {"shape": list(t.shape), "dtype": str(t.dtype).removeprefix("torch.")} for k, t in named(None, x).items()}


def from_spec(specs: dict[str, dict[str, Any]]) -> Inputs:
    """Zero-filled inputs of the names, shapes and dtypes :func:`spec` recorded."""
    return from_named({k: torch.zeros([int(d) for d in v["shape"]], dtype=getattr(torch, v.get("dtype", "float32")))
                       for k, v in specs.items()})


def as_array(t: torch.Tensor) -> np.ndarray:
    """A tensor as a runtime's input: float32 for floating tensors; integer inputs (token ids) keep their dtype."""
    t = t.detach().cpu()
    return t.numpy().astype(np.float32) if t.is_floating_point() else t.numpy()


def feed(x: Inputs) -> dict[str, np.ndarray]:
    """``x`` as the named arrays a runtime session is fed (sessions take them by name, so their order is moot)."""
    return {k: as_array(t) for k, t in named(None, x).items()}


__all__ = ["INPUT_NAME", "Collated", "Inputs", "as_array", "batch_len", "call", "collate", "collate_of", "describe", "feed", "first", "hooked_eval",
           "from_call", "from_named", "from_spec", "loader", "map_inputs", "named", "problem", "repeat_first", "resolve_device", "signature_key", "spec", "tensors",
           "to_device"]
