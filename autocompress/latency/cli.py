"""Sub-command ``autocompress profile`` (registered through ``cli.COMMAND_MODULES``). Light at import."""

from __future__ import annotations

import argparse
import sys

PROFILE_EPILOG = """\
examples:
  autocompress profile                         # this machine, ONNX Runtime, 1 thread, default location
  autocompress profile --threads 2 -o profiles/epyc-2t.json
  autocompress profile --quick -o /tmp/p.json  # a few seconds; for tests, not for studies
  autocompress profile --backend torch         # eager PyTorch on CPU (float kernels only)
  autocompress profile --show profiles/epyc-2t.json

What it measures (each through the same export and ONNX Runtime lowering as the search): convolutions (kernel
1/3/5/7, stride 1/2, depthwise, channel counts as pruning leaves them), Linear as Gemm and MatMul, pooling,
BatchNorm / LayerNorm, activations, attention matmuls and softmax; float, int8 static QDQ, low rank, 0-95 %
sparse weights; dynamic int8 MatMul and int4 weight-only MatMulNBits; plus a few whole models for the per-model
term. The file holds this machine's fingerprint, every raw sample and the fitted per-kernel regressions.

Studies use the profile by default when its fingerprint matches this machine (written to
$AUTOCOMPRESS_CACHE/profiles/<fingerprint>.json when -o is not given), or with `latency: {predictor: PATH}`.
`--backend torch` profiles eager PyTorch instead (torch.inference_mode, batch 1, torch.set_num_threads): the same
micro-benchmarks and calibration models, materialized and timed module by module. Eager PyTorch has no int8 or
sparse kernels for these layers, so quantized and sparse layers run (and are predicted) as float; BatchNorm is not
folded. Studies use it with `latency: {backend: torch}`; a profile of one backend is refused for the other.
"""


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import ProfileSettings, build_profile, default_profile_path, load_profile

    if args.show:
        profile = load_profile(args.show)
        _print_summary(profile)
        return 0
    settings = ProfileSettings.quick() if args.quick else ProfileSettings()
    if args.micro is not None:
        settings.micro = args.micro
    if args.time_budget is not None:
        settings.time_budget_s = args.time_budget
    settings.seed = args.seed
    out = args.output or default_profile_path(threads=args.threads, backend=args.backend)
    print(f"profiling {args.backend} at {args.threads} thread(s) "
          f"({'quick' if args.quick else 'full'}: {settings.micro} micro-benchmarks) ...", file=sys.stderr)
    say = (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)) if not args.quiet else None
    profile = build_profile(backend=args.backend, threads=args.threads, settings=settings, progress=say)
    path = profile.save(out)
    _print_summary(profile)
    print(f"written: {path}")
    return 0


def _print_summary(profile) -> None:
    fit = profile.info.get("fit", {})
    micro, calib = fit.get("micro") or {}, fit.get("calibration") or {}
    n_micro = sum(s.group != "calibration" for s in profile.samples)
    runtime = (f"torch {profile.fingerprint.get('torch')} (eager, float kernels)" if profile.backend == "torch" else
               f"onnxruntime {profile.fingerprint.get('onnxruntime')}, NCHWc block {profile.nchwc_block}")
    print(f"profile {profile.fingerprint_id}: {profile.backend}, {profile.threads} thread(s), CPU "
          f"{profile.fingerprint.get('cpu')!r} x{profile.fingerprint.get('cores')}, {runtime}")
    print(f"  {n_micro} micro-benchmark samples, {len(profile.samples) - n_micro} whole-model calibration "
          f"samples, {len(profile.model.kinds)} kernel kinds, made in {profile.info.get('seconds')} s")
    if micro:
        print(f"  fit on micro-benchmarks: RMSPE {100 * micro['rmspe']:.1f} %, within 10 % "
              f"{100 * micro['within_10pct']:.0f} %")
    if calib:
        print(f"  whole models (calibration): RMSPE {100 * calib['rmspe']:.1f} %, within 10 % "
              f"{100 * calib['within_10pct']:.0f} %")
    diff = profile.mismatch()
    if diff:
        print("  measured on another machine or setup: " + "; ".join(diff))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "profile", help="measure this machine's kernels and fit the latency predictor (writes a profile JSON)",
        description="Micro-benchmark the kernels compressed models are made of on this machine and backend, fit "
                    "per-kernel latency regressions, and write a latency profile (fingerprint, raw samples, fitted "
                    "model) atomically. A full profile takes a few minutes on 2 cores (at most 10).",
        epilog=PROFILE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("onnxruntime", "torch"), default="onnxruntime",
                   help="runtime to profile (default: onnxruntime; torch: eager PyTorch, float kernels)")
    p.add_argument("--threads", type=int, default=1, metavar="N",
                   help="intra-op threads to time with; must match the study's latency.threads (default: 1)")
    p.add_argument("-o", "--output", default=None, metavar="PROFILE.json",
                   help="where to write (default: $AUTOCOMPRESS_CACHE/profiles/<fingerprint>.json, which studies "
                        "on this machine use automatically)")
    p.add_argument("--quick", action="store_true", help="a small profile in seconds (tests; too coarse for studies)")
    p.add_argument("--micro", type=int, default=None, metavar="N", help="number of micro-benchmarks")
    p.add_argument("--time-budget", type=float, default=None, metavar="S",
                   help="stop measuring micro-benchmarks after about S seconds (default: 570)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampled shapes and plans (default: 0)")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument("--show", metavar="PROFILE.json", default=None,
                   help="print the summary of an existing profile (and how this machine differs) and exit")
    p.set_defaults(func=cmd_profile)
