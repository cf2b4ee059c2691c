"""Mixed precision vs fixed 8-bit: at equal accuracy, how much smaller and faster is a per-layer bit-width choice?

    .venv/bin/python benchmarks/mixed_precision.py [--config studies/quickstart.yaml] [--n-trials 40]
        [--tolerance 0.005] [--rounds 7] [--quick]

HAQ (Wang et al., CVPR 2019) reports 1.4-1.95x lower latency than fixed 8-bit at equal accuracy on its hardware
(hardware-aware per-layer bit-widths). Here, on this machine's ONNX Runtime CPU backend:

1. A study over bit-widths only (every other knob fixed at the teacher's): per-layer weight bits
   2/3/4/5/6/8/32 and per-layer input bits 8/32 (a layer with <= 8-bit weights and 8-bit inputs runs int8
   QDQ kernels, any other layer float kernels). Its first trial is the fixed 8-bit plan (8-bit weights and
   inputs everywhere), so both are scored by the same search, with the same fine-tuning.
2. Picks from the front whose search-time validation accuracy is within ``--tolerance`` of the fixed 8-bit
   plan's: the smallest and the fastest.
3. The fixed 8-bit plan and each pick are exported (``autocompress.export``: full fine-tune, lowered exactly as
   the search measured them: int8 kernels on, int4 off), their test accuracy measured, their size read off the
   packed weights file, and their latency measured in interleaved rounds (fixed 8-bit, picks and the fp32
   teacher alternate, so machine noise hits them alike).

Prints size and latency reductions vs fixed 8-bit, measured and as the search saw them (predicted when a latency
profile exists, measured otherwise). ``--quick`` runs 16 trials with short fine-tuning (a few minutes).
"""

from __future__ import annotations

import argparse
import copy
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml

from autocompress.compress.layers import discover_layers
from autocompress.config import load_study_config
from autocompress.errors import AutocompressError
from autocompress.export.artifact import export_from_study
from autocompress.runtime import TimingSpec, backend_for
from autocompress.runtime.onnx import export_onnx
from autocompress.search.driver import open_study, run_study
from autocompress.space import SearchSpace
from autocompress.tasks import load_task

WEIGHT_BITS = [2, 3, 4, 5, 6, 8, 32]
ACTIVATION_BITS = [8, 32]


