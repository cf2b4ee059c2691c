"""How well the latency predictor predicts held-out compressed models, against a FLOPs-linear baseline, and how
much of the machine's noise speed-normalized timing removes.

    .venv/bin/python benchmarks/latency_predictor.py [--backend onnxruntime|openvino|torch] [--profile PATH]
        [--models-per-family 20,40] [--families lenet5,...,bert] [--runs 100] [--rounds 3] [--passes 1]
        [--calibrate-plans 10] [--noise-processes 8] [--noise-models 2] [--noise-load] [--seed 0] [--out PATH]
        [--results PATH]

Profile: ``--profile`` or this machine's default one (``autocompress profile`` writes it). Held-out models: random
plans (never used for fitting: the profile has its own micro-benchmarks and calibration architectures) from the
default search space's choices (per-layer sparsity, weight / activation bits, channel keep, low rank, also on
convolutions; student width / depth on the CNNs) over ten families:

- today's small ones, 0.01-0.2 ms (28x28 inputs): LeNet-5, an MLP, a ResNet-style CNN, a MobileNetV2-style CNN,
  a 2-block transformer encoder;
- real sizes, 0.3-30 ms: ResNet-18 (3x96x96), MobileNetV2 (3x128x128), an EfficientNet-B0-like network with
  squeeze-excitation and SiLU (3x96x96), a small ViT (3x64x64, patch 8, 6 blocks of width 192) and a BERT-mini-like
  Hugging Face ``transformers`` encoder (4 layers, hidden 256, 4 heads) at sequence length 128, built from its
  config. Transformers: the MLP's first Linear is channel-pruned and the attention projections of the ViT and BERT
  lose whole heads (``compress.heads``; the 2-block encoder's are not recognised and stay), student width and
  depth stay 1.

Each model is predicted (timed: the first prediction of a plan, its kernel structure never seen, and again with it
cached) and measured end to end exactly as the search measures it (materialized, exported, int8 layers lowered
with static QDQ, ``InferenceSession.run`` at 1 thread, batch 1; ``--backend openvino``: the same ONNX graphs on OpenVINO's CPU
plugin; ``--backend torch``: eager PyTorch), ``--rounds``
rounds of ``--runs`` calls (fewer for slow models: about 0.3 s a round), the reference workload timed around every
round. **Ground truth**: the normalized time (relative to the reference) in ms at the profile's reference speed,
the speed the profile predicts at; the absolute median is reported beside it. ``--passes`` > 1 measures every
model again (fresh export and session) and takes the median pass.

**Calibrated**: per family, ``--calibrate-plans`` other random plans (the teacher first) are measured and the
profile's per-model offset and scale refitted on them, as ``autocompress profile --calibrate`` does for a study;
the held-out models are scored with that too.

**Noise study**: ``--noise-models`` models per family measured in ``--noise-processes`` fresh processes each
(one after the other, all models in each): RMS deviation of each model's absolute and normalized time from its
median over the processes. ``--noise-load`` runs every other process beside a neighbour process streaming memory
on the other core, a slow state made on purpose.

Prints, for the predictor and the FLOPs baselines: share within +-5 % and +-10 %, RMSPE, Kendall tau, per family
and per size band, against normalized and absolute measured latency; predict times (mean, p95); how often the
predicted kernel list matches ONNX Runtime's optimized graph op for op. Baselines: latency = a + b * FLOPs fitted
(relative least squares) on the profile's samples, and on the held-out measurements themselves (in-sample: the
best any FLOPs-linear model can do here). ``--results`` (default ``benchmarks/results/latency_predictor.json``)
gets the summary per backend, merged with the other backends' figures already there.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import stats
from torch import nn

from autocompress.compress.heads import attention_groups
from autocompress.compress.layers import discover_layers
from autocompress.latency.analysis import AnalysisError
from autocompress.latency.calibrate import calibrate_profile
from autocompress.latency.graph import optimized_graph
from autocompress.latency.measure import Measurement, lower_plan
from autocompress.latency.model import UnsupportedOpError
from autocompress.latency.predictor import LatencyPredictor, resolve_profile
from autocompress.latency.profile import ProfileError
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.runtime import TimingSpec, get_backend
from autocompress.tasks.models import EfficientNetB0, LeNet5, MobileNetV2, ResNet18, SmallResNet, ViT, mlp

# --- families -----------------------------------------------------------------------------------------------


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        self.expand = nn.Sequential(nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False),
                                nn.BatchNorm2d(hidden), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.dw(self.expand(x)))
        return x + y if self.use_res else y


class MobileNetV2ish(nn.Module):
    """MobileNetV2-style CNN for 1x28x28 inputs: stem, two stages of inverted residuals, mean pool, classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU6())
        self.stage1 = nn.Sequential(InvertedResidual(16, 16, 1, 2), InvertedResidual(16, 16, 1, 4))
        self.stage2 = nn.Sequential(InvertedResidual(16, 32, 2, 4), InvertedResidual(32, 32, 1, 4))
        self.head = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stage2(self.stage1(self.stem(x))).mean(dim=(2, 3)))


