"""Rerun every benchmark behind benchmarks/RESULTS.md, one after another, each with its log in benchmarks/out/.

    .venv/bin/python benchmarks/run_all.py            # the full runs, with RESULTS.md's commands (hours on 2 cores)
    .venv/bin/python benchmarks/run_all.py --quick    # every benchmark in a small mode (about 15 min on 2 cores)
    .venv/bin/python benchmarks/run_all.py --only search_quality,mixed_precision [--quick]
    .venv/bin/python benchmarks/run_all.py --list

Benchmarks run one at a time with OMP_NUM_THREADS=1 (latency figures are disturbed by anything sharing the cores).
A failing benchmark is reported and the next one still runs; the exit code is 1 if any failed. Quick-mode
figures are smoke checks of the scripts, not the recorded results: RESULTS.md always gives the full command.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "benchmarks" / "out"
PROFILE = "benchmarks/out/latency_profile.json"
QUICK_PROFILE = "benchmarks/out/latency_profile.quick.json"

# name -> (full command, quick command); each a list of argv lists run in order. latency_predictor comes first:
# it writes the profile search_quality predicts latency from.
ZOO_MODELS = ("mnist-resnet18,mnist-mobilenetv2,"
              "hf-classifier@folder=examples/hf/models/bert-bytes;data=examples.hf.data:classifier_splits,"
              "hf-causal-lm@folder=examples/hf/models/gpt2-bytes;data=examples.hf.data:lm_splits")
BENCHMARKS: dict[str, tuple[list[list[str]], list[list[str]]]] = {
    "latency_predictor": (
        [["-m", "autocompress", "profile", "-o", PROFILE],
         ["benchmarks/latency_predictor.py", "--profile", PROFILE, "--models-per-family", "20,40",
          "--noise-processes", "8", "--noise-models", "2", "--noise-load"]],
        [["-m", "autocompress", "profile", "--quick", "-o", QUICK_PROFILE],
         ["benchmarks/latency_predictor.py", "--profile", QUICK_PROFILE, "--models-per-family", "2,1",
          "--families", "lenet5,mlp,resnet18,bert", "--calibrate-plans", "3", "--noise-processes", "2",
          "--noise-models", "1", "--out", "benchmarks/out/latency_predictor.quick.json",
          "--results", "benchmarks/out/latency_predictor.quick_summary.json"]],
    ),
    "reference_noise": (
        [["benchmarks/reference_noise.py", "--rounds", "900"]],
        [["benchmarks/reference_noise.py", "--rounds", "30", "--out", "benchmarks/out/reference_noise.quick.json"]],
    ),
    "predict_time": (
        [["benchmarks/predict_time.py", "--profile", PROFILE, "--out", "benchmarks/results/predict_time.json"]],
        [["benchmarks/predict_time.py", "--profile", QUICK_PROFILE, "--families", "resnet18,bert", "--plans", "5",
          "--warmup", "2", "--out", "benchmarks/out/predict_time.quick.json"]],
    ),
    # (benchmarks/predict_ab.py compares this checkout against another one: run by hand, see RESULTS.md)
    "predictor_memory": (
        [["benchmarks/predictor_memory.py", "--profile", PROFILE]],
        [["benchmarks/predictor_memory.py", "--profile", QUICK_PROFILE, "--family", "bert", "--plans", "20"]],
    ),
    "channel_alignment": (
        [["benchmarks/channel_alignment.py"]],
        [["benchmarks/channel_alignment.py", "--models", "mnist-resnet", "--backends", "onnxruntime", "--rounds", "2",
          "--runs", "20", "--out", "benchmarks/out/channel_alignment.quick.json"]]),
    "runtime": (
        [["benchmarks/runtime.py"]],
        [["benchmarks/runtime.py", "--quick", "--out", "benchmarks/out/runtime.quick.json"]]),
    "openvino_precision": (
        [["benchmarks/openvino_precision.py"]],
        [["benchmarks/openvino_precision.py", "--rounds", "2", "--runs", "50"]]),
    "batchnorm_policy": (
        [["benchmarks/batchnorm_policy.py"]],
        [["benchmarks/batchnorm_policy.py", "--plans", "2", "--steps", "50"]]),
    "zoo": (
        [["examples/hf/make_models.py"],
         ["benchmarks/zoo.py", "--models", ZOO_MODELS],
         ["benchmarks/zoo.py", "--models", "mnist-mobilenetv2@size=96", "--steps", "100",
          "--out", "benchmarks/results/zoo_96px.json"]],
        [["benchmarks/zoo.py", "--models", "mnist-resnet", "--plans", "5", "--trials", "3", "--steps", "20",
          "--out", "benchmarks/out/zoo.quick.json"]]),
    "heads": (
        [["examples/hf/make_models.py"], ["benchmarks/heads.py", "--profile", PROFILE]],
        [["benchmarks/heads.py", "--profile", QUICK_PROFILE, "--steps", "20", "--out", "benchmarks/out/heads.quick.json"]]),
    "search_scale": (
        [["examples/hf/make_models.py"],
         ["benchmarks/search_scale.py", "--models",
          "mnist-resnet18,mnist-mobilenetv2,hf-classifier@folder=examples/hf/models/bert-bytes;"
          "data=examples.hf.data:classifier_splits", "--trials", "60", "--seeds", "0"]],
        [["benchmarks/search_scale.py", "--models", "mnist-resnet", "--trials", "4", "--arms", "new,previous,knapsack",
          "--out", "benchmarks/out/search_scale.quick.json"]]),
    "quickstart": (
        [["benchmarks/quickstart.py"]],
        [["benchmarks/quickstart.py", "--config", "studies/digits-smoke.yaml", "--min-ratio", "1"]],
    ),
    "proxy_fidelity": (
        [["benchmarks/proxy_fidelity.py"]],
        [["benchmarks/proxy_fidelity.py", "--tasks", "digits-mlp", "--plans", "8", "--short-steps", "50",
          "--full-steps", "300"]],
    ),
    "search_quality": (
        [["benchmarks/search_quality.py", "--budgets", "50,100", "--seeds", "0,1,2", "--latency-profile", PROFILE,
          "--strategies", "default,random,uniform-grid,sparsity-only,bits-only,nsga2,gp"]],
        [["benchmarks/search_quality.py", "--quick", "--latency-profile", QUICK_PROFILE,
          "--results", "benchmarks/out/search_quality.quick.jsonl"]],
    ),
    "deep_compression": (
        [["benchmarks/deep_compression.py"]],
        [["benchmarks/deep_compression.py", "--quick"]],
    ),
    "mixed_precision": (
        [["benchmarks/mixed_precision.py", "--config", "studies/quickstart.yaml"],
         ["benchmarks/mixed_precision.py", "--config", "studies/mnist-resnet.yaml"]],
        [["benchmarks/mixed_precision.py", "--quick"]],
    ),
    "export": (
        [["benchmarks/export.py", "--keep"]],
        [["benchmarks/export.py", "--config", "studies/digits-smoke.yaml", "--n-trials", "8", "--repeat", "1",
          "--rounds", "2", "--finetune", "search"]],
    ),
    "dashboard": (
        [["benchmarks/dashboard.py", "--runs", "5"]],
        [["benchmarks/dashboard.py", "--trials", "1000", "--runs", "1"]],
    ),
    "faults": (
        [["benchmarks/faults.py"]],
        [["benchmarks/faults.py", "--kills", "3", "--workers", "2", "--trials", "16", "--restarts", "2"]],
    ),
    "scaling": (
        [["benchmarks/scaling.py"]],
        [["benchmarks/scaling.py", "--trials", "8"]],
    ),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small modes (smoke checks, about 15 min in all)")
    ap.add_argument("--only", default=None, help=f"comma-separated subset of: {', '.join(BENCHMARKS)}")
    ap.add_argument("--list", action="store_true", help="print the commands and exit")
    args = ap.parse_args()
    names = list(BENCHMARKS) if args.only is None else args.only.split(",")
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    OUT.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    mode = "quick" if args.quick else "full"
    summary = []
    for name in names:
        commands = BENCHMARKS[name][1 if args.quick else 0]
        if args.list:
            for argv in commands:
                print(f"{name:<18} OMP_NUM_THREADS=1 .venv/bin/python {shlex.join(argv)}")
            continue
        log_path = OUT / f"{name}.{mode}.log"
        t0 = time.perf_counter()
        rc = 0
        with log_path.open("w") as log:
            for argv in commands:
                log.write(f"$ python {shlex.join(argv)}\n")
                log.flush()
                rc = subprocess.call([sys.executable, *argv], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
                if rc:
                    break
        wall = time.perf_counter() - t0
        summary.append((name, rc, wall))
        print(f"{name:<18} {'ok' if rc == 0 else f'FAILED (exit {rc})':<16} {wall:7.0f} s   log: "
              f"{log_path.relative_to(ROOT)}", flush=True)
    if summary:
        total = sum(w for _, _, w in summary)
        failed = [n for n, rc, _ in summary if rc]
        print(f"\n{len(summary)} benchmark(s), {total / 60:.1f} min; "
              + (f"failed: {', '.join(failed)}" if failed else "all finished"))
        return 1 if failed else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
