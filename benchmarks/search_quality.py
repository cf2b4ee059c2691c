"""Search quality: hypervolume of the default search against simple baselines at equal trial budgets.

    .venv/bin/python benchmarks/search_quality.py [--config studies/quickstart.yaml] [--budgets 50,100]
        [--seeds 0,1,2] [--latency-profile PROFILE.json] [--strategies default,random,...] [--quick]

Strategies (same task, same search space, same fine-tuning, same hypervolume reference point):

- default:      the config as it is (TPE, warm start, fidelity ladder with successive halving)
- random:       random sampling, no warm start
- uniform grid: one sparsity and one bit-width for every layer (every combination the space allows, up to the
                budget), each scored at the proxy level (no successive halving); deterministic, so it runs once
- sparsity-only / bits-only: the default search restricted to one axis (other knobs fixed at the teacher's)
- nsga2 / tpe / gp: the default with that sampler (run only when named in ``--strategies``)

Each strategy and seed runs one study of the largest budget; the hypervolume at a smaller budget b is that of
its first b trials (sampling and successive halving look only at earlier trials, and an NSGA-II population is
fixed at 16, what a 50-trial study uses, so those b trials are exactly a b-trial study). With
``--latency-profile`` latency is predicted from the profile in every study: the strategies are then compared on
the same deterministic latency objective, unaffected by what else runs on the machine (front members are still
measured at the end of each study, as always). Finished runs are appended to ``--results`` (JSON lines) and not
repeated when the command is run again.

Prints the hypervolume per strategy, budget and seed, and the mean ratios default/grid and default/random.
``--quick`` uses the digits-mlp task, budgets 20 and 40 and one seed (a few minutes).
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import optuna
import yaml

from autocompress.config import load_search_space, load_study_config
from autocompress.front import hypervolume
from autocompress.search.driver import run_study
from autocompress.tasks import load_task


def _write(tmp: Path, name: str, cfg: dict) -> Path:
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def _restrict(space: dict, keep: str) -> dict:
    """The space with every knob but ``keep`` fixed at the teacher's value (1 choice)."""
    space = copy.deepcopy(space)
    fixed = {"sparsity": [0.0], "weight_bits": [32], "activation_bits": [32], "channel_keep": [1.0],
             "rank_ratio": [1.0]}
    for g in space["groups"]:
        for knob, value in fixed.items():
            if knob != keep:
                g[knob] = value
    space["student"] = {"width": [1.0], "depth": [1.0]}
    return space


def run(base: dict, tmp: Path, name: str, budgets: list[int], seed: int, task,
        grid: list[tuple[int, float]] | None = None) -> dict[int, float]:
    """Run one study of ``max(budgets)`` trials; hypervolume of the trials numbered below each budget."""
    budget = max(budgets)
    cfg = copy.deepcopy(base)
    cfg.update(seed=seed, n_trials=budget if grid is None else min(budget, len(grid)))
    loaded = load_study_config(_write(tmp, f"{name}-{budget}-{seed}", cfg))
    if grid is not None:
        # queue the grid points, nothing else
        from autocompress.compress.layers import discover_layers
        from autocompress.search.driver import open_study
        from autocompress.space import SearchSpace

        space = SearchSpace(loaded.space, discover_layers(task.model, task.example_input))
        loaded.study_dir.mkdir(parents=True, exist_ok=True)
        study = open_study(loaded, create=True)
        for bits, sparsity in grid[:budget]:
            study.enqueue_trial(space.uniform_params(weight_bits=bits, sparsity=sparsity))
    outcome = run_study(loaded, progress=False, task=task)
    front = outcome.front
    # a trial's sampling and promotion depend only on earlier trials, so the first b trials of this study are
    # the study a budget of b would have run (the NSGA-II population size is fixed in main() for this)
    out = {}
    for b in budgets:
        first = front.trials[front.trials["trial"] < b]
        out[b] = hypervolume(first, list(front.objectives), front.teacher)
        print(f"  {name} seed {seed}: {len(first)} completed of the first {b} trials "
              f"({int(first['feasible'].sum())} feasible), hypervolume {out[b]:.4f}", flush=True)
    return out


STRATEGIES = ("default", "random", "uniform-grid", "sparsity-only", "bits-only")
# the default with another sampler (not run unless named in --strategies)
SAMPLER_VARIANTS = ("nsga2", "tpe", "gp")


