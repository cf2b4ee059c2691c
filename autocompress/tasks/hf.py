"""Hugging Face ``transformers`` models from a local ``save_pretrained`` folder (never a hub).

An optional extra: ``pip install 'autocompress[hf]'``. A folder is loaded offline (``local_files_only``), with
``trust_remote_code`` off, eager attention (what the ONNX exporter traces) and weights from safetensors where the
folder has them; a folder whose model needs custom code is refused with a clear error. Three kinds, each a built-in
task taking ``folder`` and ``data`` (``module:function`` returning ``(train, val)`` or ``(train, val, test)``):

- ``hf-classifier``        sequence classifiers (BERT/DistilBERT-style): ``token ids -> class logits``, the attention
                           mask derived from the padding id; data: ``(token ids, label)`` pairs of one length
- ``hf-image-classifier``  image classifiers (ViT-style): ``pixel_values -> class logits``; data: ``(image, label)``
                           pairs, images as the model's config expects (channels, size)
- ``hf-causal-lm``         causal LMs (GPT-2/Llama-style): ``{input_ids, attention_mask} -> token logits``, scored by
                           perplexity (minimized) and distilled token by token (loss ``lm``); data: token-id sequences
                           of one length (padding id where the sequence is shorter); next-token targets are derived

Every ``nn.Linear`` is a layer the search can compress (attention projections, MLPs, heads; GPT-2's ``Conv1D``
projections are converted to equivalent ``nn.Linear`` on load); embeddings and LayerNorm are left alone. Student
depth drops the last transformer layers of the ``nn.ModuleList`` (:mod:`autocompress.compress.depth`). Not yet:
attention-head pruning with heads kept consistent (a channel cut that breaks the attention's head reshape is undone
and reported in the trial's ``skipped``, never a failed trial).

As a built-in task::

    task: hf-causal-lm
    task_options: {folder: models/my-gpt2, data: mypackage.data:splits}
"""

from __future__ import annotations

import importlib
import json
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import Dataset

from ..errors import TaskError
from .metric import PERPLEXITY
from .task import Task, import_user_module


class SequenceClassifier(nn.Module):
    """``input_ids -> logits`` around a ``transformers`` sequence-classification model."""

    def __init__(self, model: nn.Module, pad_token_id: int = 0) -> None:
        super().__init__()
        self.model = model
        self.pad_token_id = pad_token_id

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        mask = (input_ids != self.pad_token_id).long()
        return self.model(input_ids=input_ids, attention_mask=mask).logits


class ImageClassifier(nn.Module):
    """``pixel_values -> logits`` around a ``transformers`` image-classification model."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


class CausalLM(nn.Module):
    """``(input_ids, attention_mask) -> per-token logits`` around a ``transformers`` causal LM (no KV cache)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits


def linearize_conv1d(model: nn.Module) -> int:
    """Replace ``transformers``' ``Conv1D`` (GPT-2's projections: ``x @ W + b``, ``W`` stored input-major) by the
    equivalent ``nn.Linear`` (weight transposed), so the search sees them as the Linear layers they are; returns how
    many were replaced. Outputs are unchanged (the same product)."""
    done = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if type(child).__name__ == "Conv1D" and hasattr(child, "nf"):
                w = child.weight.detach()
                lin = nn.Linear(w.shape[0], w.shape[1], bias=child.bias is not None)
                with torch.no_grad():
                    lin.weight.copy_(w.t())
                    if child.bias is not None:
                        lin.bias.copy_(child.bias.detach())
                setattr(parent, name, lin)
                done += 1
    return done


def load_pretrained(folder: str | Path, auto_class: str) -> nn.Module:
    """The ``transformers.<auto_class>`` model saved in ``folder``, loaded offline; raises :class:`TaskError`."""
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
        model = getattr(transformers, auto_class).from_pretrained(
            folder, local_files_only=True, trust_remote_code=False, use_safetensors=safetensors or None,
            attn_implementation="eager")
    except Exception as e:
        raise TaskError(f"{folder}: cannot load it as {auto_class}: {type(e).__name__}: "
                        f"{str(e).splitlines()[0] if str(e) else ''}") from None
    return model.eval()


def load_sequence_classifier(folder: str | Path) -> SequenceClassifier:
    """The classifier saved in ``folder`` (``save_pretrained``), loaded offline; raises :class:`TaskError`."""
    model = load_pretrained(folder, "AutoModelForSequenceClassification")
    pad = getattr(model.config, "pad_token_id", None)
    return SequenceClassifier(model, 0 if pad is None else int(pad)).eval()


