"""Micro-benchmarks: the small graphs compressed models are made of, with the shapes search spaces produce.

Each spec is plain data (JSON) naming a family and its sizes plus a plan for its layers; :func:`build` turns it
into a torch module and an example input, and the profile measures it through the same export/lowering path as
real candidates. Channel counts are drawn from the whole range structured pruning and student widths produce
(not only multiples of 8 or 16: the runtime pads channels to its block size, which the kernels' cost shows).

Families: convolution chains (kernel 1/3/5/7, stride 1/2, depthwise, channels, spatial size, ReLU, MaxPool
between), ResNet basic blocks (BatchNorm folded, residual Add fused), MobileNetV2 inverted residuals, MLPs
(Linear + ReLU, 2-D input: Gemm), Linear on 3-D input (MatMul + Add), pooling (max / average / global / mean),
normalization and activations (BatchNorm, LayerNorm, Softmax, GELU, Sigmoid, Tanh), attention blocks
(Q/K/V projections, attention matmuls, softmax, residuals, LayerNorm), ViT blocks (over a token sequence, or
over an image's patches from a patch convolution), small whole CNNs. Each layer of a micro
model is float or int8 (weights <= 8 bits, 8-bit inputs), optionally low rank, with 0-95 % unstructured sparsity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ..compress.layers import discover_layers
from ..plan import CompressionPlan, LayerPlan
from ..tasks.inputs import Inputs
from ..tasks.models import BasicBlock, EncoderBlock, MBConv

# --- modules -----------------------------------------------------------------------------------------------


class ConvBNAct(nn.Sequential):
    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1, act: bool = True) -> None:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                                   nn.BatchNorm2d(cout)]
        if act:
            layers.append(nn.ReLU6())
        super().__init__(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 project (+ residual when shapes allow)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = ConvBNAct(cin, hidden, 1)
        self.dw = ConvBNAct(hidden, hidden, 3, stride, groups=hidden)
        self.project = ConvBNAct(hidden, cout, 1, act=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


class AttentionBlock(nn.Module):
    """Pre-norm transformer encoder block from nn.Linear and matmuls (what the compress pipeline handles)."""

    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = (nn.Linear(d, d) for _ in range(4))
        self.ff1, self.ff2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        y = self.ln1(x)
        q = self.q(y).reshape(b, t, self.heads, -1).transpose(1, 2)
        k = self.k(y).reshape(b, t, self.heads, -1).transpose(1, 2)
        v = self.v(y).reshape(b, t, self.heads, -1).transpose(1, 2)
        a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), dim=-1) @ v
        x = x + self.proj(a.transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(torch.relu(self.ff1(self.ln2(x))))


class Head(nn.Module):
    """``body`` then mean over the sequence and a Linear classifier."""

    def __init__(self, body: nn.Module, d: int, classes: int) -> None:
        super().__init__()
        self.body, self.norm, self.head = body, nn.LayerNorm(d), nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.body(x)).mean(dim=1))


class PatchTokens(nn.Module):
    """A ViT's patch embedding: a ``patch`` x ``patch`` convolution of stride ``patch``, its map as a sequence."""

    def __init__(self, cin: int, d: int, patch: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(cin, d, patch, stride=patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Lambda(nn.Module):
    def __init__(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


class Residual(nn.Module):
    """``x + body(x)`` followed by an optional op (BatchNorm after an Add is not folded into a conv)."""

    def __init__(self, body: nn.Module, after: nn.Module | None = None) -> None:
        super().__init__()
        self.body, self.after = body, after or nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.after(x + self.body(x))


_ACTS: dict[str, Callable[[], nn.Module]] = {
    "relu": nn.ReLU, "relu6": nn.ReLU6, "sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "gelu": nn.GELU,
}


def build(spec: dict[str, Any]) -> tuple[nn.Module, torch.Tensor]:
    """The module and example input (batch 1) of a micro spec. Weights are seeded by ``spec["seed"]``."""
    torch.manual_seed(int(spec.get("seed", 0)))
    fam = spec["family"]
    if fam == "conv":
        c, layers = spec["cin"], []
        for layer in spec["layers"]:
            groups = c if layer.get("dw") else 1
            cout = c if layer.get("dw") else layer["cout"]
            layers.append(nn.Conv2d(c, cout, layer["k"], layer["s"], layer["k"] // 2, groups=groups))
            if layer.get("act"):
                layers.append(_ACTS[layer["act"]]())
            if layer.get("pool"):  # 3: a ResNet stem's 3x3 / stride 2 / pad 1 pool; otherwise 2x2
                layers.append(nn.MaxPool2d(3, 2, 1) if layer["pool"] == 3 else nn.MaxPool2d(2))
            c = cout
        return nn.Sequential(*layers).eval(), torch.randn(1, spec["cin"], spec["h"], spec["h"])
    if fam == "basic_block":

        return BasicBlock(spec["cin"], spec["cout"], spec["s"]).eval(), torch.randn(1, spec["cin"], spec["h"],
                                                                                     spec["h"])
    if fam == "inverted_residual":
        blocks = [InvertedResidual(spec["cin"], spec["cout"], spec["s"], spec["expand"])]
        if spec.get("repeat"):
            blocks.append(InvertedResidual(spec["cout"], spec["cout"], 1, spec["expand"]))
        return nn.Sequential(*blocks).eval(), torch.randn(1, spec["cin"], spec["h"], spec["h"])
    if fam == "mbconv":  # EfficientNet: SiLU, squeeze-excitation (global pool, two 1x1 convs, sigmoid gate)
        blocks = [MBConv(spec["cin"], spec["cout"], spec["k"], spec["s"], spec["expand"])]
        if spec.get("repeat"):
            blocks.append(MBConv(spec["cout"], spec["cout"], spec["k"], 1, spec["expand"]))
        return nn.Sequential(*blocks).eval(), torch.randn(1, spec["cin"], spec["h"], spec["h"])
    if fam == "vit_block":  # ViT: fused QKV, head reshapes, GELU MLP, over a token sequence
        blocks = nn.Sequential(*[EncoderBlock(spec["d"], spec["heads"], spec["mlp"])
                                 for _ in range(spec.get("blocks", 1))])
        if spec.get("patch"):  # from an image: the patch convolution makes the tokens
            model = Head(nn.Sequential(PatchTokens(3, spec["d"], spec["patch"]), blocks), spec["d"], spec["classes"])
            return model.eval(), torch.randn(1, 3, spec["img"], spec["img"])
        model = Head(nn.Sequential(nn.Linear(spec["din"], spec["d"]), blocks), spec["d"], spec["classes"])
        return model.eval(), torch.randn(1, spec["t"], spec["din"])
    if fam == "mlp":
        sizes, layers = spec["sizes"], [nn.Flatten()]
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2 and spec.get("act"):
                layers.append(_ACTS[spec["act"]]())
        return nn.Sequential(*layers).eval(), torch.randn(1, sizes[0])
    if fam == "linear3d":
        sizes, layers = spec["sizes"], []
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:], strict=True)):
            layers.append(nn.Linear(a, b))
            if i < len(sizes) - 2:
                layers.append(_ACTS[spec.get("act", "relu")]())
        return nn.Sequential(*layers).eval(), torch.randn(1, spec["t"], sizes[0])
    if fam == "pool":
        c, h = spec["c"], spec["h"]
        conv: list[nn.Module] = [nn.Conv2d(spec["cin"], c, 3, 1, 1), nn.ReLU()] if spec.get("conv") else []
        cin = c if conv else spec["cin"]
        kind = spec["pool"]
        pool: nn.Module = {"max": nn.MaxPool2d(2), "avg": nn.AvgPool2d(2), "max3": nn.MaxPool2d(3, 2, 1),
                           "gap": nn.AdaptiveAvgPool2d(1), "mean": Lambda(lambda x: x.mean(dim=(2, 3)))}[kind]
        out_hw = 1 if kind in ("gap", "mean") else ((h + 1) // 2 if kind == "max3" else h // 2) ** 2
        return nn.Sequential(*conv, pool, nn.Flatten(), nn.Linear(cin * out_hw, spec["classes"])).eval(), \
            torch.randn(1, spec["cin"], h, h)
    if fam == "norm_act":
        c, h, op = spec["c"], spec["h"], spec["op"]
        conv = nn.Conv2d(spec["cin"], c, 3, 1, 1)
        after: nn.Module
        if op == "bn_after_add":
            after = nn.BatchNorm2d(c)
            return nn.Sequential(conv, Residual(nn.Sequential(nn.ReLU(), nn.Conv2d(c, c, 1)), after)).eval(), \
                torch.randn(1, spec["cin"], h, h)
        if op == "softmax":
            after = nn.Softmax(dim=1)
        else:
            after = _ACTS[op]()
        return nn.Sequential(conv, after, nn.Conv2d(c, c, 1)).eval(), torch.randn(1, spec["cin"], h, h)
    if fam == "attention":
        blocks = nn.Sequential(*[AttentionBlock(spec["d"], spec["heads"], spec["ff"])
                                 for _ in range(spec.get("blocks", 1))])
        model = Head(nn.Sequential(nn.Linear(spec["din"], spec["d"]), blocks), spec["d"], spec["classes"])
        return model.eval(), torch.randn(1, spec["t"], spec["din"])
    if fam == "layernorm":
        d = spec["d"]
        return nn.Sequential(nn.Linear(spec["din"], d), nn.LayerNorm(d), nn.GELU() if spec.get("gelu") else
                             nn.Identity(), nn.Linear(d, d)).eval(), torch.randn(1, spec["t"], spec["din"])
    if fam == "cnn":
        c1, c2, f = spec["c1"], spec["c2"], spec["fc"]
        h = spec["h"]
        model = nn.Sequential(nn.Conv2d(spec["cin"], c1, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2),
                              nn.Conv2d(c1, c2, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
                              nn.Linear(c2 * (h // 4) ** 2, f), nn.ReLU(), nn.Linear(f, 10))
        return model.eval(), torch.randn(1, spec["cin"], h, h)
    raise ValueError(f"unknown micro-benchmark family {fam!r}; known: {sorted(FAMILIES)}")


# --- sampling ----------------------------------------------------------------------------------------------

def _channels(rng: np.random.Generator, lo: int, hi: int) -> int:
    """A channel count as pruning and student widths produce: log-uniform, any integer, sometimes aligned."""
    c = int(round(math.exp(rng.uniform(math.log(lo), math.log(hi)))))
    if rng.random() < 0.3:
        c = max(lo, int(round(c / 8)) * 8)
    return max(lo, min(hi, c))


def _wide_conv(rng: np.random.Generator) -> dict[str, Any]:
    """The late stages of ImageNet-size CNNs: 64-960 channels on small maps."""
    cin = _channels(rng, 32, 512)
    layers = [{"cout": _channels(rng, 32, 960) if rng.random() < 0.2 else _channels(rng, 32, 512),
               "k": int(rng.choice([1, 1, 3, 3])), "s": int(rng.choice([1, 1, 2])), "dw": bool(i and rng.random() < 0.2),
               "act": str(rng.choice(["relu", "relu6", ""])), "pool": False} for i in range(int(rng.choice([1, 2])))]
    for layer in layers:
        if layer["dw"]:
            layer["k"] = int(rng.choice([3, 5]))
    return {"family": "conv", "cin": cin, "h": int(rng.choice([3, 4, 6, 7, 8, 12, 14])), "layers": layers}


def _large_map_conv(rng: np.random.Generator) -> dict[str, Any]:
    """The early stages of ImageNet-size CNNs: 24-128 px maps (the stem at full resolution, then expanded
    depthwise blocks), where memory traffic rather than MACs sets the time."""
    h = int(rng.choice([24, 32, 48, 64, 96, 128]))
    cap = 160 if h <= 32 else 96 if h <= 64 else 32
    stem = rng.random() < 0.3
    cin = 3 if stem else _channels(rng, 8, cap)
    layers = []
    for i in range(int(rng.choice([1, 2]))):
        dw = bool(i > 0 and rng.random() < 0.5)
        layers.append({"cout": _channels(rng, 8, cap), "k": int(rng.choice([3, 5] if dw else [1, 3, 3, 7] if stem
                                                                          and i == 0 else [1, 1, 3])),
                       "s": int(rng.choice([1, 2] if i == 0 else [1])), "dw": dw,
                       "act": str(rng.choice(["relu", "relu6", ""])),
                       "pool": 3 if i == 0 and rng.random() < 0.3 else 0})  # a ResNet stem's pool
    return {"family": "conv", "cin": cin, "h": h, "layers": layers}


def _streaming(rng: np.random.Generator) -> dict[str, Any]:
    """Models whose weights outgrow the last-level cache, so their time carries the cost of streaming weights
    (:data:`~autocompress.latency.model.STREAMED`): a third deep stacks of wide convolutions on tiny maps, 5-75 MB
    in layers too large for the L2 cache alone (the weights of a float ResNet-18 total 45 MB); the rest stacks
    of layers that fit it alone (convolutions of 128-320 channels, or Linear layers over 1-128 tokens), 2-40 MB in
    all, as whole CNNs and transformers are made (the cost sets in at 7-19 MB, model.STREAM_PHASE)."""
    r = rng.random()
    if r < 1 / 3:
        c = int(rng.choice([256, 320, 384, 448, 512]))
        layers = [{"cout": c, "k": 3, "s": 1, "dw": False, "act": "relu", "pool": 0}
                  for _ in range(int(rng.integers(2, 9)))]
        return {"family": "conv", "cin": c, "h": int(rng.choice([2, 3])), "layers": layers}
    total = float(np.exp(rng.uniform(np.log(2e6), np.log(40e6))))  # float weight bytes in all
    if r < 2 / 3:
        c, k = _channels(rng, 128, 320), int(rng.choice([1, 3, 3]))
        n = int(np.clip(round(total / (4 * c * c * k * k)), 2, 48))
        layers = [{"cout": c, "k": k, "s": 1, "dw": False, "act": str(rng.choice(["relu", ""])), "pool": 0}
                  for _ in range(n)]
        return {"family": "conv", "cin": c, "h": int(rng.choice([2, 3, 4])), "layers": layers}
    t = int(rng.choice([1, 4, 16, 64, 128]))
    d = _channels(rng, 192, 768 if t < 64 else 512)  # over many tokens, small layers of a large total (a ViT's)
    n = int(np.clip(round(total / (4 * d * d)), 2, 48 if t < 64 else 32))
    return {"family": "linear3d", "sizes": [d] * (n + 1), "t": t,
            "act": str(rng.choice(["relu", "gelu"]))}


def _stem(rng: np.random.Generator) -> dict[str, Any]:
    """A ResNet stem and the first block's convolution at ImageNet-like sizes: conv (stride 2), ReLU, 3x3 / stride 2
    MaxPool on a 32-64 px map, then 3x3 convolutions. Where the stem runs float and the block int8 the pool runs
    on uint8 in NCHW, a kernel whose time per output grows on these maps (benchmarks/kernel_errors.py)."""
    c = _channels(rng, 16, 64)
    layers = [{"cout": c, "k": int(rng.choice([3, 7])), "s": 2, "dw": False, "act": "relu", "pool": 3}]
    layers += [{"cout": c, "k": 3, "s": 1, "dw": False, "act": "relu", "pool": 0}
               for _ in range(int(rng.choice([1, 2])))]
    return {"family": "conv", "cin": 3, "h": int(rng.choice([64, 96, 128])), "layers": layers}


def _conv(rng: np.random.Generator) -> dict[str, Any]:
    r = rng.random()
    if r < 0.25:
        return _wide_conv(rng)
    if r < 0.45:
        return _large_map_conv(rng)
    first = rng.random() < 0.3  # a network's first layer: few input channels, full resolution
    cin = int(rng.choice([1, 1, 3])) if first else _channels(rng, 2, 96)
    n = int(rng.choice([1, 1, 2, 2, 3]))
    layers = []
    for i in range(n):
        dw = bool(rng.random() < 0.25 and i > 0)
        layers.append({"cout": _channels(rng, 2, 128), "k": int(rng.choice([1, 1, 3, 3, 3, 5, 5, 7] if not dw
                                                                          else [3, 3, 5])),
                       "s": int(rng.choice([1, 1, 1, 2])), "dw": dw,
                       "act": str(rng.choice(["relu", "relu", "relu6", ""])),
                       "pool": int(rng.choice([2, 3])) if rng.random() < 0.15 else 0})
    h = int(rng.choice([28, 28, 32, 14])) if first else int(rng.choice([6, 7, 8, 12, 14, 16, 28]))
    return {"family": "conv", "cin": cin, "h": h, "layers": layers}


def _spec(rng: np.random.Generator, family: str) -> dict[str, Any]:
    if family == "conv":
        return _conv(rng)
    if family == "streaming":
        return _streaming(rng)
    if family == "stem":
        return _stem(rng)
    if family == "basic_block":
        wide = rng.random() < 0.4  # ResNet-18's later stages: 128-512 channels on 3-12 px maps
        cin = _channels(rng, 64, 512) if wide else _channels(rng, 4, 96)
        s = int(rng.choice([1, 1, 2]))
        cout = cin if s == 1 and rng.random() < 0.6 else (_channels(rng, 64, 512) if wide else _channels(rng, 4, 128))
        return {"family": family, "cin": cin, "cout": cout, "s": s,
                "h": int(rng.choice([3, 6, 12] if wide else [7, 14, 14, 28]))}
    if family == "mbconv":
        cin = _channels(rng, 8, 192)
        s = int(rng.choice([1, 1, 2]))
        expand = int(rng.choice([1, 4, 6, 6]))
        # as in EfficientNet: wide expanded blocks on small maps, narrow ones on large maps
        h = int(rng.choice([3, 6, 12] if cin * expand > 512 else [12, 24, 48]))
        return {"family": family, "cin": cin, "cout": cin if s == 1 and rng.random() < 0.6 else _channels(rng, 8, 320),
                "s": s, "k": int(rng.choice([3, 5])), "expand": expand, "h": h, "repeat": bool(rng.random() < 0.3)}
    if family == "vit_block":
        heads = int(rng.choice([1, 2, 3, 4, 8]))
        d = heads * int(rng.choice([16, 32, 48, 64]))
        spec = {"family": family, "din": _channels(rng, 16, 256), "d": d, "heads": heads,
                "mlp": _channels(rng, max(8, d // 2), 4 * d), "t": int(rng.choice([17, 33, 65, 128])),
                "blocks": int(rng.choice([1, 1, 2])), "classes": int(rng.choice([10, 100]))}
        if rng.random() < 0.35:  # tokens from an image's patches (eager PyTorch prices each kernel size apart)
            patch = int(rng.choice([4, 8, 8, 16]))
            spec |= {"patch": patch, "img": patch * int(rng.choice([4, 6, 8]))}
        return spec
    if family == "inverted_residual":
        cin = _channels(rng, 4, 64)
        s = int(rng.choice([1, 1, 2]))
        return {"family": family, "cin": cin, "cout": cin if s == 1 and rng.random() < 0.6 else _channels(rng, 4, 96),
                "s": s, "expand": int(rng.choice([1, 2, 3, 4, 6])), "h": int(rng.choice([7, 14, 14, 28])),
                "repeat": bool(rng.random() < 0.3)}
    if family == "mlp":
        n = int(rng.choice([1, 2, 3, 4]))
        sizes = [_channels(rng, 8, 1024)] + [_channels(rng, 4, 512) for _ in range(n)]
        return {"family": family, "sizes": sizes, "act": str(rng.choice(["relu", "relu", "sigmoid", ""]))}
    if family == "linear3d":
        n = int(rng.choice([1, 2, 3]))
        return {"family": family, "sizes": [_channels(rng, 4, 256) for _ in range(n + 1)],
                "t": int(rng.choice([4, 8, 16, 32])), "act": str(rng.choice(["relu", "gelu"]))}
    if family == "pool":
        return {"family": family, "cin": _channels(rng, 1, 64), "c": _channels(rng, 4, 128), "conv": bool(rng.random() < 0.6),
                "h": int(rng.choice([4, 8, 14, 16, 28, 48])),
                "pool": str(rng.choice(["max", "max3", "avg", "gap", "mean"])),
                "classes": int(rng.choice([10, 10, 100]))}
    if family == "norm_act":
        return {"family": family, "cin": _channels(rng, 1, 32), "c": _channels(rng, 4, 96),
                "h": int(rng.choice([4, 7, 14, 28])),
                "op": str(rng.choice(["bn_after_add", "softmax", "sigmoid", "tanh", "gelu", "relu6"]))}
    if family == "attention":
        heads = int(rng.choice([1, 2, 4, 8]))
        d = heads * int(rng.choice([4, 8, 12, 16, 24, 32]))
        return {"family": family, "din": _channels(rng, 4, 64), "d": d, "heads": heads,
                "ff": _channels(rng, max(4, d // 2), 4 * d), "t": int(rng.choice([4, 8, 16, 32])),
                "blocks": int(rng.choice([1, 1, 2])), "classes": 10}
    if family == "layernorm":
        return {"family": family, "din": _channels(rng, 4, 128), "d": _channels(rng, 4, 256),
                "t": int(rng.choice([1, 4, 16, 32])), "gelu": bool(rng.random() < 0.5)}
    if family == "cnn":
        return {"family": family, "cin": int(rng.choice([1, 3])), "c1": _channels(rng, 2, 48),
                "c2": _channels(rng, 2, 96), "fc": _channels(rng, 8, 256), "h": int(rng.choice([16, 28, 32]))}
    raise ValueError(f"unknown micro-benchmark family {family!r}; known: {sorted(FAMILIES)}")


# relative share of each family in a profile
FAMILIES: dict[str, float] = {
    "conv": 0.24, "basic_block": 0.07, "inverted_residual": 0.08, "mbconv": 0.06, "mlp": 0.12, "linear3d": 0.05,
    "pool": 0.07, "norm_act": 0.06, "attention": 0.08, "vit_block": 0.06, "layernorm": 0.04, "cnn": 0.07,
    "streaming": 0.05, "stem": 0.02,
}


def random_plan(model: nn.Module, example_input: Inputs, rng: np.random.Generator, *,
                int8: float = 0.45, low_rank: float = 0.15) -> CompressionPlan:
    """Per layer: float or int8 (weights 2-8 bits, 8-bit inputs) or weight-only; low rank; sparsity. No pruning:
    the micro spec already has the pruned sizes."""
    layers = {}
    for info in discover_layers(model, example_input):
        r = rng.random()
        if r < int8:
            wbits, abits = int(rng.choice([2, 4, 8])), 8
        elif r < int8 + 0.15:
            wbits, abits = int(rng.choice([4, 8])), int(rng.choice([16, 32]))
        else:
            wbits, abits = 32, int(rng.choice([32, 32, 8]))
        sparsity = float(rng.choice([0.0, 0.0, 0.25, 0.5, 0.75, 0.9, 0.95]))
        rank = float(rng.choice([0.125, 0.25, 0.5])) if rng.random() < low_rank else 1.0
        layers[info.name] = LayerPlan(sparsity=sparsity, weight_bits=wbits, activation_bits=abits, rank_ratio=rank)
    return CompressionPlan(layers=layers)


def sample_specs(n: int, seed: int = 0) -> list[dict[str, Any]]:
    """``n`` micro specs, families in the :data:`FAMILIES` proportions (at least one of each when n allows)."""
    rng = np.random.default_rng(seed)
    names = list(FAMILIES)
    weights = np.array([FAMILIES[f] for f in names])
    counts = np.maximum(1, np.floor(weights / weights.sum() * n)).astype(int) if n >= len(names) else \
        np.zeros(len(names), dtype=int)
    while counts.sum() < n:
        counts[int(rng.choice(len(names), p=weights / weights.sum()))] += 1
    specs = []
    for fam, k in zip(names, counts, strict=True):
        for _ in range(int(k)):
            spec = _spec(rng, fam)
            spec["seed"] = int(rng.integers(0, 2**31 - 1))
            specs.append(spec)
    order = rng.permutation(len(specs))
    return [specs[i] for i in order][:n]
