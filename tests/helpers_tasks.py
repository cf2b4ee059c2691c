"""User tasks for tests, imported as ``helpers_tasks:function`` (tests/ is on sys.path under pytest)."""

import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress import Task


def _data(n: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] > 0).long())


def tiny(hidden: int = 16) -> Task:
    model = nn.Sequential(nn.Linear(8, hidden), nn.ReLU(), nn.Linear(hidden, 2))
    return Task(name="tiny", model=model, example_input=torch.randn(1, 8), train=_data(64, 0), val=_data(32, 1))


def as_dict() -> dict:
    t = tiny()
    return {"model": t.model, "example_input": t.example_input, "train": t.train, "val": t.val}


def raises() -> Task:
    raise RuntimeError("dataset missing on purpose")


def wrong_type():
    return 42


class NoLayers(nn.Module):
    def forward(self, x):
        return torch.relu(x)


def no_compressible_layer() -> Task:
    t = tiny()
    return Task(name="none", model=NoLayers(), example_input=t.example_input, train=t.train, val=t.val)
