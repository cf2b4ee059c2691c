"""The short level's learning rate, chosen once per study (``finetune.short_lr: auto``, the default).

Why: the short level ranks candidates by how far a few hundred steps of distillation take them, so it ranks best
at the rate that takes them furthest, and that rate depends on the model. On the MNIST LeNets ten times the
default rate took Kendall tau against full fine-tuning from 0.65 to 0.88 at 50 steps; on the pretrained ResNet-18
the same rate left every candidate at chance after 50 steps (``benchmarks/RESULTS.md``, accuracy proxies). So a
range test, as learning-rate finders do, settles it on the study's own model before its trials: a few random plans
of the search space (their per-layer choices; the student kept at the teacher's size, so nothing is distilled),
each trained to the short level at each rate of :data:`FACTORS` x ``finetune.lr``; the rate with the best mean
validation metric wins (a tie: the lower rate). Rates are tried from the lowest up, and a rate that scores below a
lower one ends the test: how far a short run gets rises with the rate up to a point and falls after it (on the
pretrained MobileNetV2: 0.61, 0.18, 0.11 at 1, 3, 10 x ``lr``), so the test costs two rates there, not three.

Full fine-tuning (beyond the short level's steps) keeps ``finetune.lr``. The choice is stored in the study
(:data:`ATTR`) and every worker and export train with it (:func:`autocompress.front.study_finetune`).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any

import numpy as np
import optuna
from tqdm import tqdm

from ..config import FinetuneConfig
from ..evaluate.candidate import Candidate
from ..front import SHORT_LR_ATTR
from ..plan import StudentPlan
from ..space import SearchSpace
from ..tasks import Task

log = logging.getLogger(__name__)

ATTR = SHORT_LR_ATTR         # study attribute: the range test and its choice
FACTORS = (1.0, 3.0, 10.0)   # rates tried, as multiples of finetune.lr
PLANS = 2                    # random plans of the space trained at each rate


def needed(cfg: FinetuneConfig, proxy_levels: list[str]) -> bool:
    """Whether a study with these settings and fidelity rungs has a short level whose rate is to be chosen."""
    return cfg.short_lr == "auto" and cfg.steps > 0 and "short" in proxy_levels


def choose(task: Task, space: SearchSpace, cfg: FinetuneConfig, *, seed: int = 0, plans: int = PLANS,
           factors: tuple[float, ...] = FACTORS, progress: bool | None = None) -> dict[str, Any]:
    """The range test (see the module docstring); returns what a study stores under :data:`ATTR`."""
    t0 = time.perf_counter()
    sampler = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))  # in memory, never stored
    chosen_plans = []
    for _ in range(plans):
        trial = sampler.ask()
        plan = space.suggest(trial)
        sampler.tell(trial, 0.0)
        chosen_plans.append(dataclasses.replace(plan, student=StudentPlan(
            channel_multiple=plan.student.channel_multiple)))
    sign = 1.0 if task.metric.direction == "maximize" else -1.0
    rates = sorted(cfg.lr * f for f in factors)
    scores: dict[float, float] = {}
    bar = tqdm(total=len(rates) * len(chosen_plans), desc="short-level learning rate", unit="run",
               disable=True if progress is False else None, leave=False)
    for rate in rates:
        run_cfg = cfg.model_copy(update={"short_lr": rate})
        values = []
        for i, plan in enumerate(chosen_plans):
            cand = Candidate(task, plan, run_cfg, seed=seed + i, warm_student=False)
            cand.train_to(run_cfg.steps)
            values.append(float(cand.accuracy()))
            bar.update()
        scores[rate] = float(np.mean(values))
        best = max(scores, key=lambda r: (round(sign * scores[r], 9), -r))  # ties: the lower rate
        if best != rate:
            break  # worse than a lower rate: the rates above it are not tried (see the module docstring)
    bar.close()
    out = {"chosen": best, "scores": {repr(r): v for r, v in scores.items()}, "steps": cfg.steps,
           "plans": [p.summary() for p in chosen_plans], "seconds": round(time.perf_counter() - t0, 3)}
    log.info("short level: learning rate %g chosen (mean %s after %d steps: %s) in %.0f s", best, task.metric.name,
             cfg.steps, ", ".join(f"{r:g}: {s:.4f}" for r, s in scores.items()), out["seconds"])
    return out


__all__ = ["ATTR", "FACTORS", "PLANS", "choose", "needed"]