class EncoderBlock(nn.Module):
    def __init__(self, d: int, heads: int, ff: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.q, self.k, self.v, self.proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
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


class TinyEncoder(nn.Module):
    """Transformer encoder on (batch, 16 tokens, 16 features): embedding, 2 blocks, mean pool, classifier."""

    def __init__(self, d_in: int = 16, d: int = 64, heads: int = 4, ff: int = 128, n: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(d_in, d)
        self.blocks = nn.Sequential(*[EncoderBlock(d, heads, ff) for _ in range(n)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x))).mean(dim=1))


def bert_mini() -> nn.Module:
    """A BERT-mini-like ``transformers`` encoder built from its config (random weights), ``input_ids -> logits``."""
    from transformers import BertConfig, BertForSequenceClassification

    from autocompress.tasks.hf import SequenceClassifier

    config = BertConfig(vocab_size=1024, hidden_size=256, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=1024, max_position_embeddings=128, num_labels=2)
    return SequenceClassifier(BertForSequenceClassification(config).eval())


SMALL = ("lenet5", "mlp", "resnet", "mobilenet", "transformer")
FAMILIES = {
    "lenet5": (LeNet5, (1, 1, 28, 28)),
    "mlp": (lambda: mlp([784, 256, 128, 10]), (1, 1, 28, 28)),
    "resnet": (lambda: SmallResNet(width=16, blocks=(2, 2, 2)), (1, 1, 28, 28)),
    "mobilenet": (MobileNetV2ish, (1, 1, 28, 28)),
    "transformer": (TinyEncoder, (1, 16, 16)),
    "resnet18": (ResNet18, (1, 3, 96, 96)),
    "mobilenetv2": (MobileNetV2, (1, 3, 128, 128)),
    "efficientnet": (EfficientNetB0, (1, 3, 96, 96)),
    "vit": (lambda: ViT(num_classes=100, image=64, patch=8, dim=192, depth=6, heads=3, mlp=768), (1, 3, 64, 64)),
    "bert": (bert_mini, (1, 128)),
}
TRANSFORMERS = ("transformer", "vit", "bert")
FFN_FIRST = ("ff1", "mlp.0", "intermediate.dense")  # the prunable Linear of a transformer block's MLP


def teacher(family: str, seed: int) -> tuple[nn.Module, torch.Tensor, list]:
    """The family's model (seeded random weights), example input and calibration batch."""
    ctor, shape = FAMILIES[family]
    torch.manual_seed(seed)
    model = ctor().eval()
    g = torch.Generator().manual_seed(1)
    if family == "bert":  # token ids: a sentence of 100 tokens, then padding
        x = torch.randint(1, 1024, shape, generator=g)
        x[:, 100:] = 0
        return model, x, [x.repeat(8, 1)]
    return model, torch.randn(*shape), [torch.randn(8, *shape[1:], generator=g)]


def size_band(ms: float) -> str:
    return "<0.3 ms" if ms < 0.3 else "0.3-3 ms" if ms < 3 else ">=3 ms"
# the default search space's choices (search_spaces/default.yaml), low rank also on convolutions
CHOICES = {"sparsity_conv": [0.0, 0.25, 0.5, 0.75], "sparsity_linear": [0.0, 0.5, 0.75, 0.9, 0.95],
           "weight_bits": [2, 3, 4, 6, 8, 32], "activation_bits": [8, 32], "channel_keep": [0.5, 0.75, 1.0],
           "rank_ratio": [0.25, 0.5, 1.0, 1.0], "width": [0.5, 0.75, 1.0], "depth": [0.5, 1.0]}


