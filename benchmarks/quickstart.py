"""Quick-start study: wall time, and whether its front has a member >=10x smaller within 1 point of the teacher.

    .venv/bin/python benchmarks/quickstart.py [--config studies/quickstart.yaml] [--keep]

Runs the study from scratch in a temporary results folder (the config's own folder is untouched) and prints the
figures recorded in benchmarks/RESULTS.md. Accuracy used for the check is validation (what the search selects
on); test accuracy is printed beside it.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import tempfile
import time
from pathlib import Path

import yaml

from autocompress.config import load_study_config
from autocompress.search.driver import run_study


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="studies/quickstart.yaml")
    ap.add_argument("--min-ratio", type=float, default=10.0)
    ap.add_argument("--max-drop", type=float, default=0.01, help="accuracy drop allowed (0.01 = 1 point)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary results folder")
    args = ap.parse_args()

    src = Path(args.config).resolve()
    tmp = Path(tempfile.mkdtemp(prefix="autocompress-bench-"))
    cfg = yaml.safe_load(src.read_text())
    space = cfg["search_space"]
    if isinstance(space, str):
        cfg["search_space"] = str((src.parent / space).resolve())
    config = tmp / src.name
    config.write_text(yaml.safe_dump(cfg))
    loaded = load_study_config(config)

    start = time.perf_counter()
    outcome = run_study(loaded, progress=True)
    wall = time.perf_counter() - start
    front, teacher = outcome.front, outcome.front.teacher
    print(f"\nmachine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    stopped = int((front.failed["state"] == "PRUNED").sum())
    print(f"study: {src} ({len(front.trials)} completed, {stopped} stopped by the fidelity ladder, "
          f"{len(front.failed) - stopped} failed) in {wall:.0f} s wall "
          "(includes teacher training on first use)")
    print(f"teacher: val {teacher['accuracy']:.4f}, test {teacher['test_accuracy']:.4f}, "
          f"{teacher['size_bytes']} B, {teacher['latency_ms']:.4f} ms")
    print(f"front: {len(front.front)} members, hypervolume {front.hypervolume:.4f}")
    check = (front.fidelity_summary or {}).get("self_check", {})
    tau = check.get("kendall_tau")
    print(f"short level: learning rate {front.short_lr.get('chosen') or 'lr (no range test)'}; self-check Kendall "
          f"tau {'-' if tau is None else f'{tau:.2f}'} on {check.get('n', 0)} candidates")
    print(front.table())
    f = front.front
    ok = f[(f["compression_ratio"] >= args.min_ratio) & (f["accuracy"] >= teacher["accuracy"] - args.max_drop)]
    if ok.empty:
        print(f"\nNO front member is >= {args.min_ratio:g}x smaller within {args.max_drop * 100:g} point(s) "
              "(validation) of the teacher")
    else:
        best = ok.sort_values("compression_ratio", ascending=False).iloc[0]
        print(f"\nbest member >= {args.min_ratio:g}x within {args.max_drop * 100:g} point(s): trial {best['trial']}, "
              f"{best['compression_ratio']:.1f}x smaller ({best['size_bytes']} B), val {best['accuracy']:.4f} "
              f"(teacher {teacher['accuracy']:.4f}), test {best['test_accuracy']:.4f} "
              f"(teacher {teacher['test_accuracy']:.4f}), latency {best['latency_ms']:.4f} ms")
    if args.keep:
        print(f"results kept in {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
