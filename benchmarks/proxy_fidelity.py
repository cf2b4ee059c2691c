"""How well each accuracy proxy ranks candidates, against full fine-tuning, and what it costs.

    .venv/bin/python benchmarks/proxy_fidelity.py [--tasks mnist-lenet5,mnist-lenet300] [--plans 40]
        [--short-steps 50,200,400] [--full-steps 1500] [--student-steps 150] [--space search_spaces/default.yaml]
        [--short-lr 1e-3] [--full-seeds 1] [--out rows.json]

For each task: random plans from the search space (Optuna RandomSampler, seed 0). Each plan is materialized once
and fine-tuned cumulatively; its validation accuracy is recorded at zero-shot (BatchNorm + activation ranges
recalibrated, no training), after each short budget, and at full fine-tuning. Zero-cost baselines (params, FLOPs,
synflow, grad_norm, snip) are computed on the zero-shot model. Also:

- ``sensitivity sum``: minus the divergence the study's per-layer sensitivity predicts for the plan (the sum of its
  one-layer probe scores, ``autocompress/search/sensitivity.py``; cost: one pass, shared by every plan)
- ``divergence@zero-shot`` / ``divergence@<first short>``: minus the candidate's own divergence from the teacher on
  two training batches, at zero-shot and after the first short budget
- ``fitted@<first short>``: full accuracy predicted by a least-squares fit on the other proxies at that level's cost,
  fitted on 8 random plans already fine-tuned fully (as a study's self-check trials are) and scored on the rest;
  mean tau over 50 random draws

A plan with a student size (width or depth below 1) starts from that size distilled once for ``--student-steps``
(shared by every plan of the size, as in a study; its cost lands on the first plan of the size, so it is in the
mean costs) at every level, full fine-tuning included (as export does); ``--student-steps 0``: from the teacher.

``--tasks``: built-in tasks, options after ``@`` as in ``benchmarks/zoo.py``. ``--short-lr``: learning rate of the
short levels (``finetune.short_lr``; ``auto``: chosen by the study's range test run at the first short level's steps,
``autocompress/search/learning_rate.py``, its cost printed); full fine-tuning is one cosine cycle at the default 1e-3, students are
distilled at 1e-3 for both.
``--full-seeds 2``: every plan is also fully fine-tuned with a second seed; the tau of one full run against the other
is the ceiling any proxy can reach against a single full run (full fine-tuning's own seed-to-seed noise).

Prints Kendall tau and Spearman rho of every proxy against full accuracy, and each level's cost relative to full
(wall seconds: apply + training + evaluation). ``--out``: every plan's figures as JSON (for offline analysis).
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import optuna
import torch
from scipy import stats
from zoo import load_model

from autocompress.compress.layers import discover_layers
from autocompress.config import FinetuneConfig, load_search_space
from autocompress.evaluate import zero_cost
from autocompress.evaluate.candidate import Candidate, first_batches
from autocompress.search import learning_rate, sensitivity
from autocompress.space import SearchSpace
from autocompress.tasks.inputs import call


def run_task(name: str, n_plans: int, shorts: list[int], full: int, space_path: str, student_steps: int,
             short_lr: float | str = 1e-3, full_seeds: int = 1) -> list[dict]:
    task = load_model(name)
    space = SearchSpace(load_search_space(space_path), discover_layers(task.model, task.example_input))
    range_test = None
    if short_lr == "auto":  # the study's range test, at the first short level's steps
        range_test = learning_rate.choose(task, space, FinetuneConfig(steps=shorts[0], full_steps=full), progress=False)
        short_lr = range_test["chosen"]
    study = optuna.create_study(directions=["maximize"], sampler=optuna.samplers.RandomSampler(seed=0))
    # the short levels at short_lr (finetune.short_lr: a candidate's first `steps` mini-batches); full fine-tuning
    # one cosine cycle at lr from the plan's start, as before short_lr; students distilled at lr for both
    cfg = FinetuneConfig(steps=max(shorts), full_steps=full, student_steps=student_steps, short_lr=short_lr)
    full_cfg = FinetuneConfig(steps=full, full_steps=full, student_steps=student_steps)
    x, y = task.train.tensors[0][:64], task.train.tensors[1][:64]
    t_sens = time.perf_counter()
    sens = sensitivity.measure(task, space, cfg, progress=False)
    sens_cost = time.perf_counter() - t_sens
    batches = first_batches(task, 2)
    with torch.no_grad():
        teacher_outs = [call(task.model.eval(), b[0]) for b in batches]

    def div(model):
        return sensitivity.divergence(task, model.eval(), batches, teacher_outs)

    rows = []
    for i in range(n_plans):
        trial = study.ask()
        plan = space.suggest(trial)
        study.tell(trial, 0.0)
        t0 = time.perf_counter()
        cand = Candidate(task, plan, cfg, seed=i)
        acc = {"zero-shot": cand.accuracy(), "sensitivity sum": -sensitivity.plan_divergence(sens, space, plan),
               "divergence@zero-shot": -div(cand.cm.model)}
        cost = {"zero-shot": time.perf_counter() - t0}
        baked = cand.baked().model
        t1 = time.perf_counter()
        scores = zero_cost.all_scores(baked, task.example_input, x, y)
        zc_cost = time.perf_counter() - t1
        for s in shorts:
            cand.train_to(s)
            acc[f"short@{s}"] = cand.accuracy()
            cost[f"short@{s}"] = time.perf_counter() - t0 - zc_cost
            if s == shorts[0]:
                acc[f"divergence@{s}"] = -div(cand.cm.model)
        t2 = time.perf_counter()
        full_cand = Candidate(task, plan, full_cfg, seed=i)  # full fine-tuning from scratch
        full_cand.train_to(full)
        acc["full"] = full_cand.accuracy()
        cost["full"] = time.perf_counter() - t2
        for k in range(1, full_seeds):
            again = Candidate(task, plan, full_cfg, seed=i + 1000 * k)
            again.train_to(full)
            acc[f"full (seed {k + 1})"] = again.accuracy()
        rows.append({"acc": acc, "cost": cost, "zc": scores, "zc_cost": zc_cost, "plan": plan})
        print(f"  {name} plan {i + 1}/{n_plans}: zero-shot {acc['zero-shot']:.3f} "
              + " ".join(f"{k} {v:.3f}" for k, v in acc.items() if k.startswith("short")) + f" full {acc['full']:.3f}",
              flush=True)
    full_acc = np.array([r["acc"]["full"] for r in rows])
    full_cost = np.mean([r["cost"]["full"] for r in rows])
    students = sum(not r["plan"].student.is_identity for r in rows)
    print(f"\n{name}: {n_plans} random plans; full = {full} KD steps (mean {full_cost:.1f} s per candidate); "
          f"full accuracy range {full_acc.min():.3f}..{full_acc.max():.3f}; {students} plans with a student size, "
          f"each size distilled {student_steps} steps once")
    print(f"{'proxy':<12} {'kendall_tau':>11} {'spearman':>9} {'cost/full':>9} {'mean accuracy':>13}")
    levels = ["zero-shot", *[f"short@{s}" for s in shorts]]
    for level in levels:
        v = [r["acc"][level] for r in rows]
        c = np.mean([r["cost"][level] for r in rows]) / full_cost
        print(f"{level:<12} {stats.kendalltau(v, full_acc).statistic:>11.3f} "
              f"{stats.spearmanr(v, full_acc).statistic:>9.3f} {c:>9.3f} {np.mean(v):>13.3f}")
    print(f"{'full':<12} {'':>11} {'':>9} {1.0:>9.3f} {full_acc.mean():>13.3f}")
    if range_test is not None:
        print(f"short_lr auto: {short_lr:g} chosen by the range test at {shorts[0]} steps ("
              + ", ".join(f"{float(r):g}: {v:.3f}" for r, v in range_test["scores"].items())
              + f"); {range_test['seconds']:.1f} s once = {range_test['seconds'] / full_cost:.2f} full fine-tunings")
    first = shorts[0]
    print(f"{'sensitivity sum':<12} {stats.kendalltau([r['acc']['sensitivity sum'] for r in rows], full_acc).statistic:>11.3f} "
          f"{stats.spearmanr([r['acc']['sensitivity sum'] for r in rows], full_acc).statistic:>9.3f} "
          f"{sens_cost / n_plans / full_cost:>9.3f}  (one pass of {sens.probes} probes, {sens_cost:.1f} s, shared)")
    for level, c in (("divergence@zero-shot", "zero-shot"), (f"divergence@{first}", f"short@{first}")):
        v = [r["acc"][level] for r in rows]
        rel = np.mean([r["cost"][c] for r in rows]) / full_cost
        print(f"{level:<12} {stats.kendalltau(v, full_acc).statistic:>11.3f} "
              f"{stats.spearmanr(v, full_acc).statistic:>9.3f} {rel:>9.3f}")
    feats = np.array([[r["acc"][k] for k in ("zero-shot", f"short@{first}", "sensitivity sum",
                                              "divergence@zero-shot", f"divergence@{first}")] for r in rows])
    feats = np.column_stack([feats, np.ones(len(rows))])
    rng, taus = np.random.default_rng(0), []
    for _ in range(50):
        fit = rng.choice(len(rows), size=min(8, len(rows) - 3), replace=False)
        rest = np.setdiff1d(np.arange(len(rows)), fit)
        coef, *_ = np.linalg.lstsq(feats[fit], full_acc[fit], rcond=1e-6)
        taus.append(stats.kendalltau(feats[rest] @ coef, full_acc[rest]).statistic)
    rel = np.mean([r["cost"][f"short@{first}"] for r in rows]) / full_cost
    print(f"{'fitted@' + str(first):<12} {np.nanmean(taus):>11.3f} {'':>9} {rel:>9.3f}  (8 plans fully fine-tuned "
          f"to fit on, tau on the rest, mean of 50 draws; min {np.nanmin(taus):.3f})")
    zc_rel = np.mean([r["zc_cost"] for r in rows]) / full_cost
    for key in ["params", "flops", "synflow", "grad_norm", "snip"]:
        v = [r["zc"][key] for r in rows]
        print(f"{key:<12} {stats.kendalltau(v, full_acc).statistic:>11.3f} "
              f"{stats.spearmanr(v, full_acc).statistic:>9.3f} {zc_rel:>9.3f}  (zero-cost; cost = all five)")
    for k in range(1, full_seeds):
        v = [r["acc"][f"full (seed {k + 1})"] for r in rows]
        print(f"{'full, seed ' + str(k + 1):<12} {stats.kendalltau(v, full_acc).statistic:>11.3f} "
              f"{stats.spearmanr(v, full_acc).statistic:>9.3f} {1.0:>9.3f}  (full fine-tuning again, another seed: "
              "the ceiling against one full run)")
    return [{"task": name, "plan": r["plan"].to_dict(), "acc": r["acc"], "cost": r["cost"], "zc": r["zc"],
             "full_cost_mean": float(full_cost)} for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", default="mnist-lenet5,mnist-lenet300")
    ap.add_argument("--plans", type=int, default=40)
    ap.add_argument("--short-steps", default="50,200,400")
    ap.add_argument("--full-steps", type=int, default=1500)
    ap.add_argument("--space", default="search_spaces/default.yaml")
    ap.add_argument("--student-steps", type=int, default=150,
                    help="distillation steps of each student size (default: 3 x the 50-step short level; 0: off)")
    ap.add_argument("--short-lr", type=lambda v: v if v == "auto" else float(v), default=1e-3,
                    help="learning rate of the short levels (default 1e-3; auto: the study's range test)")
    ap.add_argument("--full-seeds", type=int, default=1,
                    help="full fine-tuning runs per plan, seeds apart (2: also report full against full)")
    ap.add_argument("--out", help="write every plan's figures to this JSON file")
    args = ap.parse_args()
    torch.manual_seed(0)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    rows = []
    for name in args.tasks.split(","):
        rows += run_task(name, args.plans, [int(s) for s in args.short_steps.split(",")], args.full_steps,
                         args.space, args.student_steps, args.short_lr, args.full_seeds)
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1, default=float)


if __name__ == "__main__":
    main()
