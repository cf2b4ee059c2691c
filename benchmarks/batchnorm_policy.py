"""BatchNorm running statistics while a candidate fine-tunes: kept (the default) or updated by every batch.

    .venv/bin/python benchmarks/batchnorm_policy.py [--task mnist-resnet] [--plans 8] [--steps 400]

Samples ``--plans`` random plans from the default search space (Optuna RandomSampler, seed 3), fine-tunes each
``--steps`` KD steps twice from the same start, once with BatchNorm statistics kept (BatchNorm in eval mode while
training, as autocompress does) and once with them updated by each training batch (plain ``model.train()``), and
prints the validation metric of both. The mean over the plans is what RESULTS.md records.
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import optuna
import torch
from torch import nn

from autocompress.compress import discover_layers
from autocompress.config import FinetuneConfig, load_search_space, resolve_search_space
from autocompress.evaluate.candidate import Candidate
from autocompress.space import SearchSpace
from autocompress.tasks import load_task


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--task", default="mnist-resnet")
    ap.add_argument("--plans", type=int, default=8)
    ap.add_argument("--steps", type=int, default=400)
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = load_task(args.task)
    space = SearchSpace(load_search_space(resolve_search_space("default", Path.cwd())),
                        discover_layers(task.model, task.example_input))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    plans = []
    for _ in range(args.plans):
        trial = study.ask()
        plans.append(space.suggest(trial))
        study.tell(trial, 0.0)
    cfg = FinetuneConfig(student_steps=0)  # every candidate from the teacher: the policy is what is compared
    kept_eval = nn.modules.batchnorm._BatchNorm.eval
    results: dict[str, list[float]] = {"kept": [], "updated": []}
    for mode in results:
        # "updated": the fine-tune loop's switch of BatchNorm to eval mode does nothing
        nn.modules.batchnorm._BatchNorm.eval = kept_eval if mode == "kept" else (lambda self: self)
        try:
            for i, plan in enumerate(plans):
                cand = Candidate(task, plan, cfg, seed=i)
                cand.train_to(args.steps)
                results[mode].append(cand.accuracy())
        finally:
            nn.modules.batchnorm._BatchNorm.eval = kept_eval
    for mode, values in results.items():
        print(f"{mode:8s} {' '.join(f'{v:.3f}' for v in values)}  mean {statistics.mean(values):.4f}")


if __name__ == "__main__":
    main()
