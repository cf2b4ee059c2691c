"""Exact size accounting and real ONNX Runtime latency measurement."""

import math

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from autocompress.compress import apply, bake
from autocompress.evaluate.latency import export_onnx, int8_node_names, measure_latency
from autocompress.evaluate.size import compressed_size, dense_size_bytes, weight_storage_bits
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.tasks.models import LeNet5


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


def test_compressed_size_needs_baked_weights():
    cm = apply(nn.Sequential(nn.Linear(4, 2)), CompressionPlan(), torch.randn(1, 4))
    with pytest.raises(ValueError, match="bake"):
        compressed_size(cm)


def test_onnx_export_matches_torch(tmp_path):
    torch.manual_seed(0)
    m = LeNet5().eval()
    x = torch.randn(3, 1, 28, 28)
    export_onnx(m, x[:1], tmp_path / "m.onnx")
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = sess.run(None, {"input": x.numpy()})[0]  # dynamic batch
    np.testing.assert_allclose(out, m(x).detach().numpy(), atol=1e-4)


def test_int8_layers_really_lowered(tmp_path):
    torch.manual_seed(0)
    m = LeNet5().eval()
    calib = [torch.randn(8, 1, 28, 28)]
    fp = measure_latency(m, calib[0][:1], warmup=2, repeats=5)
    assert fp.int8_nodes == 0 and fp.latency_ms > 0
    q = measure_latency(m, calib[0][:1], int8_weights=["features.0.weight", "classifier.1.weight"],
                        calibration=calib, warmup=2, repeats=5, keep_dir=tmp_path)
    assert q.int8_nodes == 2
    import onnx

    g = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("DequantizeLinear") >= 4  # weights and activations of both layers
    export_onnx(m, calib[0][:1], tmp_path / "f.onnx")
    assert len(int8_node_names(tmp_path / "f.onnx", {"classifier.5.weight"})) == 1


def test_int8_found_by_scope_for_batchnorm_folded_and_matmul_layers(tmp_path):
    """The exporter renames the weight of a Conv with a folded BatchNorm and of a Linear exported as MatMul: such
    layers planned int8 must still run int8 kernels (QLinearConv / QLinearMatMul), not float."""
    import onnx

    from autocompress.evaluate.latency import module_node_names
    from autocompress.latency.graph import optimized_graph

    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 8 * 8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 1, 8, 8)
    export_onnx(m, x, tmp_path / "f.onnx")
    weights = {"0.weight", "3.weight", "7.weight", "9.weight"}
    assert len(int8_node_names(tmp_path / "f.onnx", weights)) == 1  # by weight name: only the Gemm (the old bug)
    nodes = module_node_names(tmp_path / "f.onnx", m, ["0", "3", "7", "9"])
    assert set(nodes) == {"0", "3", "7", "9"}
    calib = [torch.randn(8, 1, 8, 8)]
    q = measure_latency(m, x, int8_modules=["0", "3", "7", "9"], calibration=calib, warmup=1, repeats=3,
                        keep_dir=tmp_path)
    assert q.int8_nodes == 4
    ops = [n.op for n in optimized_graph(onnx.load(str(tmp_path / "model.int8.onnx")), "all").nodes]
    assert ops.count("QLinearConv") == 2 and ops.count("QLinearMatMul") == 1 and ops.count("QGemm") == 1
    assert "Conv" not in ops and "FusedConv" not in ops


def test_torch_backend_measurement():
    torch.manual_seed(0)
    m = LeNet5().eval()
    x = torch.randn(1, 1, 28, 28)
    r = measure_latency(m, x, backend="torch", warmup=2, repeats=5)
    assert r.backend == "torch" and r.latency_ms > 0 and r.int8_nodes == 0 and r.runs == 5
    with pytest.raises(ValueError, match="unknown latency backend"):
        measure_latency(m, x, backend="tvm")