def _done(path: Path) -> dict[tuple[str, str, int, int, str], dict]:
    out = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                r = json.loads(line)
                out[(r["task"], r["strategy"], r["budget"], r["seed"], r.get("latency", "config"))] = r
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="studies/quickstart.yaml")
    ap.add_argument("--budgets", default="50,100")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--strategies", default=",".join(STRATEGIES),
                    help=f"comma-separated subset of {','.join(STRATEGIES + SAMPLER_VARIANTS)} (the last "
                         "ones: the default with that sampler)")
    ap.add_argument("--results", default="benchmarks/out/search_quality.v3.jsonl",
                    help="one JSON line per finished run; runs already there are not repeated (resumable)")
    ap.add_argument("--latency-profile", default=None,
                    help="predict latency from this profile (`autocompress profile -o PATH`) in every study, so "
                         "the strategies are compared on the same, load-independent latency objective; default: "
                         "the config's latency setting (measured when this machine has no profile)")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    src = Path(args.config).resolve()
    base = yaml.safe_load(src.read_text())
    if args.quick:
        base["task"] = "digits-mlp"
        base["finetune"] = {"steps": 100, "full_steps": 300}
        base["constraints"] = {"min_accuracy": 0.9}
        base["fidelity"] = {"self_check": 0}
        budgets, seeds = [20, 40], [0]
    else:
        budgets = [int(b) for b in args.budgets.split(",")]
        seeds = [int(s) for s in args.seeds.split(",")]
    space_path = (src.parent / base["search_space"]).resolve()
    space = yaml.safe_load(space_path.read_text())
    base["search_space"] = space
    base["fidelity"] = {**base.get("fidelity", {}), "self_check": 0}  # same cost for every strategy
    latency_source = "config"
    if args.latency_profile:
        profile = str(Path(args.latency_profile).resolve())
        base["latency"] = {**base.get("latency", {}), "predictor": profile, "measure": None}
        latency_source = f"predicted:{Path(profile).name}"
    task = load_task(base["task"])
    cfg_space = load_search_space(space_path)
    bits = sorted({b for g in cfg_space.groups for b in g.weight_bits})
    sparsities = sorted({s for g in cfg_space.groups for s in g.sparsity})
    grid = list(itertools.product(bits, sparsities))

    strategies = {
        "default": (dict(base), None),
        "random": ({**base, "sampler": "random", "warm_start": False}, None),
        # every grid plan is scored (no successive halving): the grid is the expert's full sweep, not a sample
        "uniform-grid": ({**base, "sampler": "random", "warm_start": False,
                          "fidelity": {**base["fidelity"], "promotion": False}}, grid),
        "sparsity-only": ({**base, "search_space": _restrict(space, "sparsity")}, None),
        "bits-only": ({**base, "search_space": _restrict(space, "weight_bits")}, None),
    }
    strategies.update({s: ({**base, "sampler": s}, None) for s in SAMPLER_VARIANTS})
    for cfg, _ in strategies.values():
        if cfg.get("sampler", "tpe") == "nsga2":
            # the population a 50-trial NSGA-II study uses, for every budget: the first b trials of the longest
            # run are then exactly a b-trial study (see run())
            cfg.setdefault("population_size", 16)
    strategies = {n: v for n, v in strategies.items() if n in args.strategies.split(",")}
    results_path = Path(args.results)
    results_path.parent.mkdir(parents=True, exist_ok=True)
    done = _done(results_path)
    tmp = Path(tempfile.mkdtemp(prefix="autocompress-quality-"))
    results: dict[tuple[str, int], list[float]] = {}
    try:
        for name, (cfg, g) in strategies.items():
            for seed in ([seeds[0]] if g is not None else seeds):
                keys = {b: (base["task"], name, b, seed, latency_source) for b in budgets}
                if all(k in done for k in keys.values()):
                    hvs = {b: done[k]["hypervolume"] for b, k in keys.items()}
                    wall = max(done[k]["wall_s"] for k in keys.values())
                else:
                    t0 = time.perf_counter()
                    hvs = run(cfg, tmp, name, budgets, seed, task, grid=g)
                    wall = time.perf_counter() - t0
                    with results_path.open("a") as f:
                        for b, hv in hvs.items():
                            f.write(json.dumps({"task": base["task"], "strategy": name, "budget": b, "seed": seed,
                                                "latency": latency_source, "hypervolume": hv,
                                                "wall_s": round(wall, 1)}) + "\n")
                for b, hv in hvs.items():
                    results.setdefault((name, b), []).append(hv)
                print(f"{name:<14} seed {seed}: hypervolume " + ", ".join(
                    f"{hv:.4f} at {b}" for b, hv in hvs.items()) + f" ({wall:.0f} s)", flush=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\ntask {base['task']}; latency {latency_source}; grid of {len(grid)} uniform plans ({len(bits)} "
          f"bit-widths x {len(sparsities)} sparsities, all of them when the budget allows); mean over seeds "
          f"{seeds}")
    print(f"{'budget':>6} " + " ".join(f"{n:>14}" for n in strategies) + "  default/grid  default/random")
    for budget in budgets:
        means = {n: float(np.mean(results[(n, budget)])) for n in strategies}
        ratio = {b: (f"{means['default'] / max(means[b], 1e-12):.2f}" if {"default", b} <= set(means) else "-")
                 for b in ("uniform-grid", "random")}
        print(f"{budget:>6} " + " ".join(f"{means[n]:>14.4f}" for n in strategies)
              + f"  {ratio['uniform-grid']:>12}  {ratio['random']:>14}")


if __name__ == "__main__":
    main()