def random_plan(family: str, model: nn.Module, x: torch.Tensor, rng: np.random.Generator) -> CompressionPlan:
    layers = {}
    heads = {m for g in attention_groups(model) if g.skip is None for m in g.members}  # cut by whole heads
    for info in discover_layers(model, x):
        conv = info.type_name.startswith("Conv")
        prunable = family not in TRANSFORMERS or info.name.endswith(FFN_FIRST) or info.name in heads
        layers[info.name] = LayerPlan(
            sparsity=float(rng.choice(CHOICES["sparsity_conv" if conv else "sparsity_linear"])),
            weight_bits=int(rng.choice(CHOICES["weight_bits"])),
            activation_bits=int(rng.choice(CHOICES["activation_bits"])),
            channel_keep=float(rng.choice(CHOICES["channel_keep"])) if prunable else 1.0,
            rank_ratio=float(rng.choice(CHOICES["rank_ratio"])))
    cnn = family not in TRANSFORMERS
    width = float(rng.choice(CHOICES["width"])) if cnn else 1.0
    depth = float(rng.choice(CHOICES["depth"])) if cnn or family == "transformer" else 1.0
    return CompressionPlan(layers=layers, student=StudentPlan(width=width, depth=depth))


# --- measuring ----------------------------------------------------------------------------------------------

NORM = {"FusedConv": "Conv", "FusedGemm": "Gemm", "BatchNormalization": "Conv"}


def _norm(op: str) -> str:
    return NORM.get(op, op)


BACKEND = "onnxruntime"


def runs_for(expected_ms: float, runs: int) -> int:
    """Timed calls per round: ``runs``, fewer for slow models (a round of about 0.3 s, at least 10 calls)."""
    return int(max(10, min(runs, 300 / max(expected_ms, 1e-3))))


def measure(model: nn.Module, plan: CompressionPlan, x: torch.Tensor, calib, *, runs: int, rounds: int,
            with_ops: bool = False):
    spec = TimingSpec(threads=1, warmup=min(20, runs), runs=runs, rounds=rounds)
    with tempfile.TemporaryDirectory(prefix="bench-latency-") as tmp:
        path, kernels = lower_plan(model, plan, x, Path(tmp), calibration=calib, backend=BACKEND)
        t = get_backend(BACKEND).time({"m": path}, x, spec)["m"]
        m = Measurement(latency_ms=t.latency_ms, rounds_ms=t.rounds_ms, int8_nodes=len(kernels.int8),
                        normalized=t.normalized, reference_ms=t.reference_ms, parts=t.parts)
        ops = None
        if with_ops and BACKEND == "onnxruntime":  # the runtime graph ONNX Runtime optimizes the file to
            import onnx

            ops = collections.Counter(_norm(n.op) for n in optimized_graph(onnx.load(str(path)), "all").nodes)
    return m, ops


def flops_of(kernels) -> float:
    """MACs of the compute kernels (what a FLOPs counter sees: dense, every layer)."""
    return float(sum(f[1] for _, f in kernels))


def fit_flops(xs: np.ndarray, ys: np.ndarray) -> tuple[float, float]:
    a = np.stack([np.ones_like(xs), xs], axis=1) / ys[:, None]
    (c0, c1), *_ = np.linalg.lstsq(a, np.ones_like(ys), rcond=None)
    return float(c0), float(c1)


def scores(pred: np.ndarray, meas: np.ndarray) -> dict[str, float]:
    err = (pred - meas) / meas
    tau = stats.kendalltau(pred, meas).statistic if len(pred) > 2 else float("nan")
    return {"n": int(len(err)), "within_5pct": float(np.mean(np.abs(err) <= 0.05)),
            "within_10pct": float(np.mean(np.abs(err) <= 0.10)), "rmspe": float(np.sqrt(np.mean(err**2))),
            "mean_error": float(np.mean(err)), "max_abs_error": float(np.max(np.abs(err))), "kendall_tau": float(tau)}


def fmt(s: dict[str, float]) -> str:
    return (f"n={s['n']:3d}  within5%={100 * s['within_5pct']:5.1f}%  within10%={100 * s['within_10pct']:5.1f}%  "
            f"RMSPE={100 * s['rmspe']:5.1f}%  bias={100 * s['mean_error']:+5.1f}%  max|err|={100 * s['max_abs_error']:5.1f}%"
            f"  tau={s['kendall_tau']:.3f}")