def bits_only_space(space: dict) -> dict:
    """``space`` with every knob fixed at the teacher's except per-layer weight and input bits."""
    space = copy.deepcopy(space)
    for g in space["groups"]:
        g.update(per_layer=True, sparsity=[0.0], channel_keep=[1.0], rank_ratio=[1.0], weight_bits=WEIGHT_BITS,
                 activation_bits=ACTIVATION_BITS)
    space["student"] = {"width": [1.0], "depth": [1.0]}
    return space


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="studies/quickstart.yaml")
    ap.add_argument("--n-trials", type=int, default=40)
    ap.add_argument("--tolerance", type=float, default=0.005, help="accuracy within this of fixed 8-bit (0.5 pt)")
    ap.add_argument("--rounds", type=int, default=7, help="interleaved latency rounds")
    ap.add_argument("--quick", action="store_true", help="16 trials, short fine-tuning")
    ap.add_argument("--keep", action="store_true", help="keep the study and exports")
    args = ap.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    src = Path(args.config).resolve()
    cfg = yaml.safe_load(src.read_text())
    space_path = (src.parent / cfg["search_space"]).resolve() if isinstance(cfg["search_space"], str) else None
    space = yaml.safe_load(space_path.read_text()) if space_path else cfg["search_space"]
    cfg.update(search_space=bits_only_space(space), warm_start=False, n_trials=args.n_trials, name="mixed-precision")
    # every trial at the same fidelity (no successive halving), so trial 0 is always scored like the rest
    cfg["fidelity"] = {**cfg.get("fidelity", {}), "self_check": 0, "promotion": False}
    if args.quick:
        cfg.update(n_trials=16)
        cfg["finetune"] = {**cfg.get("finetune", {}), "steps": 150, "full_steps": 400}
    tmp = Path(tempfile.mkdtemp(prefix="autocompress-mixed-"))
    path = tmp / "mixed.yaml"
    path.write_text(yaml.safe_dump(cfg))
    loaded = load_study_config(path)
    task = load_task(loaded.config.task, loaded.config.task_options)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"task {loaded.config.task}, {loaded.config.n_trials} trials")

    # trial 0: the fixed 8-bit plan
    sp = SearchSpace(loaded.space, discover_layers(task.model, task.example_input))
    fixed8 = sp.uniform_params(weight_bits=8, sparsity=0.0)
    fixed8.update({k: 8 for k in fixed8 if k.endswith(":activation_bits")})
    loaded.study_dir.mkdir(parents=True, exist_ok=True)
    open_study(loaded, create=True).enqueue_trial(fixed8, user_attrs={"warm_start": "fixed 8-bit"})
    t0 = time.perf_counter()
    outcome = run_study(loaded, progress=True, task=task)
    study_s = time.perf_counter() - t0
    front = outcome.front
    trials = front.trials.set_index("trial")
    if 0 not in trials.index:
        raise SystemExit("the fixed 8-bit trial did not complete (stopped by successive halving or failed); "
                         "rerun with fidelity.promotion off")
    ref = trials.loc[0]
    print(f"\nstudy: {len(front.trials)} completed trials in {study_s:.0f} s; fixed 8-bit (trial 0): validation "
          f"{ref['accuracy']:.4f}, {ref['size_bytes']} B, {ref['latency_ms']:.4f} ms (search-time)")
    floor = float(ref["accuracy"]) - args.tolerance
    picks = {"fixed-8bit": 0}
    for label, by in (("smallest", "size_bytes"), ("fastest", "latency_ms")):
        try:
            picks[label] = int(front.pick(f"accuracy >= {floor:.6f}", by=by)["trial"])
        except AutocompressError as e:
            print(f"{label}: {e}")
    exports: dict[str, dict] = {}
    for label, number in picks.items():
        if any(e["trial"] == number for e in exports.values()):
            exports[label] = next(e for e in exports.values() if e["trial"] == number)
            continue
        out = tmp / "exports" / f"trial{number}"
        res = export_from_study(str(path), out, trial=number, task=task, rounds=3)
        exports[label] = {"trial": number, "card": res.card, "onnx": out / "model.onnx"}
    teacher_onnx = tmp / "teacher.onnx"
    export_onnx(task.model, task.example_input, teacher_onnx)
    files = {"teacher": teacher_onnx, **{f"trial{e['trial']}": e["onnx"] for e in exports.values()}}
    cfg = loaded.config.latency
    lat = backend_for(cfg).time(files, task.example_input, TimingSpec.of(cfg, rounds=args.rounds, min_runs=200))

    base = exports["fixed-8bit"]
    base_ms = lat[f"trial{base['trial']}"].latency_ms
    base_bytes = base["card"]["metrics"]["size"]["weights_bin_bytes"]
    base_search = trials.loc[base["trial"]]
    print(f"\nlatency: ONNX Runtime, {loaded.config.latency.threads} thread, batch {loaded.config.latency.batch_size}, "
          f"{args.rounds} interleaved rounds; teacher fp32 {lat['teacher'].latency_ms:.4f} ms")
    print(f"{'pick':<11} {'trial':>5} {'val(search)':>11} {'test':>7} {'weights.bin B':>13} {'size vs 8b':>10} "
          f"{'ms':>8} {'lat vs 8b':>9} {'search ms':>9} {'search vs 8b':>12}  plan")
    for label, e in exports.items():
        m, n = e["card"]["metrics"], e["trial"]
        ms = lat[f"trial{n}"].latency_ms
        size = m["size"]["weights_bin_bytes"]
        row = trials.loc[n]
        print(f"{label:<11} {n:>5} {row['accuracy']:>11.4f} {m['accuracy']['onnx_test']:>7.4f} {size:>13} "
              f"{base_bytes / size:>9.2f}x {ms:>8.4f} {base_ms / ms:>8.2f}x {row['latency_ms']:>9.4f} "
              f"{base_search['latency_ms'] / row['latency_ms']:>11.2f}x  {e['card']['plan_summary']}")
    print("\nint8 kernels per export: " + ", ".join(
        f"{label} {e['card']['lowering']['int8']}" for label, e in exports.items()))
    if args.keep:
        print(f"study and exports kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
