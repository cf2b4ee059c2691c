"""Hugging Face ``transformers`` sequence classifiers from a local ``save_pretrained`` folder (never a hub).

An optional extra: ``pip install 'autocompress[hf]'``. The folder is loaded offline (``local_files_only``), with
``trust_remote_code`` off and weights from safetensors where the folder has them; a folder whose model needs custom
code is refused with a clear error. The model is wrapped as ``token ids (int64, batch x length) -> class logits``,
the attention mask derived from the padding id, so it runs through the whole pipeline like any single-input model:
layer discovery (every ``nn.Linear``: attention projections, MLPs, pooler, classifier; embeddings and LayerNorm
are left alone), per-layer sparsity and bits, low rank, distillation, int8/int4 lowering, export with integer
inputs. Not yet: attention-head pruning with heads kept consistent, and student depth over the encoder's
``nn.ModuleList`` of layers (both are skipped, never a failed trial).

As a built-in task (``task: hf-classifier``)::

    task: hf-classifier
    task_options: {folder: models/my-bert, data: mypackage.data:splits}   # splits() -> (train, val[, test])

where each split is a dataset of ``(token ids, label)`` pairs of one sequence length.
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn

from ..errors import TaskError
from .task import Task


class SequenceClassifier(nn.Module):
    """``input_ids -> logits`` around a ``transformers`` sequence-classification model."""

    def __init__(self, model: nn.Module, pad_token_id: int = 0) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_token_id).long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits


def load_sequence_classifier(folder: str | Path) -> SequenceClassifier:
    """The classifier saved in ``folder`` (``save_pretrained``), loaded offline; raises :class:`TaskError`."""
    folder = Path(folder)
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise TaskError(f"{folder} is not a save_pretrained folder (no config.json)")
    try:
        config = json.loads(config_file.read_text())
    except ValueError as e:
        raise TaskError(f"{config_file}: not JSON ({e})") from None
    if config.get("auto_map"):
        raise TaskError(f"{folder}: the model needs its own code (config.json has `auto_map`); autocompress loads "
                        "models with trust_remote_code off. Use a model class that transformers ships")
    try:
        transformers = importlib.import_module("transformers")
    except ImportError:
        raise TaskError("Hugging Face models need the `transformers` package: pip install 'autocompress[hf]'") \
            from None
    safetensors = any(folder.glob("*.safetensors"))
    try:
        model = transformers.AutoModelForSequenceClassification.from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, use_safetensors=safetensors or None)
    except Exception as e:
        raise TaskError(f"{folder}: cannot load a sequence classifier: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    pad = getattr(model.config, "pad_token_id", None)
    return SequenceClassifier(model.eval(), 0 if pad is None else int(pad)).eval()


def classifier_task(folder: str, data: str) -> Task:
    """Built-in task ``hf-classifier``: the classifier in ``folder`` and the splits ``data`` (``module:function``
    returning ``(train, val)`` or ``(train, val, test)``) gives."""
    model = load_sequence_classifier(folder)
    module_name, _, func_name = data.partition(":")
    try:
        splits = getattr(importlib.import_module(module_name), func_name)()
    except Exception as e:
        raise TaskError(f"task_options.data {data!r}: {type(e).__name__}: {e}") from None
    if not isinstance(splits, tuple | list) or len(splits) not in (2, 3):
        raise TaskError(f"task_options.data {data!r} must return (train, val) or (train, val, test)")
    train, val, *rest = splits
    example = train[0][0]
    if example.is_floating_point():
        raise TaskError(f"task_options.data {data!r}: inputs must be token ids (integers), got {example.dtype}")
    return Task(name=f"hf-classifier:{Path(folder).name}", model=model, example_input=example.unsqueeze(0),
                train=train, val=val, test=rest[0] if rest else None, info={"folder": str(folder)})


__all__ = ["SequenceClassifier", "load_sequence_classifier", "classifier_task"]
