"""Export picks from quick-start studies and measure them: accuracy, ONNX Runtime latency vs the fp32 teacher,
size on disk, and measured vs search-time ("predicted") latency.

    .venv/bin/python benchmarks/export.py [--config studies/quickstart.yaml studies/mnist-resnet.yaml]
                                          [--repeat 3] [--rounds 5] [--finetune full] [--keep]

For each config the study is run from scratch in a temporary results folder (the config's own folder is
untouched), then each pick is exported with ``autocompress.export`` (full fine-tune, int8/int4 lowering, packed
weights) and its latency re-measured ``--repeat`` times (each time ``--rounds`` interleaved rounds, teacher vs
export, same threads and batch as the study) to show the spread. Picks per study:

  fastest-1pt   fastest front member within 1 point (validation, search-time) of the teacher
  smallest-1pt  smallest front member within 1 point
  fastest-3pt   fastest front member within 3 points (search-time accuracy is after a short fine-tune only;
                the export's full fine-tune may win some of it back)
  best-3x       most accurate front member at least 3x faster than the teacher (search-time latency)
A trial chosen by several picks is exported once.

Accuracy before/after is on the test split (never used for selection). Prints the figures recorded in
benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import torch
import yaml

from autocompress.config import load_study_config
from autocompress.errors import AutocompressError
from autocompress.evaluate.candidate import Candidate
from autocompress.export.artifact import export_from_study
from autocompress.latency.study import candidate_latency
from autocompress.runtime import TimingSpec, backend_for
from autocompress.runtime.onnx import export_onnx
from autocompress.search.driver import run_study
from autocompress.tasks import load_task

PICKS = {"fastest-1pt": ("latency_ms", 0.01), "smallest-1pt": ("size_bytes", 0.01), "fastest-3pt": ("latency_ms", 0.03),
         "best-3x": ("accuracy", None)}


def _copy_config(src: Path, folder: Path, n_trials: int | None) -> Path:
    cfg = yaml.safe_load(src.read_text())
    if isinstance(cfg["search_space"], str):
        cfg["search_space"] = str((src.parent / cfg["search_space"]).resolve())
    if n_trials:
        cfg["n_trials"] = n_trials
    path = folder / src.name
    path.write_text(yaml.safe_dump(cfg))
    return path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", nargs="+", default=["studies/quickstart.yaml", "studies/mnist-resnet.yaml"])
    ap.add_argument("--n-trials", type=int, default=None, help="override the configs' n_trials")
    ap.add_argument("--picks", default=",".join(PICKS), help=f"comma-separated, from {list(PICKS)}")
    ap.add_argument("--finetune", default="full", help="full | search | none | a step count")
    ap.add_argument("--rounds", type=int, default=5, help="interleaved latency rounds per measurement")
    ap.add_argument("--repeat", type=int, default=3, help="latency measurements per export (spread)")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="PyTorch threads for training (default 1: on shared cores 2 threads ran 5x slower)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary studies and exports")
    args = ap.parse_args()
    torch.set_num_threads(args.torch_threads)
    finetune: str | int = int(args.finetune) if args.finetune.isdigit() else args.finetune

    tmp = Path(tempfile.mkdtemp(prefix="autocompress-bench-export-"))
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, python {platform.python_version()}; "
          f"other processes may share the cores: latency is repeated (--repeat {args.repeat}) to show the spread")
    rows = []
    for config in args.config:
        src = Path(config).resolve()
        path = _copy_config(src, tmp, args.n_trials)
        loaded = load_study_config(path)
        task = load_task(loaded.config.task, loaded.config.task_options)
        start = time.perf_counter()
        outcome = run_study(loaded, progress=True, task=task)
        front, teacher = outcome.front, outcome.front.teacher
        print(f"\n== {src.name}: task {loaded.config.task}, {len(front.trials)} completed trials, "
              f"{len(front.front)} on the front, study {time.perf_counter() - start:.0f} s ==")
        print(front.table())
        chosen: dict[int, list[tuple[str, str, str]]] = {}
        for pick in args.picks.split(","):
            by, drop = PICKS[pick]
            expr = (f"accuracy >= {teacher['accuracy'] - drop:.6f}" if drop is not None
                    else f"latency_ms <= {teacher['latency_ms'] / 3:.6f}")
            try:
                number = int(front.pick(expr, by=by)["trial"])
            except AutocompressError as e:
                print(f"\n{pick}: {e}")
                continue
            chosen.setdefault(number, []).append((pick, expr, by))
        for number, picks in chosen.items():
            pick, expr, by = picks[0]
            label = "+".join(p for p, _, _ in picks)
            out = tmp / "exports" / f"{src.stem}-trial{number}"
            t0 = time.perf_counter()
            res = export_from_study(str(path), out, pick=expr, by=by, finetune=finetune, task=task,
                                    rounds=args.rounds)
            export_s = time.perf_counter() - t0
            card = res.card
            lat_cfg = loaded.config.latency
            teacher_onnx = tmp / f"{src.stem}-teacher.onnx"
            if not teacher_onnx.exists():

                export_onnx(task.model, task.example_input, teacher_onnx)
            meas = [card["metrics"]["latency"]]
            for _ in range(args.repeat - 1):
                got = backend_for(lat_cfg).time({"teacher": teacher_onnx, "export": out / "model.onnx"},
                                                task.example_input,
                                                TimingSpec.of(lat_cfg, rounds=args.rounds, min_runs=200))
                meas.append({"teacher_ms": got["teacher"].latency_ms, "export_ms": got["export"].latency_ms,
                             "speedup": got["teacher"].latency_ms / got["export"].latency_ms})
            # the search's own latency code on the same plan, now: separates lowering differences from noise
            cand = Candidate(task, front.plans[number], loaded.config.finetune, seed=loaded.config.seed + number)
            search_cfg = lat_cfg.model_copy(update={"repeats": max(lat_cfg.repeats, 200)})
            search_now = [candidate_latency(cand, search_cfg).latency_ms for _ in range(args.repeat)]
            rows.append({"study": src.stem, "pick": label, "card": card, "meas": meas, "export_s": export_s,
                         "path": out, "search_now": search_now})
            _print_pick(rows[-1])
    print("\n== summary ==")
    print("study          pick                      trial  test acc teacher->export(onnx)  speedup (min-max)     "
          "export ms  predicted ms  meas/pred  weights.bin ratio  onnx ratio")
    for r in rows:
        c, m = r["card"], r["card"]["metrics"]
        sp = [x["speedup"] for x in r["meas"]]
        ex = [x["export_ms"] for x in r["meas"]]
        pred = m["latency"]["predicted_ms"]
        print(f"{r['study']:<14} {r['pick']:<25} {c['source']['trial']:>5}  "
              f"{m['accuracy']['teacher_test']:.4f} -> {m['accuracy']['torch_test']:.4f} "
              f"({m['accuracy']['onnx_test']:.4f})   {statistics.median(sp):5.2f}x ({min(sp):.2f}-{max(sp):.2f})   "
              f"{statistics.median(ex):.4f}     {pred:.4f}      {statistics.median(ex) / pred:5.2f}      "
              f"{m['size']['weights_bin_ratio']:6.1f}x          {m['size']['onnx_ratio']:5.1f}x")
    if args.keep:
        print(f"\nstudies and exports kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def _print_pick(r: dict) -> None:
    c = r["card"]
    m, src, low = c["metrics"], c["source"], c["lowering"]
    acc, size = m["accuracy"], m["size"]
    sp = [x["speedup"] for x in r["meas"]]
    ex = [x["export_ms"] for x in r["meas"]]
    te = [x["teacher_ms"] for x in r["meas"]]
    pred = m["latency"]["predicted_ms"]
    print(f"\n-- {r['study']} / {r['pick']}: trial {src['trial']} (pick {src['pick']!r}, by {src['by']}), "
          f"exported in {r['export_s']:.0f} s ({c['finetune']['steps']} fine-tune steps)")
    print(f"   plan: {c['plan_summary']}")
    print(f"   lowering: int8 {low['int8']}, int4 {low['int4']}, float {low['float']}; runtime ops "
          f"{low['runtime_ops']}")
    print(f"   test accuracy: teacher {acc['teacher_test']:.4f} -> export {acc['torch_test']:.4f} (PyTorch artifact), "
          f"{acc['onnx_test']:.4f} (ONNX Runtime); drop {100 * (acc['teacher_test'] - acc['onnx_test']):+.2f} points "
          f"(ONNX); validation: search {src['search']['accuracy']:.4f}, export {acc['torch_val']:.4f}")
    print(f"   latency ms (ONNX Runtime, {m['latency']['threads']} thread, batch {m['latency']['batch_size']}, "
          f"{len(r['meas'])} measurements x {m['latency']['rounds']} rounds): teacher "
          f"{statistics.median(te):.4f} ({min(te):.4f}-{max(te):.4f}), export {statistics.median(ex):.4f} "
          f"({min(ex):.4f}-{max(ex):.4f}); speedup {statistics.median(sp):.2f}x ({min(sp):.2f}-{max(sp):.2f})")
    now = r["search_now"]
    print(f"   predicted (search-time) {pred:.4f} ms vs measured {statistics.median(ex):.4f} ms: "
          f"{statistics.median(ex) / pred - 1:+.1%}; the search's latency code on this plan now: "
          f"{statistics.median(now):.4f} ms ({min(now):.4f}-{max(now):.4f}), export vs that "
          f"{statistics.median(ex) / statistics.median(now) - 1:+.1%}")
    print(f"   size: objective {size['objective_bytes']} B, weights.bin {size['weights_bin_bytes']} B "
          f"({size['weights_bin_vs_objective']:+.2%}), {size['weights_bin_ratio']:.1f}x smaller than the teacher "
          f"({size['teacher_bytes']} B); model.onnx {size['onnx_bytes']} B vs teacher ONNX "
          f"{size['teacher_onnx_bytes']} B ({size['onnx_ratio']:.1f}x)")


if __name__ == "__main__":
    main()
