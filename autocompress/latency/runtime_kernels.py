"""Micro-benchmarks of the int4 weight-only MatMul (``MatMulNBits``, what the runtime layer lowers <= 4-bit
weight-only Linear layers to), next to the float MatMul it replaces. Its kernels are read from the runtime's own
optimized graph, so the profile holds fitted costs for this kind too, which the predictor scores int4 layers with.
"""

from __future__ import annotations

import math
import tempfile
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..runtime import TimingSpec, time_interleaved
from ..runtime.onnxruntime import OnnxRuntimeBackend
from .graph import OnnxGraph, optimized_graph, tensor_shapes
from .kernels import FEATURES, Kernel, Lowered, _set
from .model import Sample

INT4_BLOCK = 32


def _matmul_model(rows: int, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    w = rng.standard_normal((k, n)).astype(np.float32) / math.sqrt(k)
    shape = [1, k] if rows == 1 else [1, rows, k]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [*shape[:-1], n])
    node = helper.make_node("MatMul", ["input", "w"], ["output"], name="matmul")
    graph = helper.make_graph([node], "matmul", [x], [y], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _int4_model(rows: int, k: int, n: int, rng: np.random.Generator) -> onnx.ModelProto:
    blocks = math.ceil(k / INT4_BLOCK)
    codes = rng.integers(0, 16, size=(n, blocks * INT4_BLOCK), dtype=np.uint8)
    pairs = codes.reshape(n, blocks, INT4_BLOCK // 2, 2)
    packed = (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
    scales = (rng.random(n * blocks) * 0.01 + 0.001).astype(np.float32)
    shape = [1, k] if rows == 1 else [1, rows, k]
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, shape)
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, [*shape[:-1], n])
    node = helper.make_node("MatMulNBits", ["input", "w_q", "w_s"], ["output"], name="matmul_int4",
                            domain="com.microsoft", K=k, N=n, bits=4, block_size=INT4_BLOCK)
    graph = helper.make_graph([node], "matmul_int4", [x], [y],
                              [numpy_helper.from_array(packed, "w_q"), numpy_helper.from_array(scales, "w_s")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("com.microsoft", 1)])


def runtime_lowered(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> Lowered:
    """Kernels of the runtime's optimized graph (level all) with shapes from a run of it."""
    graph = optimized_graph(model, "all")
    with tempfile.TemporaryDirectory(prefix="autocompress-rk-") as tmp:
        path = Path(tmp) / "opt.onnx"
        OnnxRuntimeBackend().inference_session(model.SerializeToString(), optimized_path=path)
        optimized = onnx.load(str(path))
    shapes = tensor_shapes(optimized, feeds)
    kernels = [_kernel(n, graph, shapes) for n in graph.nodes]
    x = graph.inputs[0]
    return Lowered(kernels=kernels, int8_nodes=0, input_elems=int(np.prod(shapes[x])),
                   output_elems=sum(int(np.prod(shapes.get(o, (0,)))) for o in graph.outputs), skipped={})


def _kernel(node, graph: OnnxGraph, shapes: dict) -> Kernel:
    inits = graph.initializers
    feats = np.zeros(len(FEATURES))
    feats[0] = 1.0
    data_in = [t for t in node.inputs if t and t not in inits]
    in_elems = sum(int(np.prod(shapes.get(t, (0,)))) for t in data_in)
    out_elems = sum(int(np.prod(shapes.get(t, (0,)))) for t in node.outputs if t)
    macs = weight = rows = k_dim = 0.0
    kind = node.op
    if node.op == "MatMulNBits":
        k, n = int(node.attrs["K"]), int(node.attrs["N"])
        weight = k * n
        rows, k_dim = out_elems // max(n, 1), k
        macs = rows * k * n
    else:
        w = next((inits[t] for t in node.inputs[1:] if t in inits and len(inits[t]) == 2), None)
        if w is not None and node.op in ("MatMul", "DynamicQuantizeMatMul", "MatMulInteger", "MatMulIntegerToFloat",
                                         "Gemm", "FusedGemm"):
            weight = float(np.prod(w))
            macs = out_elems * w[0]
            rows, k_dim = out_elems // max(w[1], 1), w[0]
            kind = f"{node.op}/w" if node.op == "MatMul" else node.op
    _set(feats, macs, in_elems, out_elems, weight, macs, rows, rows, rows * k_dim, rows * -(-k_dim // 8) * 8)
    return Kernel(kind=kind, features=feats, name=node.outputs[0] if node.outputs else node.name)


def matmul_variant_samples(n: int, rng: np.random.Generator, *, threads: int, block: int, runs: int, rounds: int,
                           warmup: int) -> list[Sample]:
    """``n`` matrix shapes, each measured float and int4 weight-only (``MatMulNBits``, what the lowering writes for
    <= 4-bit weight-only Linear layers)."""
    backend = OnnxRuntimeBackend()
    spec = TimingSpec(threads=threads, warmup=warmup, runs=runs, rounds=rounds)
    samples = []
    for _ in range(n):
        rows = int(rng.choice([1, 1, 4, 16]))
        k = int(rng.choice([32, 64, 96, 128, 192, 256, 384, 512, 768, 1024]))
        nn_ = int(rng.choice([10, 32, 64, 100, 128, 256, 384, 512]))
        shape = (1, k) if rows == 1 else (1, rows, k)
        feeds = {"input": rng.standard_normal(shape).astype(np.float32)}
        base = _matmul_model(rows, k, nn_, rng)
        with tempfile.TemporaryDirectory(prefix="autocompress-mm-") as tmp:
            fp, ip = Path(tmp) / "f.onnx", Path(tmp) / "i4.onnx"
            onnx.save(base, str(fp))
            onnx.save(_int4_model(rows, k, nn_, rng), str(ip))
            for tag, path in (("matmul_float", fp), ("matmul_int4", ip)):
                model = onnx.load(str(path))
                lowered = runtime_lowered(model, feeds)
                sess = backend.session(path, threads=threads)
                m = time_interleaved({"m": lambda s=sess, f=feeds: s.run(f)}, spec, backend=backend.name)["m"]
                samples.append(Sample.measured(lowered, m, tag=tag, group="micro",
                                               spec={"family": tag, "rows": rows, "k": k, "n": nn_}))
    return samples