def load_image_classifier(folder: str | Path) -> ImageClassifier:
    return ImageClassifier(load_pretrained(folder, "AutoModelForImageClassification")).eval()


def load_causal_lm(folder: str | Path) -> CausalLM:
    model = load_pretrained(folder, "AutoModelForCausalLM")
    linearize_conv1d(model)
    return CausalLM(model).eval()


def _splits(data: str) -> tuple[Dataset, Dataset, Dataset | None]:
    module_name, _, func_name = data.partition(":")
    try:
        splits = getattr(import_user_module(module_name), func_name)()
    except Exception as e:
        raise TaskError(f"task_options.data {data!r}: {type(e).__name__}: {e}") from None
    if not isinstance(splits, tuple | list) or len(splits) not in (2, 3):
        raise TaskError(f"task_options.data {data!r} must return (train, val) or (train, val, test)")
    train, val, *rest = splits
    return train, val, rest[0] if rest else None


def classifier_task(folder: str, data: str) -> Task:
    """Built-in task ``hf-classifier``: the classifier in ``folder`` and the splits ``data`` (``module:function``
    returning ``(train, val)`` or ``(train, val, test)``) gives."""
    model = load_sequence_classifier(folder)
    train, val, test = _splits(data)
    example = train[0][0]
    if example.is_floating_point():
        raise TaskError(f"task_options.data {data!r}: inputs must be token ids (integers), got {example.dtype}")
    return Task(name=f"hf-classifier:{Path(folder).name}", model=model, example_input=example.unsqueeze(0),
                train=train, val=val, test=test, info={"folder": str(folder)})


def image_classifier_task(folder: str, data: str) -> Task:
    """Built-in task ``hf-image-classifier``: the image classifier in ``folder`` on ``(image, label)`` splits."""
    model = load_image_classifier(folder)
    train, val, test = _splits(data)
    example = train[0][0]
    if not example.is_floating_point() or example.dim() != 3:
        raise TaskError(f"task_options.data {data!r}: inputs must be float images (channels, height, width), got "
                        f"{tuple(example.shape)} {example.dtype}")
    return Task(name=f"hf-image-classifier:{Path(folder).name}", model=model, example_input=example.unsqueeze(0),
                train=train, val=val, test=test, info={"folder": str(folder)})


class LanguageModeling(Dataset):
    """Token-id sequences as ``({input_ids, attention_mask}, next-token targets)``; padding (``pad_id``) is
    masked out and its targets are -100 (ignored), as is the last position's."""

    def __init__(self, sequences: Dataset, pad_id: int | None) -> None:
        self.sequences, self.pad_id = sequences, pad_id

    def __len__(self) -> int:
        return len(self.sequences)

    def __getitem__(self, i: int):
        ids = self.sequences[i]
        ids = ids[0] if isinstance(ids, tuple | list) else ids
        mask = torch.ones_like(ids) if self.pad_id is None else (ids != self.pad_id).long()
        targets = torch.full_like(ids, -100)
        targets[:-1] = torch.where(mask[1:].bool(), ids[1:], torch.full_like(ids[1:], -100))
        return {"input_ids": ids, "attention_mask": mask}, targets


def causal_lm_task(folder: str, data: str) -> Task:
    """Built-in task ``hf-causal-lm``: the causal LM in ``folder`` on token-id sequences; perplexity, minimized."""
    model = load_causal_lm(folder)
    train, val, test = _splits(data)
    pad = getattr(model.model.config, "pad_token_id", None)
    first = train[0][0] if isinstance(train[0], tuple | list) else train[0]
    if first.is_floating_point() or first.dim() != 1:
        raise TaskError(f"task_options.data {data!r}: items must be token-id sequences (1-d integer tensors), got "
                        f"{tuple(first.shape)} {first.dtype}")
    train, val = LanguageModeling(train, pad), LanguageModeling(val, pad)
    test = LanguageModeling(test, pad) if test is not None else None
    x = train[0][0]
    return Task(name=f"hf-causal-lm:{Path(folder).name}", model=model,
                example_input={k: v.unsqueeze(0) for k, v in x.items()}, train=train, val=val, test=test,
                metric=PERPLEXITY, loss="lm", info={"folder": str(folder)})


__all__ = ["CausalLM", "ImageClassifier", "LanguageModeling", "SequenceClassifier", "causal_lm_task",
           "classifier_task", "image_classifier_task", "linearize_conv1d", "load_causal_lm", "load_image_classifier",
           "load_pretrained", "load_sequence_classifier"]