def noise_child(spec_path: str) -> int:
    """``--noise-child FILE``: measure the models listed in FILE once (this fresh process), print one JSON line."""
    spec = json.loads(Path(spec_path).read_text())
    global BACKEND
    BACKEND = spec["backend"]
    torch.set_num_threads(1)
    out, teachers = [], {}
    for item in spec["models"]:
        if item["family"] not in teachers:
            teachers[item["family"]] = teacher(item["family"], spec["seed"])
        model, x, calib = teachers[item["family"]]
        m, _ = measure(model, CompressionPlan.from_dict(item["plan"]), x, calib, runs=item["runs"],
                       rounds=spec["rounds"])
        out.append({"absolute_ms": m.latency_ms, "normalized": m.normalized, "reference_ms": m.reference_ms,
                    "compute_normalized": (m.parts or {}).get("compute", [None])[0]})
    print(json.dumps(out))
    return 0


# a neighbour on the other core: copies between two 64 MiB buffers, forever (memory bandwidth and L3 contention)
HOG = "import numpy as np\na = np.ones(1 << 24, np.float32); b = np.empty_like(a)\nwhile True: np.copyto(b, a)"


def noise_study(rows: list[dict], args, rng: np.random.Generator) -> tuple[dict, list[dict]]:
    """The same models measured in ``--noise-processes`` fresh processes: absolute vs normalized deviation."""
    pick = []
    for family in dict.fromkeys(r["family"] for r in rows):
        mine = [r for r in rows if r["family"] == family]
        pick += [mine[int(j)] for j in rng.choice(len(mine), size=min(args.noise_models, len(mine)), replace=False)]
    if not pick or args.noise_processes < 2:
        return {}, []
    with tempfile.TemporaryDirectory(prefix="bench-noise-") as tmp:
        spec = Path(tmp) / "models.json"
        spec.write_text(json.dumps({"backend": args.backend, "seed": args.seed, "rounds": args.rounds,
                                    "models": [{"family": r["family"], "plan": r["plan"], "runs": r["runs"]}
                                               for r in pick]}))
        runs, loaded = [], []
        for k in range(args.noise_processes):
            # --noise-load: every other process runs beside a neighbour streaming memory on the other core (a
            # slow state of a shared machine, made on purpose), so the study shows what normalization removes
            hog = (subprocess.Popen([sys.executable, "-c", HOG]) if args.noise_load and k % 2 else None)
            try:
                got = subprocess.run([sys.executable, __file__, "--noise-child", str(spec)], capture_output=True,
                                     text=True, check=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
            runs.append(json.loads(got.stdout.strip().splitlines()[-1]))
            loaded.append(hog is not None)
            print(f"  noise: process {k + 1}/{args.noise_processes} done{' (loaded)' if hog else ''}", flush=True)
    noise_rows = []
    for j, r in enumerate(pick):
        noise_rows.append({"family": r["family"], "i": r["i"],
                           "absolute_ms": [run[j]["absolute_ms"] for run in runs],
                           "normalized": [run[j]["normalized"] for run in runs],
                           # against the reference's compute part alone (the reference of version 1), same calls
                           "compute_normalized": [run[j]["compute_normalized"] for run in runs],
                           "reference_ms": [run[j]["reference_ms"] for run in runs]})

    def deviation(key: str, subset=None, quiet_only: bool = False) -> dict[str, float]:
        """RMS etc. of each model's values around its median over the processes (``quiet_only``: the processes
        that ran without the neighbour)."""
        keep = [not (quiet_only and was) for was in loaded]
        dev = np.array([(v - np.median(vals)) / np.median(vals) for n in noise_rows
                        if subset is None or n["family"] in subset
                        for vals in [[x for x, k in zip(n[key], keep, strict=True) if k]] for v in vals])
        return {"rms": float(np.sqrt(np.mean(dev**2))), "within_5pct": float(np.mean(np.abs(dev) <= 0.05)),
                "within_10pct": float(np.mean(np.abs(dev) <= 0.10)), "max_abs": float(np.max(np.abs(dev)))}

    ref = np.array([v for n in noise_rows[:1] for v in n["reference_ms"]])
    summary = {"models": len(noise_rows), "processes": args.noise_processes, "loaded_processes": sum(loaded),
               "absolute": deviation("absolute_ms"), "normalized": deviation("normalized"),
               "normalized_compute_part": deviation("compute_normalized"),
               "quiet_processes_only": ({"absolute": deviation("absolute_ms", quiet_only=True),
                                         "normalized": deviation("normalized", quiet_only=True)}
                                        if any(loaded) else None),
               "reference_ms_range": [float(ref.min()), float(ref.max())] if len(ref) else None,
               "by_family": {f: {"absolute_rms": deviation("absolute_ms", {f})["rms"],
                                 "normalized_rms": deviation("normalized", {f})["rms"],
                                 "normalized_compute_part_rms": deviation("compute_normalized", {f})["rms"]}
                             for f in dict.fromkeys(n["family"] for n in noise_rows)}}
    return summary, noise_rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backend", choices=("onnxruntime", "openvino", "torch"), default="onnxruntime")
    ap.add_argument("--profile", default=None)
    ap.add_argument("--models-per-family", default="20,40", metavar="SMALL,REAL",
                    help="held-out models per small family and per real-size family (default 20,40: 300 models)")
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--passes", type=int, default=1, help="measurement passes over all models (truth: median)")
    ap.add_argument("--noise-processes", type=int, default=8, help="fresh processes of the noise study")
    ap.add_argument("--noise-models", type=int, default=2, help="models per family in the noise study")
    ap.add_argument("--noise-load", action="store_true",
                    help="run every other noise-study process beside a memory-streaming neighbour process")
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="details JSON (default: benchmarks/out/latency_predictor[_<backend>].json)")
    ap.add_argument("--results", default="benchmarks/results/latency_predictor.json",
                    help="summary JSON, one entry per backend (merged)")
    ap.add_argument("--calibrate-plans", type=int, default=10,
                    help="per family, calibrate the profile on this many other plans (0: no calibrated figures)")
    ap.add_argument("--noise-child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.noise_child:
        return noise_child(args.noise_child)
    global BACKEND
    BACKEND = args.backend
    torch.set_num_threads(1)
    profile = resolve_profile(args.profile, backend=args.backend)
    speed = profile.reference_ms
    if speed is None:
        raise SystemExit(f"{profile.path}: the profile has no reference speed; re-run `autocompress profile`")
    print(f"profile: {profile.path} ({len(profile.samples)} samples, {len(profile.model.kinds)} kernel kinds, "
          f"made in {profile.info.get('seconds')} s, reference {speed:.4f} ms)")
    families = args.families.split(",")
    n_small, n_real = (int(v) for v in args.models_per_family.split(","))
    rng = np.random.default_rng(args.seed)
    rows = []
    predict_times = []
    predictors: dict[str, LatencyPredictor] = {}
    calibrations: dict[str, dict] = {}
    unpredictable: list[str] = []
    t_start = time.perf_counter()
    from autocompress.latency.lowering import lower_ops

    for family in families:
        n = n_small if family in SMALL else n_real
        model, x, calib = teacher(family, args.seed)
        t0 = time.perf_counter()
        predictor = LatencyPredictor(model, x, profile, backend=args.backend)
        predictor.analysis.variant(1.0)
        predictor.analysis.variant(0.5)
        analysis_s = time.perf_counter() - t0
        predictors[family] = predictor
        print(f"{family}: teacher analysis {analysis_s:.1f} s; measuring {n} models", flush=True)
        for i in range(n):
            plan = CompressionPlan() if i == 0 else random_plan(family, model, x, rng)
            t0 = time.perf_counter()
            try:
                pred, lowered = predictor.predict_lowered(plan)
            except (AnalysisError, UnsupportedOpError) as e:
                # counted and shown, never silently dropped (a --quick profile lacks some kernel kinds)
                unpredictable.append(f"{family} model {i}: {str(e)[:120]}")
                print(f"  {family} model {i}: not predictable ({str(e)[:200]})")
                continue
            predict_times.append(time.perf_counter() - t0)
            runs = runs_for(pred, args.runs)
            try:
                m, ops = measure(model, plan, x, calib, runs=runs, rounds=args.rounds, with_ops=True)
            except Exception as e:  # a plan the exporter refuses is reported, not a crash of the benchmark
                unpredictable.append(f"{family} model {i}: not measurable: {type(e).__name__}: {str(e)[:100]}")
                print(f"  {family} model {i}: not measurable ({type(e).__name__}: {str(e)[:200]})")
                continue
            fallback = profile.model.fallback_kinds(lowered.kernels)
            fallback_ms = sum(profile.model.kernel_ms(k) for k in lowered.kernels if k.kind in fallback)
            pred_ops = None if args.backend != "onnxruntime" else collections.Counter(
                _norm(op.op) for op in lower_ops(predictor.analysis.resolve(plan), block=profile.nchwc_block))
            rows.append({"family": family, "i": i, "predicted_ms": pred, "runs": runs,
                         "passes": [{"absolute_ms": m.latency_ms, "normalized": m.normalized,
                                     "reference_ms": m.reference_ms, "rounds_ms": m.rounds_ms,
                                     "reference_parts": m.parts}],
                         "flops": flops_of([(k.kind, k.features) for k in lowered.kernels]),
                         "structure_match": ops == pred_ops, "int8_nodes_measured": m.int8_nodes,
                         "int8_nodes_predicted": lowered.int8_nodes, "plan": plan.to_dict(),
                         "fallback_kinds": fallback, "fallback_share": fallback_ms / pred if pred > 0 else 0.0})
        if args.calibrate_plans > 1:  # few-shot calibration to this model on plans of its own (not held out)
            cal_rng = np.random.default_rng(args.seed + 1000)
            plans = [CompressionPlan()] + [random_plan(family, model, x, cal_rng)
                                           for _ in range(args.calibrate_plans - 1)]
            try:
                cal = calibrate_profile(profile, model, x, plans, calibration=calib, label=family,
                                        runs=runs_for(predictor.predict(CompressionPlan()), args.runs))
                calibrations[family] = {k: v for k, v in cal.info["calibration"].items() if k != "measurements"}
            except (AnalysisError, UnsupportedOpError, ProfileError) as e:  # e.g. a --quick profile
                print(f"  {family}: not calibrated ({str(e)[:200]})")
        print(f"  {family}: done at {time.perf_counter() - t_start:.0f} s", flush=True)
    # the same plans again: each plan's kernel structure is now in the lowering's cache, as a structure seen before
    # in a study is (the first predictions above mostly missed it: random plans rarely share one)
    warm_times = []
    for r in rows:
        plan = CompressionPlan.from_dict(r["plan"])
        t0 = time.perf_counter()
        predictors[r["family"]].predict(plan)
        warm_times.append(time.perf_counter() - t0)
    print(f"measured {len(rows)} models in {time.perf_counter() - t_start:.0f} s ({len(unpredictable)} not "
          "predictable or measurable, left out of every figure below)", flush=True)
    teachers: dict[str, tuple] = {}
    for _ in range(args.passes - 1):  # more passes, minutes later, fresh export and session
        for r in rows:
            if r["family"] not in teachers:
                teachers[r["family"]] = teacher(r["family"], args.seed)
            model, x, calib = teachers[r["family"]]
            m2, _ = measure(model, CompressionPlan.from_dict(r["plan"]), x, calib, runs=r["runs"], rounds=args.rounds)
            r["passes"].append({"absolute_ms": m2.latency_ms, "normalized": m2.normalized,
                                "reference_ms": m2.reference_ms, "rounds_ms": m2.rounds_ms,
                                "reference_parts": m2.parts})
    for r in rows:
        r["absolute_ms"] = float(np.median([q["absolute_ms"] for q in r["passes"]]))
        r["normalized_ms"] = float(np.median([q["normalized"] for q in r["passes"]])) * speed
        r["band"] = size_band(r["normalized_ms"])
    print(f"{args.passes} pass(es) in {time.perf_counter() - t_start:.0f} s; noise study ...", flush=True)
    noise, noise_rows = noise_study(rows, args, rng)

    pred = np.array([r["predicted_ms"] for r in rows])
    meas = np.array([r["normalized_ms"] for r in rows])
    absolute = np.array([r["absolute_ms"] for r in rows])
    fl = np.array([r["flops"] for r in rows])
    c0, c1 = fit_flops(np.array([flops_of(s.kernels) for s in profile.samples]),
                       np.array([s.latency_ms for s in profile.samples]))
    base_profile = c0 + c1 * fl
    d0, d1 = fit_flops(fl, meas)
    base_insample = d0 + d1 * fl
    fam = np.array([r["family"] for r in rows])
    band = np.array([r["band"] for r in rows])
    real = np.isin(fam, [f for f in families if f not in SMALL])
    # with `profile --calibrate` to each model: its offset and scale refitted on plans that are not held out
    raw = (pred - profile.model.offset) / profile.model.scale
    cal_pred = np.array([calibrations[f]["offset"] + calibrations[f]["scale"] * r if f in calibrations else np.nan
                         for f, r in zip(fam, raw, strict=True)])
    has_cal = ~np.isnan(cal_pred)
    calibrated = ({"overall": scores(cal_pred[has_cal], meas[has_cal]),
                   "vs_absolute": scores(cal_pred[has_cal], absolute[has_cal]),
                   "by_family": {f: scores(cal_pred[fam == f], meas[fam == f]) for f in calibrations},
                   "by_band": {b: scores(cal_pred[(band == b) & has_cal], meas[(band == b) & has_cal])
                               for b in sorted(set(band)) if ((band == b) & has_cal).any()},
                   "fits": calibrations, "plans_per_model": args.calibrate_plans} if has_cal.any() else None)
    results = {"predictor": scores(pred, meas), "predictor_vs_absolute": scores(pred, absolute),
               "calibrated": calibrated,
               "flops_profile_fit": scores(base_profile, meas), "flops_in_sample_fit": scores(base_insample, meas),
               "predictor_by_family": {f: scores(pred[fam == f], meas[fam == f]) for f in families if (fam == f).any()},
               "predictor_by_band": {b: scores(pred[band == b], meas[band == b]) for b in sorted(set(band))},
               "predictor_real_size": scores(pred[real], meas[real]) if real.any() else None,
               "predict_ms": {"mean": 1e3 * float(np.mean(predict_times)),
                              "p95": 1e3 * float(np.percentile(predict_times, 95))},
               "predict_ms_structure_seen": {"mean": 1e3 * float(np.mean(warm_times)),
                                             "p95": 1e3 * float(np.percentile(warm_times, 95))},
               "structure_match": (None if args.backend != "onnxruntime" else
                                   float(np.mean([r["structure_match"] for r in rows]))),
               "int8_nodes": {"measured": int(sum(r["int8_nodes_measured"] for r in rows)),
                              "predicted": int(sum(r["int8_nodes_predicted"] for r in rows)),
                              "models_matching": float(np.mean([r["int8_nodes_measured"] == r["int8_nodes_predicted"]
                                                                for r in rows]))},
               "fallback": {"models": float(np.mean([bool(r["fallback_kinds"]) for r in rows])),
                            "kinds": sorted({k for r in rows for k in r["fallback_kinds"]}),
                            "predicted_share_mean": float(np.mean([r["fallback_share"] for r in rows])),
                            "predicted_share_max": float(np.max([r["fallback_share"] for r in rows]))},
               "noise": noise, "unpredictable": unpredictable, "passes": args.passes,
               "profile_reference_ms": speed, "backend": args.backend,
               "measured_ms_range": [float(meas.min()), float(meas.max())],
               "seconds": round(time.perf_counter() - t_start, 1),
               "machine": {"cpu": profile.fingerprint.get("cpu"), "cores": profile.fingerprint.get("cores"),
                           "python": platform.python_version(), "onnxruntime": profile.fingerprint.get("onnxruntime")}}
    print()
    print(f"backend {args.backend}; truth: normalized time at the profile's reference speed ({speed:.4f} ms), "
          f"median of {args.passes} pass(es)")
    print(f"held-out models: {len(rows)} from {len(set(fam))} families, measured {meas.min():.3f}-{meas.max():.3f} ms")
    print(f"predictor            {fmt(results['predictor'])}")
    print(f"  vs absolute ms      {fmt(results['predictor_vs_absolute'])}")
    print(f"FLOPs (profile fit)  {fmt(results['flops_profile_fit'])}")
    print(f"FLOPs (in-sample)    {fmt(results['flops_in_sample_fit'])}")
    for f, sc in results["predictor_by_family"].items():
        print(f"  {f:12s}       {fmt(sc)}")
    for b, sc in results["predictor_by_band"].items():
        print(f"  {b:12s}       {fmt(sc)}")
    if calibrated:
        print(f"calibrated ({args.calibrate_plans} measurements per model, `profile --calibrate`):")
        print(f"  all                {fmt(calibrated['overall'])}")
        print(f"  vs absolute ms     {fmt(calibrated['vs_absolute'])}")
        for f, sc in calibrated["by_family"].items():
            print(f"  {f:12s}       {fmt(sc)}   (leave-one-out on its calibration plans: RMSPE "
                  f"{100 * calibrations[f]['after_leave_one_out']['rmspe']:.1f} %)")
        for b, sc in calibrated["by_band"].items():
            print(f"  {b:12s}       {fmt(sc)}")
    print(f"predict time per model (structure never seen): mean {results['predict_ms']['mean']:.3f} ms, p95 "
          f"{results['predict_ms']['p95']:.3f} ms; structure seen before: mean "
          f"{results['predict_ms_structure_seen']['mean']:.3f} ms, p95 {results['predict_ms_structure_seen']['p95']:.3f} ms")
    i8 = results["int8_nodes"]
    print(f"int8 kernels: {i8['measured']} measured, {i8['predicted']} predicted; same count in "
          f"{100 * i8['models_matching']:.1f} % of the models")
    if results["structure_match"] is not None:
        print(f"predicted kernel list == runtime's optimized graph (op counts): {100 * results['structure_match']:.1f} %")
    fb = results["fallback"]
    print(f"unmeasured data-op kinds priced by the fallback: {', '.join(fb['kinds']) or 'none'}; in "
          f"{100 * fb['models']:.0f} % of the models, {100 * fb['predicted_share_mean']:.2f} % of their predicted time "
          f"on average (max {100 * fb['predicted_share_max']:.1f} %)")
    if noise:
        a, nm = noise["absolute"], noise["normalized"]
        print(f"noise: {noise['models']} models x {noise['processes']} fresh processes ({noise['loaded_processes']} "
              f"beside a memory-streaming neighbour): RMS deviation from each model's median: absolute "
              f"{100 * a['rms']:.1f} % (max {100 * a['max_abs']:.1f} %), normalized {100 * nm['rms']:.1f} % (max "
              f"{100 * nm['max_abs']:.1f} %), against the reference's compute part alone "
              f"{100 * noise['normalized_compute_part']['rms']:.1f} %; reference {noise['reference_ms_range']} ms")
        if noise["quiet_processes_only"]:
            q = noise["quiet_processes_only"]
            print(f"  the quiet processes alone: absolute {100 * q['absolute']['rms']:.1f} %, normalized "
                  f"{100 * q['normalized']['rms']:.1f} %")
        for f, v in noise["by_family"].items():
            print(f"  {f:12s} absolute {100 * v['absolute_rms']:5.1f} %  normalized {100 * v['normalized_rms']:5.1f} %"
                  f"  compute part alone {100 * v['normalized_compute_part_rms']:5.1f} %")
    suffix = "" if args.backend == "onnxruntime" else f"_{args.backend}"
    out = Path(args.out or f"benchmarks/out/latency_predictor{suffix}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "rows": rows, "noise_rows": noise_rows, "args": vars(args)},
                              indent=1))
    summary_path = Path(args.results)
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"backends": {}}
    p = results["predictor"]
    summary["backends"][args.backend] = {
        "n_models": p["n"], "within_10pct": p["within_10pct"], "within_5pct": p["within_5pct"], "rmspe": p["rmspe"],
        "kendall_tau": p["kendall_tau"], "predict_ms_p95_unseen": results["predict_ms"]["p95"],
        "predict_ms_p95_seen": results["predict_ms_structure_seen"]["p95"],
        "truth": "normalized time at the profile's reference speed", "absolute": results["predictor_vs_absolute"],
        "by_family": {f: {"n": v["n"], "within_10pct": v["within_10pct"], "rmspe": v["rmspe"]}
                      for f, v in results["predictor_by_family"].items()},
        "by_band": {b: {"n": v["n"], "within_10pct": v["within_10pct"], "rmspe": v["rmspe"]}
                    for b, v in results["predictor_by_band"].items()},
        "flops_baseline": {"within_10pct": results["flops_profile_fit"]["within_10pct"],
                           "rmspe": results["flops_profile_fit"]["rmspe"]},
        "calibrated": None if not calibrated else {
            "within_10pct": calibrated["overall"]["within_10pct"], "within_5pct": calibrated["overall"]["within_5pct"],
            "rmspe": calibrated["overall"]["rmspe"], "kendall_tau": calibrated["overall"]["kendall_tau"],
            "plans_per_model": args.calibrate_plans,
            "by_family": {f: {"within_10pct": v["within_10pct"], "rmspe": v["rmspe"]}
                          for f, v in calibrated["by_family"].items()}},
        "fallback": results["fallback"], "unpredictable": len(unpredictable),
        "noise": noise, "machine": results["machine"], "profile": str(profile.path),
        "profile_seconds": profile.info.get("seconds"), "measured_ms_range": results["measured_ms_range"],
        "seconds": results["seconds"], "command": " ".join([Path(sys.argv[0]).name, *(argv or sys.argv[1:])])}
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(json.dumps(summary, indent=1) + "\n")
    print(f"details: {out}; summary: {summary_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
