"""Sub-commands ``autocompress export`` and ``autocompress verify`` (registered through ``cli.COMMAND_MODULES``).

Light at import: everything heavy is imported inside the commands.
"""

from __future__ import annotations

import argparse
import sys

EXPORT_EPILOG = """\
examples:
  autocompress export studies/quickstart.yaml --pick 'accuracy >= 0.97' --by latency_ms -o exports/lenet
  autocompress export studies/quickstart.yaml --trial 12 -o exports/t12 --format onnx --finetune none
  autocompress verify exports/lenet

EXPR is a condition over the front's columns (trial, accuracy, test_accuracy, latency_ms, size_bytes,
compression_ratio, ...), e.g. 'latency_ms <= 2 and accuracy >= 0.97'; the best matching member by --by
(default: accuracy) is exported. Accuracy in EXPR is the search's validation accuracy.

The folder gets model.onnx (lowered for the study's latency backend with the kernels its search scored the
trial with: int8 where the plan has <= 8-bit weights and 8-bit inputs, int4 MatMulNBits for <= 4-bit
weight-only Linear layers on ONNX Runtime, float elsewhere), plan.json + weights.json +
weights.bin (the PyTorch artifact, weights packed as the size objective counts them; autocompress.load
rebuilds it), model.json + README.md (the card: accuracy on the test split, latency measured against the fp32
teacher and the search-time value, size on disk, versions, checksums) and SHA256SUMS.
"""


def _formats(value: str) -> str:
    from .card import ExportError

    items = [v.strip() for v in value.split(",") if v.strip()]
    bad = [v for v in items if v not in ("onnx", "torch")]
    if bad or not items:
        raise argparse.ArgumentTypeError(str(ExportError(f"formats are onnx and torch (comma-separated), got {value!r}")))
    return ",".join(items)


def _fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def cmd_export(args: argparse.Namespace) -> int:
    from .artifact import export_from_study

    finetune: str | int = args.steps if args.steps is not None else args.finetune
    print(f"exporting {'trial ' + str(args.trial) if args.trial is not None else repr(args.pick)} of {args.study} "
          f"to {args.output} (fine-tune: {finetune}{' steps' if isinstance(finetune, int) else ''}) ...",
          file=sys.stderr)
    result = export_from_study(args.study, args.output, trial=args.trial, pick=args.pick, by=args.by,
                               study_name=args.study_name, formats=args.format, finetune=finetune,
                               force=args.force, rounds=args.rounds)
    card = result.card
    src, m, low = card["source"], card["metrics"], card["lowering"]
    print(f"exported trial {src['trial']} of study {src['study']!r} to {result.path}")
    print(f"plan: {card['plan_summary']}")
    print(f"fine-tune: {card['finetune']['steps']} steps ({card['finetune']['mode']})")
    print(f"lowering: int8 {len(low['int8'])} layers, int4 {len(low['int4'])}, float {len(low['float'])}; "
          f"runtime ops: {low.get('runtime_ops', {})}")
    acc, lat, size = m["accuracy"], m["latency"], m["size"]
    print(f"accuracy ({acc['split']}): teacher {_fmt(acc['teacher_test'])}, export torch "
          f"{_fmt(acc['torch_test'])} / ONNX Runtime {_fmt(acc['onnx_test'])}; validation {_fmt(acc['torch_val'])} "
          f"(search {_fmt(src['search'].get('accuracy'))})")
    print(f"latency ({lat['backend']}, {lat['threads']} thread(s), batch {lat['batch_size']}): teacher "
          f"{lat['teacher_ms']:.4f} ms, export {lat['export_ms']:.4f} ms, speedup {lat['speedup']:.2f}x; "
          f"search-time {_fmt(lat['predicted_ms'])} ms ({_fmt(lat['vs_predicted'], '+.1%')})")
    print(f"size: weights.bin {size['weights_bin_bytes']} B (size objective {size['objective_bytes']} B, "
          f"{size['weights_bin_ratio']:.1f}x smaller than the teacher's {size['teacher_bytes']} B); "
          f"model.onnx {size['onnx_bytes']} B ({size['onnx_ratio']:.1f}x smaller than the teacher's ONNX)")
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from .artifact import verify

    report = verify(args.dir, rounds=args.rounds, acc_tol=args.acc_tol, latency_tol=args.latency_tol)
    print(f"{report.path}: every file matches SHA256SUMS and the card")
    print(report.table())
    if report.ok:
        print("OK: the re-measured figures agree with the card")
        return 0
    print("DIFFERS: some re-measured figures are outside the tolerance (see above)", file=sys.stderr)
    return 1


def register(sub: argparse._SubParsersAction) -> None:
    e = sub.add_parser(
        "export", help="export a front member as a deployable, measured artifact (ONNX + PyTorch + card)",
        description="Materialize a study's trial on the teacher, fine-tune it fully (knowledge distillation, the "
                    "study's finetune.full_steps), lower it to its latency backend's kernels (those the search scored it with), pack its weights, measure "
                    "accuracy, latency and size, and write it to a new folder atomically.",
        epilog=EXPORT_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    e.add_argument("study", help="study config (YAML; preferred: gives the task options and settings), results "
                                 "folder (holding study.db) or storage URL")
    which = e.add_mutually_exclusive_group(required=True)
    which.add_argument("--trial", type=int, metavar="N", help="export completed trial number N")
    which.add_argument("--pick", metavar="EXPR", help="export the best front member satisfying EXPR (see below)")
    e.add_argument("--by", default=None, metavar="COLUMN",
                   help="with --pick: the column the best match is chosen by (default: the task's metric, e.g. "
                        "accuracy; or latency_ms, size_bytes)")
    e.add_argument("-o", "--output", required=True, metavar="DIR", help="new folder to write (must not exist)")
    e.add_argument("--format", type=_formats, default="onnx,torch", metavar="onnx,torch",
                   help="artifacts to write, comma-separated (default: onnx,torch)")
    e.add_argument("--finetune", choices=("full", "search", "none"), default="full",
                   help="full: the study's finetune.full_steps (default); search: finetune.steps; none")
    e.add_argument("--steps", type=int, default=None, metavar="N", help="fine-tune exactly N steps (overrides --finetune)")
    e.add_argument("--force", action="store_true", help="replace DIR if it is an earlier export (or empty)")
    e.add_argument("--study-name", default=None, help="study name inside the storage (default: the only one)")
    e.add_argument("--rounds", type=int, default=5, metavar="R",
                   help="interleaved latency rounds, teacher vs export (default: 5)")
    e.set_defaults(func=cmd_export)

    v = sub.add_parser(
        "verify", help="check an export's checksums and re-measure accuracy and latency against its card",
        description="Check every file of an export against SHA256SUMS and the card, rebuild the task (built-in, "
                    "or the user's task function: this runs its code), re-measure test/validation accuracy of "
                    "each format and the latency of the export (on the card's latency backend) and the fp32 teacher, and compare with "
                    "model.json. Exit code 0 when everything agrees within the tolerances, 1 otherwise.")
    v.add_argument("dir", metavar="DIR", help="an export folder")
    v.add_argument("--acc-tol", type=float, default=0.005, metavar="X",
                   help="allowed absolute accuracy difference (default 0.005 = half a point)")
    v.add_argument("--latency-tol", type=float, default=0.25, metavar="X",
                   help="allowed relative latency difference (default 0.25; latency depends on machine and load)")
    v.add_argument("--rounds", type=int, default=3, metavar="R", help="interleaved latency rounds (default: 3)")
    v.set_defaults(func=cmd_verify)


__all__ = ["register"]
