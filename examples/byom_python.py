"""Bring your own model from Python: a PyTorch CNN you trained, compressed in one call.

    python examples/byom_python.py --trials 60 --folder studies

The model here is trained on scikit-learn's 8x8 digits first (a stand-in for your own trained model and data);
everything after ``train()`` is what you would write for yours.
"""

from __future__ import annotations

import argparse

import torch
from sklearn.datasets import load_digits
from torch import nn
from torch.utils.data import TensorDataset

import autocompress


def data() -> tuple[TensorDataset, TensorDataset, TensorDataset]:
    digits = load_digits()
    x = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    y = torch.tensor(digits.target)
    g = torch.Generator().manual_seed(0)
    order = torch.randperm(len(y), generator=g)
    x, y = x[order], y[order]
    return TensorDataset(x[:1200], y[:1200]), TensorDataset(x[1200:1500], y[1200:1500]), TensorDataset(x[1500:], y[1500:])


def train(model: nn.Module, train_set: TensorDataset, epochs: int = 15) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    loader = torch.utils.data.DataLoader(train_set, batch_size=64, shuffle=True)
    for _ in range(epochs):
        for x, y in loader:
            opt.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            opt.step()
    return model.eval()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--trials", type=int, default=60)
    p.add_argument("--folder", default="studies")
    p.add_argument("--export-finetune", default="full", help="full (default), search or none")
    args = p.parse_args()
    torch.manual_seed(0)
    train_set, val_set, test_set = data()
    model = train(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                                nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),
                                nn.Flatten(), nn.Linear(32 * 16, 64), nn.ReLU(), nn.Linear(64, 10)), train_set)

    outcome = autocompress.search_model(
        model, train_set[0][0].unsqueeze(0),          # the teacher and one input batch of size 1
        train=train_set, val=val_set, test=test_set,   # (input, target) datasets
        name="byom-digits", folder=args.folder, n_trials=args.trials,
        search_space="default", finetune={"steps": 100})
    print(outcome.front.table())
    task = autocompress.Task(name="byom-digits", model=model, example_input=train_set[0][0].unsqueeze(0),
                             train=train_set, val=val_set, test=test_set)
    teacher = outcome.front.teacher["accuracy"]
    from autocompress.export import export_from_study

    result = export_from_study(f"{args.folder}/byom-digits", f"{args.folder}/byom-digits-export", force=True,
                               pick=f"accuracy >= {teacher - 0.01}", by="size_bytes", task=task,
                               finetune=args.export_finetune)
    print(f"exported trial {result.card['source']['trial']} to {result.path}")


if __name__ == "__main__":
    main()
