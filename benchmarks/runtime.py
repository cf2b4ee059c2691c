"""The runtime layer, measured: the same candidates on ONNX Runtime and OpenVINO in one interleaved run, and what
N:M semi-structured sparsity does to size and latency on these CPU runtimes.

    .venv/bin/python benchmarks/runtime.py [--study DIR_OR_CONFIG] [--rounds 7] [--runs 200] [--quick]

Part 1 (backends): for each model, the teacher and compressed candidates are lowered by both backends through
``autocompress.runtime`` (ONNX Runtime with every kernel kind it has; OpenVINO with int8 and float, the same QDQ
graph) and every (candidate, backend) pair is timed in the same rounds, interleaved (A B C ... A B C ...), at one
thread, batch 1: the median of the round medians, and the rounds' spread. Models: the built-in ``mnist-resnet``
teacher with representative plans, the front members of ``--study`` (a finished study's results folder or config;
default: none), and MobileNetV2 (ImageNet layout, random weights: latency only) at 96 px and, without ``--quick``,
224 px.

Part 2 (N:M): LeNet-5 (built-in ``mnist-lenet5`` teacher) with 8-bit weights, dense vs 2:4 and 4:8 N:M vs 50 %
unstructured sparsity: exact stored size, latency on both backends (interleaved), validation accuracy after
``--finetune`` KD steps.

Writes ``benchmarks/results/runtime.json`` (``--out``) with the figures and the package files each proof touched.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import optuna
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from autocompress.compress import discover_layers  # noqa: E402
from autocompress.config import FinetuneConfig  # noqa: E402
from autocompress.evaluate.candidate import Candidate  # noqa: E402
from autocompress.evaluate.size import compressed_size, dense_size_bytes  # noqa: E402
from autocompress.front import load_front  # noqa: E402
from autocompress.latency.measure import materialize_plan  # noqa: E402
from autocompress.latency.profile import fingerprint  # noqa: E402
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan  # noqa: E402
from autocompress.runtime import TimingSpec, get_backend, time_interleaved  # noqa: E402
from autocompress.runtime.base import feed_arrays  # noqa: E402
from autocompress.tasks import load_task  # noqa: E402
from autocompress.tasks.models import MobileNetV2  # noqa: E402

BACKENDS = ("onnxruntime", "openvino")

# The package files (outside tests) each proof added or changed, and why (see RESULTS.md).
FILES_TOUCHED = {
    "openvino": ["autocompress/runtime/openvino.py (the backend)",
                 "autocompress/runtime/__init__.py (one registry line)",
                 "autocompress/export/card.py (openvino's version on the model card)"],
    "nm_sparsity": ["autocompress/compress/nm.py (the method)",
                    "autocompress/compress/registry.py (one registry line)"],
}


def _int8_everywhere(layers) -> dict[str, LayerPlan]:
    return {i.name: LayerPlan(weight_bits=8, activation_bits=8) for i in layers}


def _cnn_plans(model, x) -> dict[str, CompressionPlan]:
    layers = discover_layers(model, x)
    hidden = [i for i in layers if not i.is_output]
    return {
        "teacher (fp32)": CompressionPlan(),
        "int8 (w8a8 every layer)": CompressionPlan(layers=_int8_everywhere(layers)),
        "width 0.5 + int8": CompressionPlan(layers=_int8_everywhere(layers), student=StudentPlan(width=0.5)),
        "keep 0.5 (float)": CompressionPlan(layers={i.name: LayerPlan(channel_keep=0.5) for i in hidden}),
    }


def _calibration(x: torch.Tensor, data=None) -> list[torch.Tensor]:
    if data is not None:
        return [torch.stack([data[i][0] for i in range(min(64, len(data)))])]
    g = torch.Generator().manual_seed(0)
    return [torch.randn(16, *x.shape[1:], generator=g)]


def time_candidates(model, x, plans: dict[str, CompressionPlan], calib, spec: TimingSpec, tmp: Path) -> list[dict]:
    """Lower each plan on both backends, then time every (plan, backend) pair in the same interleaved rounds."""
    calls, rows = {}, {}
    for label, plan in plans.items():
        cm = materialize_plan(model, plan, x, calib)
        for name in BACKENDS:
            backend = get_backend(name)
            folder = tmp / f"{len(calls)}"
            folder.mkdir(parents=True)
            lowered = backend.lower(cm, x, calib, folder)
            session = backend.session(lowered.artifact, threads=spec.threads)
            feed = feed_arrays(x, spec.batch_size)
            calls[(label, name)] = (lambda s=session, f=feed: s.run(f))
            k = lowered.kernels
            rows[(label, name)] = {"plan": label, "backend": name, "kernels": {"int8": len(k.int8), "int4": len(k.int4),
                                                                               "float": len(k.float)}}
    timed = time_interleaved({f"{a}|{b}": c for (a, b), c in calls.items()}, spec)
    out = []
    for (label, name), row in rows.items():
        t = timed[f"{label}|{name}"]
        row.update(latency_ms=round(t.latency_ms, 5), spread=round(t.spread, 3))
        out.append(row)
    return out


def _print_backends(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    print(f"{'candidate':34s} {'ORT ms':>9s} {'OV ms':>9s} {'OV/ORT':>7s} {'spread ORT/OV':>14s}  kernels ORT | OV")
    by = {(r["plan"], r["backend"]): r for r in rows}
    for label in dict.fromkeys(r["plan"] for r in rows):
        a, b = by[(label, "onnxruntime")], by[(label, "openvino")]
        ka, kb = a["kernels"], b["kernels"]
        print(f"{label[:34]:34s} {a['latency_ms']:9.4f} {b['latency_ms']:9.4f} {b['latency_ms'] / a['latency_ms']:7.2f} "
              f"{a['spread']:6.1%} / {b['spread']:5.1%}  i8 {ka['int8']} i4 {ka['int4']} f {ka['float']} | "
              f"i8 {kb['int8']} i4 {kb['int4']} f {kb['float']}")


def part_backends(args, spec: TimingSpec) -> list[dict]:
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-runtime-") as tmp_dir:
        tmp = Path(tmp_dir)
        task = load_task("mnist-resnet")
        x = task.example_input
        calib = _calibration(x, task.train)
        rows = time_candidates(task.model, x, _cnn_plans(task.model, x), calib, spec, tmp / "resnet")
        _print_backends("mnist-resnet (SmallResNet, 1x28x28)", rows)
        results.append({"model": "mnist-resnet", "input": list(x.shape), "rows": rows})
        if args.study:  # a real study's teacher and front members
            url = _storage_url(args.study)
            front = load_front(url)
            spec_name = optuna.load_study(study_name=front.study_name, storage=url).user_attrs["task"]
            st = load_task(spec_name)
            plans = {"teacher (fp32)": CompressionPlan()}
            for n in [int(t) for t in front.front["trial"]][: args.members]:
                plans[f"front #{n}: {front.plans[n].summary()}"[:60]] = front.plans[n]
            rows = time_candidates(st.model, st.example_input, plans, _calibration(st.example_input, st.train), spec,
                                   tmp / "study")
            _print_backends(f"study {front.study_name} ({spec_name}): teacher and front members", rows)
            results.append({"model": f"study {front.study_name} ({spec_name})", "rows": rows})
        sizes = (96,) if args.quick else (96, 224)
        for px in sizes:
            torch.manual_seed(0)
            model = MobileNetV2().eval()
            xm = torch.randn(1, 3, px, px)
            plans = {k: v for k, v in _cnn_plans(model, xm).items() if not k.startswith("keep")}
            rows = time_candidates(model, xm, plans, _calibration(xm), spec, tmp / f"mbv2-{px}")
            _print_backends(f"MobileNetV2 (ImageNet layout, random weights), 3x{px}x{px}", rows)
            results.append({"model": f"mobilenet_v2@{px}", "input": list(xm.shape), "rows": rows})
    return results


def _storage_url(target: str) -> str:
    path = Path(target)
    if "://" in target:
        return target
    if path.suffix in (".yaml", ".yml"):
        from autocompress.config import load_study_config

        return load_study_config(path).storage_url
    return f"sqlite:///{(path / 'study.db').resolve()}"


def part_nm(args, spec: TimingSpec) -> list[dict]:
    task = load_task("mnist-lenet5")
    x = task.example_input
    names = [i.name for i in discover_layers(task.model, x)]
    plans = {
        "8-bit dense": {n: LayerPlan(weight_bits=8) for n in names},
        "8-bit + 2:4": {n: LayerPlan(weight_bits=8, nm="2:4") for n in names},
        "8-bit + 4:8": {n: LayerPlan(weight_bits=8, nm="4:8") for n in names},
        "8-bit + 50 % unstructured": {n: LayerPlan(weight_bits=8, sparsity=0.5) for n in names},
    }
    plans = {k: CompressionPlan(layers=v) for k, v in plans.items()}
    ft = FinetuneConfig(steps=args.finetune)
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-nm-") as tmp_dir:
        rows = {r["plan"] + "|" + r["backend"]: r
                for r in time_candidates(task.model, x, plans, _calibration(x, task.train), spec, Path(tmp_dir))}
    teacher_bytes = dense_size_bytes(task.model)
    print(f"\nN:M on LeNet-5 (teacher {teacher_bytes} B; accuracy after {args.finetune} KD steps, validation)")
    print(f"{'plan':28s} {'bytes':>7s} {'vs dense 8-bit':>14s} {'ORT ms':>8s} {'OV ms':>8s} {'val acc':>8s}  skipped")
    base = None
    for label, plan in plans.items():
        cand = Candidate(task, plan, ft, seed=0)
        cand.train_to(args.finetune)
        size = compressed_size(cand.baked())[0]
        base = base or size
        acc = cand.accuracy("val")
        ort, ov = rows[f"{label}|onnxruntime"], rows[f"{label}|openvino"]
        row = {"plan": label, "size_bytes": size, "size_vs_dense_8bit": round(base / size, 3),
               "onnxruntime_ms": ort["latency_ms"], "openvino_ms": ov["latency_ms"],
               "onnxruntime_vs_dense": None, "openvino_vs_dense": None, "val_accuracy": acc,
               "skipped": cand.cm.skipped}
        out.append(row)
        print(f"{label:28s} {size:7d} {base / size:13.2f}x {ort['latency_ms']:8.4f} {ov['latency_ms']:8.4f} "
              f"{acc:8.4f}  {'; '.join(f'{k}: {v}' for k, v in cand.cm.skipped.items()) or '-'}")
    for row in out:
        row["onnxruntime_vs_dense"] = round(out[0]["onnxruntime_ms"] / row["onnxruntime_ms"], 3)
        row["openvino_vs_dense"] = round(out[0]["openvino_ms"] / row["openvino_ms"], 3)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--study", default=None, help="a finished study (results folder, config or URL) whose front "
                                                   "members are timed too")
    ap.add_argument("--members", type=int, default=4, help="front members of --study to time (default 4)")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=200, help="timed calls per round")
    ap.add_argument("--finetune", type=int, default=400, help="KD steps for the N:M accuracy figures")
    ap.add_argument("--quick", action="store_true", help="fewer rounds and runs, MobileNetV2 at 96 px only")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "runtime.json"))
    args = ap.parse_args()
    if args.rounds < 1 or args.runs < 3:
        raise SystemExit("--rounds must be >= 1 and --runs >= 3")
    if args.quick:
        args.rounds, args.runs, args.finetune = min(args.rounds, 3), min(args.runs, 50), min(args.finetune, 100)
    torch.set_num_threads(1)
    spec = TimingSpec(threads=1, batch_size=1, warmup=20, runs=args.runs, rounds=args.rounds)
    start = time.perf_counter()
    backends = part_backends(args, spec)
    nm = part_nm(args, spec)
    ratios = [r2["latency_ms"] / r1["latency_ms"] for m in backends for r1 in m["rows"] for r2 in m["rows"]
              if r1["plan"] == r2["plan"] and r1["backend"] == "onnxruntime" and r2["backend"] == "openvino"]
    result = {
        "command": "python benchmarks/runtime.py " + " ".join(sys.argv[1:]),
        "machine": {"cpu": fingerprint()["cpu"], "python": platform.python_version(),
                    "cores": fingerprint()["cores"]},
        "versions": {**get_backend("onnxruntime").versions(), **get_backend("openvino").versions()},
        "timing": {"threads": 1, "batch_size": 1, "rounds": spec.rounds, "runs_per_round": spec.runs},
        "files_touched": {k: len(v) for k, v in FILES_TOUCHED.items()},
        "files_touched_detail": FILES_TOUCHED,
        "backends": backends,
        "openvino_vs_onnxruntime_median_ratio": round(statistics.median(ratios), 3),
        "nm_sparsity": nm,
        "seconds": round(time.perf_counter() - start, 1),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"\nOpenVINO / ONNX Runtime latency, median over all candidates: {result['openvino_vs_onnxruntime_median_ratio']}"
          f"\nwrote {out} ({result['seconds']} s)")


if __name__ == "__main__":
    main()
