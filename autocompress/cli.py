"""Command line: ``autocompress search | front | validate`` and the sub-commands of :data:`COMMAND_MODULES`. Run
``autocompress COMMAND --help``."""

from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import json
import logging
import signal
import sys
from pathlib import Path

from . import __version__
from .errors import AutocompressError, ConfigError, StudyNotFoundError

# Modules adding their own sub-commands (kept light at import: heavy imports go inside the command).
COMMAND_MODULES: list[str] = ["autocompress.dashboard.cli", "autocompress.export.cli", "autocompress.latency.cli",
                              "autocompress.search.cli"]


def _print_front(front, fmt: str, *, all_trials: bool = False) -> None:
    from .front import COLUMNS

    df = front.trials if all_trials else front.front
    if fmt == "csv":
        df[COLUMNS].to_csv(sys.stdout, index=False)
    elif fmt == "json":
        out = {"study": front.study_name, "objectives": front.objectives, "metric": front.metric,
               "teacher": front.teacher,
               "hypervolume": front.hypervolume,
               "members": [{**row, "plan": front.plans[int(row["trial"])].to_dict()}
                           for row in json.loads(df[COLUMNS].to_json(orient="records"))]}
        print(json.dumps(out, indent=2))
    else:
        t = front.teacher
        if t:
            test = f", test {t['test_accuracy']:.4f}" if t.get("test_accuracy") is not None else ""
            print(f"teacher: {front.metric_name} {t['accuracy']:.4f} (validation){test}, latency {t['latency_ms']:.4f} ms, "
                  f"size {t['size_bytes']} B")
        states = front.failed["state"]
        n_stopped, n_fail = int((states == "PRUNED").sum()), int((states == "FAIL").sum())
        print(f"study {front.study_name!r}: {len(front.trials)} completed trials, {n_stopped} stopped early by "
              f"successive halving, {n_fail} failed, {len(front.front)} on the Pareto front; hypervolume "
              f"{front.hypervolume:.4f}")
        fs = front.fidelity_summary
        if fs:
            saved = fs.get("cost_s_saved_estimate")
            line = (f"evaluation: {fs['completed']} trials at the proxy level, {fs['stopped']} stopped early by "
                    f"successive halving; {fs['cost_s_total']:.0f} s spent"
                    + (f", ~{saved:.0f} s saved" if saved else ""))
            check = fs.get("self_check", {})
            if check.get("kendall_tau") is not None:
                line += (f"; proxy vs full fine-tuning on {check['n']} random candidates: Kendall tau "
                         f"{check['kendall_tau']:.2f}")
            print(line)
        lr = front.short_lr
        if lr.get("chosen") is not None:
            print(f"short level: learning rate {lr['chosen']:g}, chosen by a range test ("
                  + ", ".join(f"{float(r):g}: {v:.4f}" for r, v in lr["scores"].items())
                  + f" mean {front.metric_name} after {lr['steps']} steps)")
        elif lr.get("error"):
            print(f"short level: the learning-rate range test failed ({lr['error']}); trained at finetune.lr")
        if front.unassigned or front.left_alone:
            parts = [f"{len(front.unassigned)} layer(s) in no search group ({', '.join(front.unassigned[:3])}"
                     f"{', ...' if len(front.unassigned) > 3 else ''})"] if front.unassigned else []
            parts += [f"{kind} x{len(names)} ({names[0]}{', ...' if len(names) > 1 else ''})"
                      for kind, names in front.left_alone.items()]
            print("left as in the teacher (no method handles them, or no group names them): " + "; ".join(parts))
        name = front.metric_name
        print(f"{name} is on the validation split (used for selection); test_{name} is reported only.\n")
        print(front.table() if not all_trials else df.to_string(index=False))


def _resolve_front(target: str, study: str | None):
    """A config file, a study folder (holding study.db) or a storage URL -> Front."""
    from .config import load_study_config
    from .front import load_front

    path = Path(target)
    if "://" in target:
        return load_front(target, study)
    if path.suffix in (".yaml", ".yml"):
        loaded = load_study_config(path)
        return load_front(loaded.storage_url, study or loaded.study_name)
    if path.is_dir():
        db = path / "study.db"
        if not db.is_file():
            raise StudyNotFoundError(f"{path} holds no study.db (is it a study's results folder?)")
        return load_front(f"sqlite:///{db.resolve()}", study)
    raise StudyNotFoundError(f"{target}: not a study config (.yaml), a results folder or a storage URL")


