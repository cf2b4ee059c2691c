"""Built-in tasks. Teachers are trained on first use and cached with a SHA-256 checksum (retrained if it fails)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from ..errors import TaskError
from . import data, hf, models
from .metric import evaluate
from .task import Task

log = logging.getLogger(__name__)
TEACHER_FORMAT = 1


def cache_dir() -> Path:
    """Where trained teachers are kept: ``$AUTOCOMPRESS_CACHE`` or ``~/.cache/autocompress``."""
    return Path(os.environ.get("AUTOCOMPRESS_CACHE", Path.home() / ".cache" / "autocompress"))


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def train_classifier(model: nn.Module, train_set, *, epochs: int, lr: float = 2e-3, batch_size: int = 32,
                     seed: int = 0) -> nn.Module:
    """Plain cross-entropy training with Adam; deterministic for a given seed."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, generator=gen)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=epochs * len(loader))
    model.train()
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
            sched.step()
    return model.eval()


def cached_teacher(name: str, build: Callable[[], nn.Module], splits: data.Splits, *, epochs: int,
                   lr: float = 2e-3) -> nn.Module:
    """Load the cached teacher for ``name`` if its checksum holds, otherwise train it and cache it atomically."""
    folder = cache_dir() / "teachers"
    weights, meta_path = folder / f"{name}.pt", folder / f"{name}.json"
    model = build()
    if weights.is_file() and meta_path.is_file():
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("format") != TEACHER_FORMAT:
                raise ValueError(f"format {meta.get('format')!r} is not {TEACHER_FORMAT}")
            if meta.get("sha256") != _sha256(weights):
                raise ValueError("checksum mismatch")
            model.load_state_dict(torch.load(weights, weights_only=True))
            return model.eval()
        except Exception as e:  # corrupt cache of any kind: say so, retrain
            log.warning("cached teacher %s is unusable (%s); retraining", weights, e)
            model = build()
    log.warning("training the %s teacher (first use; cached in %s)", name, folder)
    start = time.perf_counter()
    train_classifier(model, splits.train, epochs=epochs, lr=lr)
    seconds = time.perf_counter() - start
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=folder, suffix=".pt.tmp", delete=False) as f:
        torch.save(model.state_dict(), f)
    tmp = Path(f.name)
    meta = {"format": TEACHER_FORMAT, "task": name, "sha256": _sha256(tmp), "epochs": epochs, "lr": lr,
            "train_seconds": round(seconds, 2), "val_accuracy": evaluate(model, splits.val)}
    os.replace(tmp, weights)
    tmp_meta = meta_path.with_suffix(".json.tmp")
    tmp_meta.write_text(json.dumps(meta, indent=2))
    os.replace(tmp_meta, meta_path)
    return model.eval()


def mnist_lenet5() -> Task:
    splits = data.mnist()
    model = cached_teacher("mnist-lenet5", models.LeNet5, splits, epochs=20)
    return Task(name="mnist-lenet5", model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


def mnist_lenet300() -> Task:
    splits = data.mnist(flat=True)
    model = cached_teacher("mnist-lenet300", models.lenet300, splits, epochs=20)
    return Task(name="mnist-lenet300", model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


def digits_mlp() -> Task:
    splits = data.digits()
    model = cached_teacher("digits-mlp", lambda: models.mlp([64, 64, 32, 10]), splits, epochs=60, lr=3e-3)
    return Task(name="digits-mlp", model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


BUILTIN_TASKS: dict[str, Callable[..., Task]] = {
    "mnist-lenet5": mnist_lenet5,
    "mnist-lenet300": mnist_lenet300,
    "digits-mlp": digits_mlp,
}


def mnist_resnet() -> Task:
    """A ResNet-style CNN (SmallResNet: width 16, one basic block per stage, 77,754 weights) on the MNIST subset."""
    splits = data.mnist()
    model = cached_teacher("mnist-resnet", lambda: models.SmallResNet(width=16, blocks=(1, 1, 1)), splits, epochs=8)
    return Task(name="mnist-resnet", model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


BUILTIN_TASKS["mnist-resnet"] = mnist_resnet


def mnist_resnet18() -> Task:
    """ResNet-18 (the reference architecture, 11.2 M weights, one input channel, 10 classes) trained on the MNIST
    subset: a real-size pretrained teacher for the zoo benchmarks."""
    splits = data.mnist()
    model = cached_teacher("mnist-resnet18", lambda: models.ResNet18(num_classes=10, in_channels=1), splits,
                           epochs=6, lr=1e-3)
    return Task(name="mnist-resnet18", model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


def mnist_mobilenetv2(size: int = 28) -> Task:
    """MobileNetV2 (the reference architecture, 2.2 M weights, one input channel, 10 classes) on the MNIST subset;
    ``size``: image side (28, or MNIST resized, e.g. 96, where MobileNetV2 is compute-bound rather than
    overhead-bound on a CPU)."""
    if not 16 <= size <= 224:
        raise TaskError(f"task_options.size must be in [16, 224], got {size}")
    splits = data.mnist(size=size)
    name = "mnist-mobilenetv2" if size == 28 else f"mnist-mobilenetv2-{size}px"
    model = cached_teacher(name, lambda: models.MobileNetV2(num_classes=10, in_channels=1), splits,
                           epochs=8 if size <= 32 else 4, lr=2e-3)
    return Task(name=name, model=model, example_input=splits.train[0][0].unsqueeze(0),
                train=splits.train, val=splits.val, test=splits.test)


BUILTIN_TASKS["mnist-resnet18"] = mnist_resnet18
BUILTIN_TASKS["mnist-mobilenetv2"] = mnist_mobilenetv2
# a save_pretrained folder + the user's data (extra: hf)
BUILTIN_TASKS["hf-classifier"] = hf.classifier_task
BUILTIN_TASKS["hf-image-classifier"] = hf.image_classifier_task
BUILTIN_TASKS["hf-causal-lm"] = hf.causal_lm_task
