"""Does longer fine-tuning help? Re-train chosen trials of a finished study with other step counts.

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/finetune_steps.py CONFIG --trials 62,40 [--steps 1500,3000]

CONFIG is the study's config (the deep-compression benchmark writes one per task, e.g.
``benchmarks/out/deep_compression/full/mnist-lenet5.yaml``). Each trial's plan is applied to the teacher again and
fine-tuned from scratch for each step count, with the study's learning rate and batch size and the trial's own
seed (``seed + trial number``, as the search does); prints validation and test accuracy and the compression ratio
(fp32 bytes / stored bytes) for each.
"""

from __future__ import annotations

import argparse
import time

from autocompress.config import load_study_config
from autocompress.evaluate.candidate import Candidate
from autocompress.plan import CompressionPlan
from autocompress.search.driver import open_study
from autocompress.tasks import load_task


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("config", help="the study's config (YAML)")
    ap.add_argument("--trials", required=True, help="comma-separated trial numbers")
    ap.add_argument("--steps", default="1500,3000", help="comma-separated fine-tuning step counts")
    args = ap.parse_args(argv)
    try:
        numbers = [int(t) for t in args.trials.split(",")]
        step_counts = [int(s) for s in args.steps.split(",")]
    except ValueError:
        ap.error(f"--trials and --steps take comma-separated whole numbers, got {args.trials!r} / {args.steps!r}")
    loaded = load_study_config(args.config)
    cfg = loaded.config
    study = open_study(loaded, create=False)
    plans = {}
    for number in numbers:
        if not 0 <= number < len(study.trials) or "plan" not in study.trials[number].user_attrs:
            ap.error(f"--trials: study {loaded.study_name!r} has no trial {number} with a plan "
                     f"({len(study.trials)} trials)")
        plans[number] = CompressionPlan.from_dict(study.trials[number].user_attrs["plan"])
    task = load_task(cfg.task, cfg.task_options)
    teacher_bytes = study.user_attrs["teacher"]["size_bytes"]
    print(f"{'trial':>5} {'steps':>6} {'val':>6} {'test':>6} {'ratio':>7} {'seconds':>7}")
    for number, plan in plans.items():
        for steps in step_counts:
            t0 = time.perf_counter()
            ft = cfg.finetune.model_copy(update={"steps": steps, "full_steps": steps})
            cand = Candidate(task, plan, ft, seed=cfg.seed + number)
            cand.train_to(steps)
            val, test = cand.accuracy("val"), cand.accuracy("test")
            print(f"{number:>5} {steps:>6} {val:>6.3f} {test if test is None else f'{test:.3f}':>6} "
                  f"{teacher_bytes / cand.size_bytes():>6.1f}x {time.perf_counter() - t0:>7.0f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
