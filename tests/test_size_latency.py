"""Exact size accounting (latency measurement: tests/test_runtime.py)."""

import math

import torch
from torch import nn

from autocompress.compress import apply, bake
from autocompress.evaluate.size import compressed_size, dense_size_bytes, weight_storage_bits
from autocompress.plan import CompressionPlan, LayerPlan


def test_dense_size_counts_params_and_float_buffers():
    m = nn.Sequential(nn.Linear(10, 5), nn.BatchNorm1d(5))
    # 55 + 10 params, running mean/var 10 floats; num_batches_tracked (int) not counted
    assert dense_size_bytes(m) == (55 + 10 + 10) * 4


def test_weight_storage_picks_cheapest_exact_format():
    w = torch.zeros(10, 100)
    w[:, :5] = 1.0  # 5 % dense
    s = weight_storage_bits(w, 8)
    assert s.nnz == 50 and s.storage in ("bitmask", "csr")
    assert s.size_bits == min(1000 + 50 * 8, 50 * 7 + 11 * 32 + 50 * 8) + 10 * 32
    dense = weight_storage_bits(torch.ones(10, 100), 32)
    assert dense.storage == "dense" and dense.size_bits == 1000 * 32


def test_compressed_size_matches_hand_count():
    torch.manual_seed(0)
    teacher = nn.Sequential(nn.Linear(20, 10), nn.ReLU(), nn.Linear(10, 3))
    plan = CompressionPlan(layers={"0": LayerPlan(weight_bits=4), "2": LayerPlan(weight_bits=8, sparsity=0.5)})
    cm = bake(apply(teacher, plan, torch.randn(1, 20)))
    size, per = compressed_size(cm)
    l0 = 200 * 4 + 10 * 32
    l2 = min(30 * 8, 30 + 15 * 8, 15 * 4 + 4 * 32 + 15 * 8) + 3 * 32
    biases = (10 + 3) * 32
    assert size == math.ceil((l0 + l2 + biases) / 8)
    assert per["0"].bits == 4 and per["2"].nnz == 15


def test_compressed_size_is_the_same_before_and_after_baking():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 4))
    plan = CompressionPlan(layers={"0": LayerPlan(sparsity=0.5, weight_bits=4),
                                   "2": LayerPlan(weight_bits=3, weight_sharing=True, entropy_coding=True)})
    cm = apply(model, plan, torch.randn(1, 16))
    before = compressed_size(cm)
    bake(cm)
    after = compressed_size(cm)
    assert before[0] == after[0] and {k: v.size_bits for k, v in before[1].items()} == \
        {k: v.size_bits for k, v in after[1].items()}
    assert before[0] < dense_size_bytes(model) / 3


