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


def deep(layers: int = 20) -> Task:
    """A stack of ``layers`` hidden Linear layers: deep enough for a study to tie layers that scored alike."""
    torch.manual_seed(0)
    blocks = [m for _ in range(layers) for m in (nn.Linear(8, 8), nn.ReLU())]
    model = nn.Sequential(*blocks, nn.Linear(8, 2))
    return Task(name="deep", model=model, example_input=torch.randn(1, 8), train=_data(64, 0), val=_data(32, 1))


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


def rejects_its_input() -> Task:
    t = tiny()
    return Task(name="rejects", model=t.model, example_input=torch.randn(1, 5), train=t.train, val=t.val)


def empty_validation() -> Task:
    t = tiny()
    return Task(name="empty-val", model=t.model, example_input=t.example_input, train=t.train,
                val=TensorDataset(torch.zeros(0, 8), torch.zeros(0, dtype=torch.long)))


def nan_teacher() -> Task:
    t = tiny()
    with torch.no_grad():
        t.model[0].weight.fill_(float("nan"))
    return t


def nan_metric() -> Task:
    t = tiny()
    return Task(name="nan-metric", model=t.model, example_input=t.example_input, train=t.train, val=t.val,
                metric=lambda out, y: float("nan"))


class TokenClassifier(nn.Module):
    """Token ids (int64) -> embedding -> mean over the sequence -> two Linear layers."""

    def __init__(self, vocab: int = 50, dim: int = 16) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.fc1, self.fc2 = nn.Linear(dim, 32), nn.Linear(32, 2)

    def forward(self, ids):
        return self.fc2(torch.relu(self.fc1(self.embed(ids).mean(1))))


def token_ids() -> Task:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (160, 12), generator=g)
    labels = (ids[:, 0] < 25).long()
    data = TensorDataset(ids, labels)
    train, val = torch.utils.data.random_split(data, [128, 32], generator=torch.Generator().manual_seed(1))
    return Task(name="token-ids", model=TokenClassifier().eval(), example_input=ids[:1], train=train, val=val)


def token_splits():
    """(train, val) of 16-token id sequences (vocabulary 200, no padding id 0) with two classes."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 200, (160, 16), generator=g)
    labels = (ids[:, 0] < 100).long()
    return TensorDataset(ids[:128], labels[:128]), TensorDataset(ids[128:], labels[128:])


def lm_splits():
    """(train, val, test) of 16-token id sequences (vocabulary 200; a repeating pattern plus noise, so a model can
    learn it); the last sequences are padded with id 0."""
    g = torch.Generator().manual_seed(0)
    start = torch.randint(1, 200, (160, 1), generator=g)
    ids = (start + torch.arange(16)) % 199 + 1
    noise = torch.rand(160, 16, generator=g) < 0.1
    ids = torch.where(noise, torch.randint(1, 200, (160, 16), generator=g), ids)
    ids[-8:, 12:] = 0
    return list(ids[:128]), list(ids[128:144]), list(ids[144:])


def image_splits():
    """(train, val) of 3x32x32 float images with two classes (bright left half or right half)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(96, 3, 32, 32, generator=g) * 0.5
    y = torch.randint(0, 2, (96,), generator=g)
    x[y == 0, :, :, :16] += 0.5
    x[y == 1, :, :, 16:] += 0.5
    return TensorDataset(x[:64], y[:64]), TensorDataset(x[64:], y[64:])
