"""Real English text that ships with installed packages (their own descriptions), as byte-level token ids.

- ``lm_splits()``: (train, val, test) lists of ``LENGTH``-byte sequences, for ``task: hf-causal-lm``
- ``classifier_splits()``: (train, val, test) datasets of ``(sequence, label)``: which package's description a
  sequence comes from (0: pandas, 1: torch), for ``task: hf-classifier``

Ids are bytes + 1 clipped to 255 (0 is padding), so any text maps without a tokenizer file.
"""

from __future__ import annotations

import importlib.metadata

import torch
from torch.utils.data import TensorDataset

LENGTH = 64


def _sequences(package: str, limit: int) -> torch.Tensor:
    text = importlib.metadata.distribution(package).read_text("METADATA") or ""
    body = text.split("\n\n", 1)[-1]  # the description, after the headers
    ids = (torch.tensor(list(body.encode("utf-8", "ignore")), dtype=torch.long) + 1).clamp(max=255)
    n = min(limit, len(ids) // LENGTH)
    return ids[: n * LENGTH].view(n, LENGTH)


def lm_splits() -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor]]:
    seqs = _sequences("torch", 320)
    return list(seqs[:256]), list(seqs[256:288]), list(seqs[288:320])


def classifier_splits() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    a, b = _sequences("pandas", 200), _sequences("torch", 200)
    n = min(len(a), len(b))
    x = torch.cat([a[:n], b[:n]])
    y = torch.cat([torch.zeros(n, dtype=torch.long), torch.ones(n, dtype=torch.long)])
    order = torch.randperm(2 * n, generator=torch.Generator().manual_seed(0))
    x, y = x[order], y[order]
    cut1, cut2 = int(0.7 * len(y)), int(0.85 * len(y))
    return TensorDataset(x[:cut1], y[:cut1]), TensorDataset(x[cut1:cut2], y[cut1:cut2]), \
        TensorDataset(x[cut2:], y[cut2:])
