"""Sub-command ``autocompress sensitivity`` (registered through ``cli.COMMAND_MODULES``). Light at import."""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  autocompress sensitivity studies/quickstart.yaml            # the study's scores (computed when it has none)
  autocompress sensitivity studies/quickstart.yaml --top 10 --format json
  autocompress sensitivity studies/quickstart.yaml --recompute -o /tmp/sens.json

What it measures: for every layer (or group sharing its values) and every value of each of its knobs other than
the teacher's, the plan changing only that, applied zero-shot as a trial applies it; its divergence is the task's
distillation loss against the teacher's outputs (KL divergence for classifiers and language models) on the first
training batches. 0 = the outputs did not move. A study runs the same pass when it starts (`sensitivity: true`,
the default), queues the plans losing least within a spread of latency and size budgets, and leaves out choices
far beyond every budget; this command prints what the study stored, or computes it without creating a study.
"""


def _compute(loaded) -> dict[str, Any]:
    from ..compress.layers import discover_layers
    from ..evaluate.size import dense_size_bytes
    from ..latency.study import prepare as prepare_latency
    from ..space import SearchSpace
    from ..tasks import check_task, load_task
    from . import warmstart

    task = load_task(loaded.config.task, loaded.config.task_options)
    check_task(task)
    space = SearchSpace(loaded.space, discover_layers(task.model, task.example_input),
                        source=str(loaded.config_path))
    prepare_latency(loaded, task)
    return warmstart.guide(task, space, loaded.config, teacher_size_bytes=dense_size_bytes(task.model),
                           progress=True) | {"source": "computed"}


def _stored(loaded) -> dict[str, Any] | None:
    import optuna

    from . import sensitivity, warmstart

    db = loaded.study_dir / "study.db"
    if loaded.storage_url.startswith("sqlite") and not db.is_file():
        return None
    from ..errors import ConfigError
    from .workers import describe_error

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    except KeyError:
        return None
    except Exception as e:
        raise ConfigError(f"cannot open the study storage: {describe_error(e)}", field="storage",
                          value=loaded.storage_url, file=str(loaded.config_path)) from None
    attrs = study.user_attrs
    if sensitivity.ATTR not in attrs:
        return None
    return {sensitivity.ATTR: attrs[sensitivity.ATTR], warmstart.ATTR: attrs.get(warmstart.ATTR, {}),
            warmstart.TIE_ATTR: attrs.get(warmstart.TIE_ATTR, {}),
            warmstart.RESTRICT_ATTR: attrs.get(warmstart.RESTRICT_ATTR, {}), "source": f"study {loaded.study_name!r}"}


def _print_table(record: dict[str, Any], top: int) -> None:
    import pandas as pd

    from . import sensitivity, warmstart

    sens = sensitivity.Sensitivity.from_dict(record[sensitivity.ATTR])
    rows = [r for r in sens.table() if math.isfinite(r["divergence"])]
    if rows:
        df = pd.DataFrame(rows)
        df["choice"] = df["knob"] + "=" + df["value"].astype(str)
        wide = df.pivot_table(index="section", columns="choice", values="divergence", aggfunc="first")
        order = wide.max(axis=1).sort_values(ascending=False).index
        print(f"divergence from the teacher of one change at a time ({sens.probes} probes on {sens.samples} "
              f"samples, {sens.seconds:.1f} s; {record['source']}); the {min(top, len(order))} most sensitive of "
              f"{len(order)} sections:\n")
        with pd.option_context("display.width", 200, "display.max_columns", 40, "display.float_format", "{:.4f}".format):
            print(wide.loc[order[:top]].to_string())
    failed = [r for r in sens.table() if "error" in r]
    if failed:
        print(f"\n{len(failed)} probe(s) failed (those choices are kept but not used in warm starts):")
        for r in failed[:10]:
            print(f"  {r['section']} {r['knob']}={r['value']}: {r['error']}")
    tied = record.get(warmstart.TIE_ATTR, {})
    if tied:
        n = sum(len(m) for m in tied.values())
        print(f"\n{n} layers share the parameters of {len(tied)} tied sections (alike in scores and MACs):")
        for name, members in tied.items():
            shown = ", ".join(members[:6]) + (f", ... ({len(members)} layers)" if len(members) > 6 else "")
            print(f"  {name}: {shown}")
    plans = record.get(warmstart.ATTR, {}).get("plans", [])
    if plans:
        print("\nbudgeted warm starts (predicted by the sensitivity and cost models; trials score them for real):")
        for p in plans:
            q = p["predicted"]
            print(f"  {p['label']:<24} divergence {q['divergence']:.4f}, ~{q['speedup']:.2f}x faster, "
                  f"~{q['shrink']:.1f}x smaller")
    allowed = record.get(warmstart.RESTRICT_ATTR, {})
    if allowed:
        print(f"\n{len(allowed)} parameter(s) narrowed (choices far beyond every budget left out), e.g.:")
        for name, choices in list(allowed.items())[:8]:
            print(f"  {name}: {choices}")


def cmd_sensitivity(args: argparse.Namespace) -> int:
    from ..config import load_study_config
    from ..errors import ConfigError

    if args.top < 1:
        raise ConfigError("must be at least 1", field="--top", value=args.top)
    loaded = load_study_config(args.config)
    record = None if args.recompute else _stored(loaded)
    if record is None:
        print(f"scoring the layers of {loaded.config.task} (one zero-shot probe per layer and choice) ...",
              file=sys.stderr)
        record = _compute(loaded)
        out = Path(args.output) if args.output else loaded.study_dir / "sensitivity.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, out)  # never a half-written file
        print(f"written: {out}", file=sys.stderr)
    if args.format == "json":
        print(json.dumps(record, indent=1))
    else:
        _print_table(record, args.top)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("sensitivity", help="score how much each layer's choices move the teacher's outputs",
                       description="Per-layer sensitivity of a study's model and search space: the divergence "
                                   "from the teacher of each layer's choices, one at a time; the budgeted warm "
                                   "starts and the narrowed choices a study derives from it.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", help="study config (YAML)")
    p.add_argument("--top", type=int, default=20, metavar="N", help="sections to print, most sensitive first")
    p.add_argument("--format", choices=("table", "json"), default="table", help="output format")
    p.add_argument("--recompute", action="store_true",
                   help="compute it again even when the study holds it (the study is not changed)")
    p.add_argument("-o", "--output", default=None, metavar="PATH",
                   help="where computed scores are written (default: <study folder>/sensitivity.json)")
    p.set_defaults(func=cmd_sensitivity)


__all__ = ["register"]
