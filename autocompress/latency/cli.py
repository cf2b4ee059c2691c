"""Sub-command ``autocompress profile`` (registered through ``cli.COMMAND_MODULES``). Light at import."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

PROFILE_EPILOG = """\
examples:
  autocompress profile                         # this machine, ONNX Runtime, 1 thread, default location
  autocompress profile --threads 2 -o profiles/epyc-2t.json
  autocompress profile --quick -o /tmp/p.json  # a few seconds; for tests, not for studies
  autocompress profile --backend torch         # eager PyTorch on CPU (float kernels only)
  autocompress profile --backend openvino      # OpenVINO's CPU plugin (int8 and float kernels)
  autocompress profile --show profiles/epyc-2t.json
  autocompress profile --calibrate studies/resnet18.yaml   # fit the profile to that study's model (~10 runs)
  autocompress profile --calibrate studies/resnet18.yaml --base profiles/epyc-2t.json

What it measures (each through the same export and ONNX Runtime lowering as the search): convolutions (kernel
1/3/5/7, stride 1/2, depthwise, channel counts as pruning leaves them, from 3-px maps with 960 channels to
128-px stems), residual and inverted-residual blocks, MBConv with squeeze-excitation and SiLU, Linear as Gemm and
MatMul, pooling, BatchNorm / LayerNorm, activations, attention and ViT blocks; float, int8 static QDQ, low rank,
0-95 % sparse weights; dynamic int8 MatMul and int4 weight-only MatMulNBits; plus a few whole models for the
per-model term. The file holds this machine's fingerprint, every raw sample and the fitted per-kernel regressions.

Studies use the profile by default when its fingerprint matches this machine (written to
$AUTOCOMPRESS_CACHE/profiles/<fingerprint>.json when -o is not given), or with `latency: {predictor: PATH}`.
`--backend torch` profiles eager PyTorch instead (torch.inference_mode, batch 1, torch.set_num_threads): the same
micro-benchmarks and calibration models, materialized and timed module by module. Eager PyTorch has no int8 or
sparse kernels for these layers, so quantized and sparse layers run (and are predicted) as float; BatchNorm is not
folded. Studies use it with `latency: {backend: torch}`; a profile of one backend is refused for the other.
`--backend openvino` times the same samples as the search lowers them for OpenVINO (int8 QDQ and float; its CPU
plugin compiled for the static input shape), for studies with `latency: {backend: openvino}`.

Every measurement is timed beside a fixed reference workload and the profile is fitted on time relative to it, so
a slow spell of a shared machine shifts both alike; a study converts predictions to ms with the reference speed it
measures at its start. `--calibrate CONFIG` measures that study's teacher and a few candidates of its search
space end to end (about 10; --measurements) and refits the profile's per-model offset and scale to them (kernel
costs unchanged), writing <study dir>/latency_profile.json, which that study then uses (unless its config names
latency.predictor or measure: true). The in-sample and leave-one-out errors before and after are printed.
"""


def cmd_profile(args: argparse.Namespace) -> int:
    from .profile import ProfileSettings, build_profile, default_profile_path, load_profile

    if args.show:
        profile = load_profile(args.show)
        _print_summary(profile)
        return 0
    if args.calibrate:
        return _calibrate(args)
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


def _calibrate(args: argparse.Namespace) -> int:
    from ..config import load_study_config
    from ..space import SearchSpace
    from ..tasks import load_task
    from .calibrate import calibrate_profile, calibrated_path, sample_plans
    from .predictor import resolve_profile
    from .study import _resolve_path

    if args.measurements < 2:
        from .profile import ProfileError

        raise ProfileError(f"--measurements {args.measurements}: calibration needs at least 2 (the teacher and one "
                           "candidate; about 10 is the default)")
    loaded = load_study_config(args.calibrate)
    cfg = loaded.config.latency
    base = (Path(args.base) if args.base else
            _resolve_path(cfg.predictor, loaded.config_path.parent) if cfg.predictor else None)
    profile = resolve_profile(base, threads=cfg.threads, backend=cfg.backend)
    task = load_task(loaded.config.task, loaded.config.task_options)
    from ..compress.layers import discover_layers

    space = SearchSpace(loaded.space, discover_layers(task.model, task.example_input), source=str(loaded.config_path))
    say = (lambda msg: print(f"  {msg}", file=sys.stderr, flush=True)) if not args.quiet else None
    print(f"calibrating profile {profile.fingerprint_id} ({profile.path}) to {loaded.config_path.name}: the teacher "
          f"and {args.measurements - 1} candidates ...", file=sys.stderr)
    plans = sample_plans(space, args.measurements, args.seed)
    calibrated = calibrate_profile(profile, task.model, task.example_input, plans, batch_size=cfg.batch_size,
                                   label=loaded.config.task, progress=say)
    path = calibrated.save(args.output or calibrated_path(loaded.study_dir))
    c = calibrated.info["calibration"]
    print(f"per-model offset {c['offset']:+.4f} ms, scale {c['scale']:.3f} from {c['n']} measurements "
          f"({c['seconds']} s)")
    for label, key in (("before", "before"), ("after (in sample)", "after_in_sample"),
                       ("after (leave one out)", "after_leave_one_out")):
        e = c[key]
        print(f"  {label:22s} RMSPE {100 * e['rmspe']:5.1f} %, within 10 % {100 * e['within_10pct']:3.0f} %, "
              f"max {100 * e['max_abs']:.1f} %")
    used = not args.output and not cfg.predictor and cfg.measure is not True
    print(f"written: {path}" + (" (the study of this config uses it)" if used else
                                 "" if args.output else " (not used: the config names latency.predictor or sets "
                                 "measure: true)"))
    return 0


def _print_summary(profile) -> None:
    fit = profile.info.get("fit", {})
    micro, calib = fit.get("micro") or {}, fit.get("calibration") or {}
    n_micro = sum(s.group != "calibration" for s in profile.samples)
    fp = profile.fingerprint
    runtime = {"torch": f"torch {fp.get('torch')} (eager, float kernels)",
               "openvino": f"openvino {fp.get('openvino')} (CPU plugin, int8 and float kernels)"}.get(
        profile.backend, f"onnxruntime {fp.get('onnxruntime')}, NCHWc block {profile.nchwc_block}")
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
    p.add_argument("--backend", choices=("onnxruntime", "openvino", "torch"), default="onnxruntime",
                   help="runtime to profile (default: onnxruntime; openvino: its CPU plugin, int8 and float; torch: "
                        "eager PyTorch, float kernels)")
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
    p.add_argument("--calibrate", metavar="CONFIG", default=None,
                   help="fit the profile's per-model offset and scale to this study's model from a few end-to-end "
                        "measurements; writes <study dir>/latency_profile.json (or -o)")
    p.add_argument("--base", metavar="PROFILE.json", default=None,
                   help="with --calibrate: the profile to calibrate (default: the config's latency.predictor, else "
                        "this machine's default profile)")
    p.add_argument("--measurements", type=int, default=10, metavar="N",
                   help="with --calibrate: the teacher and N-1 sampled candidates (default: 10)")
    p.add_argument("--show", metavar="PROFILE.json", default=None,
                   help="print the summary of an existing profile (and how this machine differs) and exit")
    p.set_defaults(func=cmd_profile)
