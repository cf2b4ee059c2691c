"""Channel alignment: the same pruned students with exact channel counts and with counts rounded to multiples of 8
and 16, timed side by side on a runtime.

    .venv/bin/python benchmarks/channel_alignment.py [--models mnist-mobilenetv2@size=96,mnist-resnet18]
                                                    [--backends onnxruntime,openvino] [--rounds 7] [--runs 200]
                                                    [--out benchmarks/results/channel_alignment.json]
                                                    [--profile benchmarks/out/latency_profile.json]

For each model (a built-in task, options after ``@`` as in ``benchmarks/zoo.py``) and each kept share of channels
(0.75, 0.5, 0.375, 0.25) with and without half depth: the plan that keeps that share of every hidden layer's
channels, its counts rounded by the search's rule (``channel_target``: to the nearest multiple, at least one)
for multiple 1 (exact), 8 and 16. Every plan is materialized and lowered as the search lowers
it, then all of them are timed interleaved in one process (1 thread, batch 1, speed-normalized); speedups are
against the fp32 teacher in the same run, so the machine's slow spells move every plan alike. With ``--profile``
(a latency profile of the first backend listed), the latency predictor's speedup of each plan is printed beside
(predicted teacher / predicted plan) with its error against the measured speedup.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import torch

from autocompress.compress import apply, discover_layers
from autocompress.evaluate.size import compressed_size
from autocompress.latency.predictor import LatencyPredictor
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.runtime import TimingSpec

sys.path.insert(0, str(Path(__file__).resolve().parent))
from zoo import load_model, time_plans  # noqa: E402  (built-in task names with options after @; shared timing)

RATIOS = (0.75, 0.5, 0.375, 0.25)
MULTIPLES = (1, 8, 16)


def plans(task) -> dict[str, CompressionPlan]:
    infos = discover_layers(task.model, task.example_input)
    out = {"teacher": CompressionPlan()}
    for ratio in RATIOS:
        for depth in (1.0, 0.5):
            for m in MULTIPLES:
                layers = {i.name: LayerPlan(channel_keep=ratio) for i in infos if not i.is_output}
                out[f"keep{ratio:g}/d{depth:g}/m{m}"] = CompressionPlan(
                    layers=layers, student=StudentPlan(depth=depth, channel_multiple=m))
    return out


def run(model: str, backend: str, spec: TimingSpec, profile: str | None) -> dict[str, object]:
    task = load_model(model)
    todo = plans(task)
    sizes = {name: compressed_size(apply(task.model, plan, task.example_input))[0] for name, plan in todo.items()}
    timings, seconds = time_plans(task, todo, backend=backend, spec=spec)
    base = timings["teacher"].normalized
    rows = {name: {"ms": timings[name].latency_ms, "speedup": base / timings[name].normalized,
                   "size_bytes": sizes[name]} for name in todo}
    print(f"\n{model} on {backend} (timed in {seconds:.0f} s; teacher {rows['teacher']['ms']:.3f} ms)")
    print(f"{'kept share / depth':20s}" + "".join(f"{'x' + str(m):>16s}" for m in MULTIPLES)
          + "   (speedup vs teacher, ms)")
    for ratio in RATIOS:
        for depth in (1.0, 0.5):
            cells = [rows[f"keep{ratio:g}/d{depth:g}/m{m}"] for m in MULTIPLES]
            print(f"keep {ratio:<6g} depth {depth:<4g}" + "".join(f"{c['speedup']:>8.2f}x {c['ms']:.3f}"
                                                                 for c in cells), flush=True)
    if profile:
        predictor = LatencyPredictor(task.model, task.example_input, profile, backend=backend)
        teacher_ms = predictor.predict(todo["teacher"])
        errors = []
        for name, plan in todo.items():
            rows[name]["predicted_speedup"] = teacher_ms / predictor.predict(plan)
            errors.append(rows[name]["predicted_speedup"] / rows[name]["speedup"] - 1)
        print("predicted speedup (error vs measured): " + ", ".join(
            f"{name} {rows[name]['predicted_speedup']:.2f}x ({e:+.0%})" for name, e in zip(todo, errors, strict=True)
            if name.endswith(("m1", "m16"))))
        print(f"prediction error of the speedup over all plans: mean {sum(errors) / len(errors):+.1%}, "
              f"largest {max(errors, key=abs):+.1%}")
    gain = [rows[f"keep{r:g}/d{d:g}/m16"]["speedup"] / rows[f"keep{r:g}/d{d:g}/m1"]["speedup"]
            for r in RATIOS for d in (1.0, 0.5)]
    print(f"multiple 16 vs exact counts: {min(gain):.2f}x .. {max(gain):.2f}x faster (geometric mean "
          f"{float(torch.tensor(gain).log().mean().exp()):.2f}x)")
    return {"plans": rows, "timing_seconds": seconds}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="mnist-mobilenetv2@size=96,mnist-resnet18")
    ap.add_argument("--backends", default="onnxruntime,openvino")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--runs", type=int, default=200)
    ap.add_argument("--out", default="benchmarks/results/channel_alignment.json")
    ap.add_argument("--profile", default=None, help="also print the latency predictor's speedups (first backend)")
    args = ap.parse_args()
    torch.set_num_threads(2)
    spec = TimingSpec(threads=1, warmup=20, runs=args.runs, rounds=args.rounds)
    out: dict[str, object] = {"machine": {"cpu": platform.processor() or platform.machine(),
                                          "capability": torch.backends.cpu.get_cpu_capability()},
                              "spec": {"threads": 1, "runs": args.runs, "rounds": args.rounds}, "results": {}}
    for i, backend in enumerate(args.backends.split(",")):
        for model in args.models.split(","):
            out["results"].setdefault(backend, {})[model] = run(  # type: ignore[index]
                model, backend, spec, args.profile if i == 0 else None)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