def cmd_search(args: argparse.Namespace) -> int:
    from .config import load_study_config
    from .errors import ConfigError
    from .search.driver import run_study

    loaded = load_study_config(args.config)
    if args.n_trials is not None and args.n_trials < 1:
        raise ConfigError("must be at least 1", field="--n-trials", value=args.n_trials)
    if args.storage is not None and "://" not in args.storage:
        raise ConfigError("must be a database URL such as sqlite:///path/study.db or postgresql://user@host/db",
                          field="--storage", value=args.storage)
    if args.trial_cpus is not None and args.trial_cpus < 1:
        raise ConfigError("must be a whole number of CPUs, at least 1", field="--trial-cpus", value=args.trial_cpus)
    if args.trial_gpus is not None and args.trial_gpus <= 0:
        raise ConfigError("must be a positive number of GPUs (a fraction shares one)", field="--trial-gpus",
                          value=args.trial_gpus)
    ray_only = {"--address": args.address, "--trial-cpus": args.trial_cpus, "--trial-gpus": args.trial_gpus}
    given = [(flag, v) for flag, v in ray_only.items() if v is not None]
    if args.backend != "ray" and given:
        raise ConfigError("is only used with --backend ray", field=given[0][0], value=given[0][1])
    if args.storage:
        loaded = loaded.model_copy(update={"storage_url": args.storage})
    print(f"study {loaded.study_name!r}: task {loaded.config.task}, results in {loaded.study_dir}")
    outcome = run_study(loaded, n_trials=args.n_trials, progress=not args.no_progress, backend=args.backend,
                        address=args.address, trial_cpus=args.trial_cpus, trial_gpus=args.trial_gpus)
    print()
    _print_front(outcome.front, "table")
    print(f"\nresults: {outcome.study_dir} (storage {outcome.storage_url})")
    print(f"{outcome.new_trials} new trials in {outcome.seconds:.0f} s. "
          f"See again with: autocompress front {args.config}")
    if outcome.interrupted:
        print("interrupted: every completed trial is kept; run the same command to continue.", file=sys.stderr)
        return 130
    return 0


def cmd_front(args: argparse.Namespace) -> int:
    front = _resolve_front(args.study, args.study_name)
    _print_front(front, args.format, all_trials=args.all)
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    from .config import load_study_config
    from .runtime import BackendError, backend_for  # lazy: keeps `autocompress --help` fast

    for cfg in args.configs:
        loaded = load_study_config(cfg)
        try:
            backend_for(loaded.config.latency)
        except BackendError as e:
            raise ConfigError(str(e), file=cfg, field="latency.backend") from None
        groups = ", ".join(g.name for g in loaded.space.groups)
        print(f"{cfg}: OK (study {loaded.study_name!r}, task {loaded.config.task}, groups: {groups}, "
              f"objectives: {', '.join(loaded.config.objectives or ['(the task metric)', 'latency_ms', 'size_bytes'])})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="autocompress",
        description="Find the best compressed versions of a PyTorch model: a multi-objective search over "
                    "per-layer sparsity, bit-widths, channel pruning, low rank and student size, scored by "
                    "accuracy, measured latency and exact size.",
        epilog="Quick start: autocompress search studies/quickstart.yaml && autocompress front studies/quickstart.yaml")
    p.add_argument("--version", action="version", version=f"autocompress {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log more detail")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    s = sub.add_parser("search", help="run or continue a study", description=(
        "Run the study a config describes, or continue it: re-running the same command resumes the study "
        "until it holds n_trials finished trials. Ctrl-C stops cleanly, keeping every completed trial. "
        "Prints the Pareto front at the end."))
    s.add_argument("config", help="study config (YAML), e.g. studies/quickstart.yaml")
    s.add_argument("--n-trials", type=int, default=None, metavar="N",
                   help="total finished trials to reach (default: the config's n_trials)")
    s.add_argument("--storage", default=None, metavar="URL",
                   help="Optuna storage URL overriding the config's (default: SQLite in the study folder)")
    s.add_argument("--no-progress", action="store_true", help="no progress bar")
    s.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local: trials run in this process (start the same command on several machines with a "
                        "shared --storage to add workers); ray: trials run on a Ray cluster via Ray Tune")
    s.add_argument("--address", default=None, metavar="auto|HOST:PORT",
                   help="Ray cluster to join (with --backend ray; default: start Ray on this machine)")
    s.add_argument("--trial-cpus", type=int, default=None, metavar="N",
                   help="CPUs Ray reserves per trial (default: the config's latency.threads, usually 1); "
                        "2 gives latency measurement a spare core")
    s.add_argument("--trial-gpus", type=float, default=None, metavar="N",
                   help="GPUs Ray reserves per trial for fine-tuning (with `device: cuda` or `auto`; a fraction "
                        "such as 0.25 shares one GPU among trials); latency stays on the latency backend's target")
    s.set_defaults(func=cmd_search)

    f = sub.add_parser("front", help="print a study's Pareto front", description=(
        "Print the Pareto front of a study: trial, validation accuracy, test accuracy, latency_ms, size_bytes, "
        "compression ratio and plan summary, plus the hypervolume."))
    f.add_argument("study", help="study config (YAML), results folder (holding study.db) or storage URL")
    f.add_argument("--study-name", default=None, help="study name inside the storage (default: the only one)")
    f.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format")
    f.add_argument("--all", action="store_true", help="every completed trial, not only the front")
    f.set_defaults(func=cmd_front)

    v = sub.add_parser("validate", help="check study configs without running anything", description=(
        "Validate study configs and their search spaces. Errors name the file, field, bad value and what is "
        "allowed; exit code 2. Nothing is written."))
    v.add_argument("configs", nargs="+", metavar="CONFIG", help="study config files (YAML)")
    v.set_defaults(func=cmd_validate)

    # Sub-commands living beside their feature: each module has `register(subparsers)`.
    for module in COMMAND_MODULES:
        importlib.import_module(module).register(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if hasattr(signal, "SIGUSR1") and signal.getsignal(signal.SIGUSR1) == signal.SIG_DFL:
        # `kill -USR1 PID` prints every thread's stack to stderr: what a long or stuck command is doing.
        with contextlib.suppress(OSError, ValueError):  # stderr without a file descriptor (captured): skip
            faulthandler.register(signal.SIGUSR1, all_threads=True)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="autocompress: %(message)s")
    try:
        return args.func(args)
    except AutocompressError as e:
        print(f"error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
