"""Deep Compression, found automatically: LeNet-300-100 and LeNet-5 on the MNIST subset.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/deep_compression.py [--quick] [--tasks mnist-lenet300,mnist-lenet5]
        [--timeout-s 1200] [--trials 400] [--steps 1200] [--out benchmarks/out/deep_compression]

Han et al. (ICLR 2016, Table 1) hand-tune pruning, k-means weight sharing and Huffman coding: LeNet-300-100
1070 KB -> 27 KB (40x), top-1 error 1.64 % -> 1.58 %; LeNet-5 1720 KB -> 44 KB (39x), 0.80 % -> 0.74 % (full MNIST,
Caffe models). Here autocompress searches ``search_spaces/deep_compression.yaml`` (per-layer sparsity, bits of a
k-means codebook, Huffman-coded storage) with objectives (validation accuracy, exact stored bytes), every trial
fine-tuned with distillation at full fidelity (no promotion ladder, so the exported model is the trial's model).

Selection uses validation only: the most compressed front member whose validation error is at most the
teacher's + 0.1 point. Its test error is then reported, with whether the test criterion (test error <= teacher's
test error + 0.1 point) holds. The most compressed member meeting the test criterion is reported too, flagged as
chosen with test data. Each pick is exported with the project's exporter (``export_from_study``: fine-tuned
again from the trial's seed, packed, lowered, loaded and measured); its ratio is fp32 dense bytes / the size of
the exported ``weights.bin``. Results: ``<out>/<mode>/results.json`` and a table on stdout.

``--quick``: LeNet-300 only, 8 trials of 150 steps (under a minute of search). ``--workers 2`` runs a second
``autocompress search`` process on the same study (both cores); ``--resume`` continues an earlier run's study.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import optuna
import yaml

from autocompress.config import load_study_config
from autocompress.export.artifact import export_from_study
from autocompress.front import load_front
from autocompress.search.driver import run_study
from autocompress.tasks import load_task

ROOT = Path(__file__).resolve().parents[1]
SPACE = ROOT / "search_spaces" / "deep_compression.yaml"
PAPER = {"mnist-lenet300": "Han et al.: 1070 KB -> 27 KB (40x), error 1.64 % -> 1.58 %",
         "mnist-lenet5": "Han et al.: 1720 KB -> 44 KB (39x), error 0.80 % -> 0.74 %"}
TOLERANCE = 0.001  # 0.1 point of error
# KD fine-tuning per trial (full mode), chosen on a probe plan before the search: LeNet-5 reaches a higher
# validation accuracy with a larger learning rate and more steps
FINETUNE = {"mnist-lenet300": {"steps": 1200, "lr": 1e-3}, "mnist-lenet5": {"steps": 1500, "lr": 3e-3}}


def study_config(task: str, *, trials: int, timeout_s: float | None, steps: int, lr: float, seed: int) -> dict:
    return {
        "name": f"deep-compression-{task}",
        "task": task,
        "search_space": str(SPACE),
        "objectives": {"accuracy": "maximize", "size_bytes": "minimize"},
        "sampler": "nsga2",
        "population_size": 16,
        "n_trials": trials,
        "timeout_s": timeout_s,
        "seed": seed,
        "warm_start": True,
        "deployability_gate": False,  # the picks are exported (and loaded, and measured) below
        "finetune": {"steps": steps, "full_steps": steps, "batch_size": 64, "lr": lr},
        "fidelity": {"proxy": "full", "promotion": False, "self_check": 0},
        # latency is not an objective here; measured cheaply (never predicted from a profile)
        "latency": {"measure": True, "warmup": 1, "repeats": 3},
    }


def _pick(front, column: str, threshold: float):
    ok = front[front[column] >= threshold - 1e-9]
    return None if ok.empty else ok.sort_values(["size_bytes", column], ascending=[True, False]).iloc[0]


def run_task(name: str, args, folder: Path) -> dict:
    ft = FINETUNE.get(name, {"steps": 1200, "lr": 1e-3})
    steps = args.steps or (150 if args.quick else ft["steps"])
    cfg = study_config(name, trials=args.trials, timeout_s=args.timeout_s, steps=steps, lr=args.lr or ft["lr"],
                       seed=args.seed)
    path = folder / f"{name}.yaml"
    study_dir = folder / name
    previous_wall, previous = 0.0, folder / f"{name}.json"
    if args.resume and previous.is_file():  # continue the study: wall times add up, n_trials is the total
        previous_wall = float(json.loads(previous.read_text())["search_wall_s"])
    else:
        shutil.rmtree(study_dir, ignore_errors=True)  # a fresh study: the wall time is the search's
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    loaded = load_study_config(path)
    task = load_task(name)
    t0 = time.perf_counter()
    # extra workers: `autocompress search` processes on the same study storage (they share n_trials); started
    # once this process has created the study, measured the teacher and queued the warm start
    workers = [subprocess.Popen(["bash", "-c", f"sleep 20; exec {sys.executable} -m autocompress search "
                                 f"{shlex.quote(str(path))} --no-progress"], stdout=subprocess.DEVNULL)
               for _ in range(args.workers - 1)]
    run_study(loaded, progress=not args.no_progress, task=task)
    for w in workers:
        w.wait()
    wall = time.perf_counter() - t0 + previous_wall
    front = load_front(loaded.storage_url, loaded.study_name)
    teacher = front.teacher
    members = front.front
    t_val, t_test = float(teacher["accuracy"]), float(teacher["test_accuracy"])
    by_val = _pick(members, "accuracy", t_val - TOLERANCE)
    by_test = _pick(members, "test_accuracy", t_test - TOLERANCE)
    result = {
        "task": name, "paper": PAPER[name], "teacher_val_accuracy": t_val, "teacher_test_accuracy": t_test,
        "teacher_bytes": int(teacher["size_bytes"]), "val_split": len(task.val), "test_split": len(task.test),
        "search_wall_s": round(wall, 1), "workers": args.workers, "trials_complete": int(len(front.trials)),
        "trials_failed": int(len(front.failed)), "config": cfg,
        "front": members[["trial", "accuracy", "test_accuracy", "size_bytes", "compression_ratio",
                          "plan_summary"]].to_dict("records"),
        "picks": {},
    }
    exported: dict[int, dict] = {}
    for label, row in (("validation", by_val), ("test (chosen with test data)", by_test)):
        if row is None:
            result["picks"][label] = None
            continue
        number = int(row["trial"])
        if number not in exported:
            out = folder / "exports" / f"{name}-trial{number}"
            t1 = time.perf_counter()
            res = export_from_study(str(path), out, trial=number, finetune="full", force=True, task=task,
                                    rounds=1, measure=True)
            card = res.card
            size, acc = card["metrics"]["size"], card["metrics"]["accuracy"]
            weights = (out / "weights.bin").stat().st_size
            exported[number] = {
                "trial": number, "plan": card["plan_summary"], "search_val_accuracy": float(row["accuracy"]),
                "search_test_accuracy": float(row["test_accuracy"]), "search_size_bytes": int(row["size_bytes"]),
                "export_val_accuracy": acc["torch_val"], "export_test_accuracy": acc["torch_test"],
                "onnx_test_accuracy": acc["onnx_test"], "weights_bin_bytes": weights,
                "weights_json_bytes": (out / "weights.json").stat().st_size,
                "objective_bytes": size["objective_bytes"], "ratio": result["teacher_bytes"] / weights,
                "storage": {k: v["storage"] for k, v in card["layers"].items()},
                "export_path": str(out), "export_s": round(time.perf_counter() - t1, 1),
            }
        e = dict(exported[number])
        e["val_criterion"] = 1 - e["export_val_accuracy"] <= 1 - t_val + TOLERANCE + 1e-9
        e["test_criterion"] = 1 - e["export_test_accuracy"] <= 1 - t_test + TOLERANCE + 1e-9
        result["picks"][label] = e
    return result


def table(results: list[dict]) -> str:
    head = ("| task | teacher val / test acc | pick | trial | ratio (weights.bin) | KB | val err | test err "
            "(teacher) | test criterion | search wall | trials |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        for label, p in r["picks"].items():
            if p is None:
                lines.append(f"| {r['task']} | {r['teacher_val_accuracy']:.3f} / {r['teacher_test_accuracy']:.3f} "
                             f"| {label} | none meets it | | | | | | {r['search_wall_s']:.0f} s | "
                             f"{r['trials_complete']} |")
                continue
            lines.append(
                f"| {r['task']} | {r['teacher_val_accuracy']:.3f} / {r['teacher_test_accuracy']:.3f} | {label} | "
                f"{p['trial']} | {p['ratio']:.1f}x | {p['weights_bin_bytes'] / 1000:.2f} | "
                f"{100 * (1 - p['export_val_accuracy']):.1f} % | {100 * (1 - p['export_test_accuracy']):.1f} % "
                f"({100 * (1 - r['teacher_test_accuracy']):.1f} %) | {'holds' if p['test_criterion'] else 'fails'} | "
                f"{r['search_wall_s']:.0f} s | {r['trials_complete']} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--tasks", default=None, help="comma-separated (default: both; --quick: mnist-lenet300)")
    ap.add_argument("--trials", type=int, default=None, help="trial budget (default 400; --quick 8)")
    ap.add_argument("--timeout-s", type=float, default=None, help="search wall-clock budget per task "
                    "(default 1200; --quick none)")
    ap.add_argument("--steps", type=int, default=None, help="KD fine-tuning steps per trial (default: "
                    "FINETUNE per task; --quick 150)")
    ap.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: FINETUNE per task)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "out" / "deep_compression"))
    ap.add_argument("--no-progress", action="store_true")
    ap.add_argument("--workers", type=int, default=1, help="processes searching the study together (each "
                    "one trial at a time; set OMP_NUM_THREADS=1)")
    ap.add_argument("--resume", action="store_true", help="continue the study of an earlier run (same --out and "
                    "mode) up to --trials in total or --timeout-s more; the reported wall time is the sum")
    args = ap.parse_args()
    mode = "quick" if args.quick else "full"
    tasks = (args.tasks or ("mnist-lenet300" if args.quick else "mnist-lenet300,mnist-lenet5")).split(",")
    args.trials = args.trials or (8 if args.quick else 400)
    if args.timeout_s is None and not args.quick:
        args.timeout_s = 1200.0
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    folder = Path(args.out) / mode
    folder.mkdir(parents=True, exist_ok=True)
    results = []
    for name in tasks:
        r = run_task(name, args, folder)
        results.append(r)
        (folder / f"{name}.json").write_text(json.dumps(r, indent=1, default=str))
    print(f"\nDeep Compression benchmark ({mode}): test split {results[0]['test_split']} images, "
          f"validation {results[0]['val_split']}; 0.1 point = {TOLERANCE * results[0]['test_split']:g} test image(s)")
    print(table(results))
    for r in results:
        print(f"{r['task']}: {r['paper']}")
        for label, p in r["picks"].items():
            if p:
                print(f"  {label}: trial {p['trial']} {p['plan']}\n    storage {p['storage']}; weights.bin "
                      f"{p['weights_bin_bytes']} B (size objective {p['objective_bytes']} B, index weights.json "
                      f"{p['weights_json_bytes']} B); search val/test acc {p['search_val_accuracy']:.3f}/"
                      f"{p['search_test_accuracy']:.3f}, export {p['export_val_accuracy']:.3f}/"
                      f"{p['export_test_accuracy']:.3f}")


if __name__ == "__main__":
    main()
