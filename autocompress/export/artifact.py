"""Export a plan (or a study's pick) as a deployable artifact folder, measured; and re-measure one (verify).

An export folder holds:

- ``model.onnx``    the runtime artifact: the plan lowered to ONNX Runtime kernels (see :mod:`.lower`)
- ``plan.json``, ``weights.json``, ``weights.bin``    the PyTorch artifact: plan, index, packed weights
  (see :mod:`.pack`), rebuilt by :func:`autocompress.load`
- ``model.json``, ``README.md``    the model card: plan, accuracy (teacher and export, test split), latency
  measured in ONNX Runtime vs the search-time value, size on disk vs the teacher, versions, checksums
- ``SHA256SUMS``    every file's SHA-256, checked on load

The folder is written in a temporary sibling and renamed into place at the end, so a failed export leaves
nothing behind and an existing folder is replaced only with ``force`` (and only if it is an earlier export or
empty). File names are fixed constants checked to stay inside the folder.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import torch

from ..config import FinetuneConfig, LatencyConfig, load_study_config
from ..errors import AutocompressError, StudyNotFoundError
from ..evaluate.candidate import baked_teacher
from ..evaluate.size import compressed_size, dense_size_bytes
from ..front import KINDS_ATTR, is_deployable, load_front, study_finetune
from ..latency.study import SPEED_ATTR
from ..plan import CompressionPlan
from ..runtime import Backend, BackendError, Kernels, TimingSpec, backend_for, get_backend
from ..runtime.onnx import export_onnx, graph_ops
from ..runtime.reference import REFERENCE_VERSION
from ..tasks import Task, load_task
from ..tasks.inputs import call
from ..tasks.inputs import spec as input_spec
from .card import (
    ARTIFACT_FORMAT,
    ARTIFACT_VERSION,
    FORMAT_FILES,
    INDEX_FILE,
    MODEL_JSON,
    ONNX_FILE,
    PLAN_FILE,
    README,
    SUMS,
    WEIGHTS_FILE,
    ArtifactError,
    ExportError,
    file_table,
    machine,
    render_readme,
    safe_path,
    versions,
    write_sums,
)
from .loader import (
    TORCH_FORMAT,
    OnnxModule,
    architecture_ref,
    builtin_architectures,
    load,
    rebuild_torch,
    verify_files,
)
from .materialize import materialize
from .measure import LATENCY_ROUNDS, MIN_REPEATS, accuracy, agreement
from .pack import pack_state

log = logging.getLogger(__name__)
FORMATS = ("onnx", "torch")
# kernel kinds a study scored with when it did not record them (studies before the runtime layer measured and
# predicted <= 4-bit weight-only layers as float)
LEGACY_KINDS = ("int8", "float")


@dataclass
class ExportResult:
    path: Path
    card: dict[str, Any] = field(default_factory=dict)


def parse_formats(formats: str | list[str] | tuple[str, ...]) -> list[str]:
    items = [f.strip() for f in formats.split(",")] if isinstance(formats, str) else list(formats)
    items = [f for f in items if f]
    bad = [f for f in items if f not in FORMATS]
    if bad or not items:
        raise ExportError(f"--format must list some of {', '.join(FORMATS)} (comma-separated), but got "
                          f"{','.join(items) or 'nothing'}")
    return [f for f in FORMATS if f in items]


def _replaceable(out: Path) -> bool:
    """Whether ``--force`` may replace ``out``: an empty folder or an earlier autocompress export."""
    if not out.is_dir() or out.is_symlink():
        return False
    entries = list(out.iterdir())
    if not entries:
        return True
    try:
        return json.loads((out / MODEL_JSON).read_text()).get("format") == ARTIFACT_FORMAT
    except (OSError, ValueError):
        return False


def check_target(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` unless ``force`` (and then only an earlier export or an empty folder)."""
    out = Path(out)
    if out.exists() or out.is_symlink():
        if not force:
            raise ExportError(f"{out} already exists; choose another folder or pass --force to replace it")
        if not _replaceable(out):
            raise ExportError(f"{out} exists and is not an autocompress export (nor empty): refusing to replace it "
                              "even with --force")


def _install(tmp: Path, out: Path, force: bool) -> None:
    """Rename the finished temporary folder to ``out`` (replacing an earlier export only with ``force``)."""
    check_target(out, force)
    os.chmod(tmp, 0o755)
    if out.exists():
        backup = out.parent / f".{out.name}.old-{os.getpid()}-{datetime.now().strftime('%H%M%S%f')}"
        os.rename(out, backup)
        try:
            os.rename(tmp, out)
        except BaseException:
            os.rename(backup, out)
            raise
        shutil.rmtree(backup, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _smoke(folder: Path, task: Task, formats: list[str]) -> None:
    """Load the folder through the public loader (checksums included) and run each format once."""
    with torch.no_grad():
        expected = call(task.model, task.example_input).shape
        for fmt in formats:
            model = load(folder, runtime=fmt, architecture=task.model)
            out = call(model, task.example_input)
            if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(expected):
                raise ExportError(f"the {fmt} artifact returned {getattr(out, 'shape', type(out).__name__)}, "
                                  f"expected shape {tuple(expected)}")
            if not torch.isfinite(out).all():
                raise ExportError(f"the {fmt} artifact returned non-finite outputs")


def export_plan(task: Task, plan: CompressionPlan, out: str | Path, *, formats: str | list[str] = FORMATS,
                finetune: str | int = "full", finetune_cfg: FinetuneConfig | None = None,
                latency_cfg: LatencyConfig | None = None, seed: int = 0, force: bool = False, measure: bool = True,
                source: dict[str, Any] | None = None, task_spec: str | None = None,
                task_options: dict[str, Any] | None = None, rounds: int = LATENCY_ROUNDS,
                kinds: list[str] | tuple[str, ...] | None = None,
                search_kernels: dict[str, Any] | None = None) -> ExportResult:
    """Materialize ``plan`` on ``task``'s teacher, fine-tune, pack, lower, measure and write ``out`` atomically.

    finetune: ``"full"`` (:data:`~.materialize.FULL_FINETUNE_STEPS`), ``"search"``, ``"none"`` or a step count
    measure:  measure accuracy (test and validation), latency (the study's latency backend, ``rounds`` interleaved
              rounds against the fp32 teacher) and size; off for the deployability gate (export and run once only)
    source:   where the plan came from (study, trial, pick, the trial's search-time figures) for the card
    task_spec / task_options: how to rebuild the task (a built-in name or ``package.module:function``)
    kinds:    kernel kinds the lowering may use (the study's ``kernel_kinds``: what its candidates were scored
              with); default: every kind the latency backend runs. Which kind each layer gets is decided by
              :func:`autocompress.runtime.resolve_kernels`, as in the search.
    search_kernels: the kernels the trial was scored with (its ``kernels`` attribute); the card says whether
              the export's are the same
    """
    fmts = parse_formats(formats)
    out = Path(out)
    check_target(out, force)
    parent = out.resolve().parent
    parent.mkdir(parents=True, exist_ok=True)
    ft_cfg, lat_cfg = finetune_cfg or FinetuneConfig(), latency_cfg or LatencyConfig()
    try:
        backend = backend_for(lat_cfg)
    except BackendError as e:
        raise ExportError(str(e)) from None
    # the ONNX artifact: lowered by the latency backend, or by ONNX Runtime (with the backend's kernel kinds)
    # when the backend runs modules (eager PyTorch)
    onnx_backend = backend if backend.files else get_backend("onnxruntime")
    allowed = backend.kinds if kinds is None else backend.kinds & frozenset(kinds)
    spec = task_spec or (task.name if task.name in builtin_architectures() else None)

    mat = materialize(task, plan, finetune=finetune, finetune_cfg=ft_cfg, seed=seed)
    cm = mat.cm
    size_objective, per_layer = compressed_size(cm)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=parent))
    try:
        with tempfile.TemporaryDirectory(prefix="autocompress-export-") as scratch_dir:
            scratch = Path(scratch_dir)
            # --- PyTorch artifact: plan + packed weights ---------------------------------------------------
            data, index = pack_state(cm.model, {n: b for n, b in cm.weight_bits.items()}, mat.scales,
                                     shared=cm.weight_sharing, entropy=cm.entropy_coding)
            arch = architecture_ref(task.model, spec, task_options)
            quantizers = [{"layer": layer, "module": cm.modules[layer][0], "bits": q.bits, "lo": q.lo, "hi": q.hi}
                          for layer, q in cm.input_quantizers.items()]
            meta = {"type": TORCH_FORMAT, "version": 1, "architecture": arch,
                    "inputs": input_spec(task.example_input),
                    "input_quantizers": quantizers, "weights": index}
            torch_dir = tmp if "torch" in fmts else scratch
            safe_path(torch_dir, WEIGHTS_FILE).write_bytes(data)
            safe_path(torch_dir, INDEX_FILE).write_text(json.dumps(meta, indent=1))
            safe_path(torch_dir, PLAN_FILE).write_text(plan.to_json(indent=2))
            # --- ONNX artifact: lowered to the runtime's kernels -------------------------------------------
            onnx_path = safe_path(tmp if "onnx" in fmts else scratch, ONNX_FILE)
            lowered = onnx_backend.lower(cm, task.example_input, mat.calibration, scratch, kinds=allowed)
            shutil.move(str(lowered.artifact), onnx_path)
            kernels = lowered.kernels
            low = {**kernels.to_dict(), "backend": onnx_backend.name, "kinds": sorted(allowed),
                   "graph_ops": graph_ops(onnx_path), "runtime_ops": onnx_backend.runtime_ops(onnx_path)}
            if search_kernels is not None:
                low["search_kernels_match"] = _same_kernels(kernels, Kernels.from_dict(search_kernels))
                if not low["search_kernels_match"]:
                    log.warning("the export's kernels differ from those the search scored this trial with: "
                                "%s vs %s", kernels.to_dict(), search_kernels)
            metrics = None
            if measure:
                metrics = _measure(task, cm, torch_dir, onnx_path, scratch, lat_cfg, backend, rounds, source,
                                   size_objective, len(data), mat.calibration)
        layers = {name: {"bits": cm.weight_bits.get(name), "sparsity": cm.sparsity.get(name),
                         "storage": s.storage, "numel": s.numel, "nnz": s.nnz, "objective_bits": s.size_bits,
                         "weight_sharing": s.shared, "entropy_coding": cm.entropy_coding.get(name, False)}
                  for name, s in per_layer.items()}
        for layer, mods in cm.modules.items():
            for m in mods:
                layers.setdefault(m, {})["act_bits"] = cm.act_bits.get(layer, 32)
        payload = [n for f in fmts for n in FORMAT_FILES[f]]
        card = {
            "format": ARTIFACT_FORMAT, "version": ARTIFACT_VERSION, "name": out.name,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "source": source or {}, "task": {"spec": spec or task.name, "options": task_options or {}},
            "architecture": arch, "formats": fmts,
            "inputs": meta["inputs"], "input": {"name": next(iter(meta["inputs"]))} | next(iter(meta["inputs"].values())),
            "output": {"name": "output"},
            "plan": plan.to_dict(), "plan_summary": plan.summary(), "skipped": cm.skipped,
            "finetune": mat.finetune, "lowering": low, "layers": layers,
            "latency_config": lat_cfg.model_dump(), "metric": task.metric.describe(), "metrics": metrics,
            "versions": versions(), "machine": machine(),
        }
        card["files"] = file_table(tmp, payload)
        safe_path(tmp, README).write_text(render_readme({**card, "files": card["files"]}))
        card["files"][README] = file_table(tmp, [README])[README]
        safe_path(tmp, MODEL_JSON).write_text(json.dumps(card, indent=2, default=_json_default))
        write_sums(tmp, [*payload, README, MODEL_JSON])
        _smoke(tmp, task, fmts)
        _install(tmp, out, force)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(path=out, card=card)


def _same_kernels(a: Kernels, b: Kernels) -> bool:
    return all(sorted(getattr(a, k)) == sorted(getattr(b, k)) for k in ("int8", "int4", "float"))


def teacher_artifact(task: Task, backend: Backend, folder: Path):
    """The fp32 teacher lowered on ``backend`` (the reference every export and verify times against)."""
    folder.mkdir(parents=True, exist_ok=True)
    return backend.lower(baked_teacher(task), task.example_input, [], folder).artifact


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serializable: {type(o).__name__}")


def _measure(task: Task, cm, torch_dir: Path, onnx_path: Path, scratch: Path, lat_cfg: LatencyConfig,
             backend: Backend, rounds: int, source: dict[str, Any] | None, size_objective: int,
             weights_bytes: int, calibration) -> dict[str, Any]:
    metric = task.metric
    rebuilt = rebuild_torch(torch_dir, architecture=task.model)
    onnx_model = OnnxModule(onnx_path, threads=lat_cfg.threads)
    data = task.test if task.test is not None else task.val
    agree = agreement(rebuilt, onnx_model, data)
    with torch.no_grad():
        same = float((call(rebuilt, task.example_input) - call(cm.model, task.example_input)).abs().max())
    teacher = teacher_artifact(task, backend, scratch / "teacher")
    export = onnx_path if backend.files else backend.lower(cm, task.example_input, calibration, scratch).artifact
    timed = backend.time({"teacher": teacher, "export": export}, task.example_input,
                         TimingSpec.of(lat_cfg, rounds=rounds, min_runs=MIN_REPEATS))
    lat = {k: t.record() for k, t in timed.items()}
    teacher_onnx = scratch / "teacher.onnx"
    export_onnx(task.model, task.example_input, teacher_onnx)
    predicted = (source or {}).get("search", {}).get("latency_ms")
    # the search's latencies are at the study's reference speed: the export's, converted to that speed, compare
    study_ref = (source or {}).get("search_reference_ms")
    at_study = timed["export"].at_speed(study_ref) if study_ref else lat["export"]["median_ms"]
    teacher_bytes = dense_size_bytes(task.model)
    onnx_bytes = onnx_path.stat().st_size
    teacher_onnx_bytes = teacher_onnx.stat().st_size
    export_ms, teacher_ms = lat["export"]["median_ms"], lat["teacher"]["median_ms"]
    return {
        "accuracy": {
            "split": "test" if task.test is not None else "validation",
            "teacher_test": accuracy(task.model, task.test, metric),
            "teacher_val": accuracy(task.model, task.val, metric),
            "torch_test": accuracy(rebuilt, task.test, metric), "torch_val": accuracy(rebuilt, task.val, metric),
            "onnx_test": accuracy(onnx_model, task.test, metric), "onnx_val": accuracy(onnx_model, task.val, metric),
            "onnx_torch_agreement": agree["argmax"], "onnx_torch_max_abs_diff": agree["max_abs_diff"],
            "torch_artifact_vs_memory_max_abs_diff": same,
        },
        "latency": {
            "backend": backend.name, "threads": lat_cfg.threads, "batch_size": lat_cfg.batch_size,
            "rounds": rounds, "repeats_per_round": lat["export"]["repeats"],
            "teacher_ms": teacher_ms, "export_ms": export_ms, "speedup": teacher_ms / export_ms,
            "teacher_rounds_ms": lat["teacher"]["rounds_ms"], "export_rounds_ms": lat["export"]["rounds_ms"],
            "teacher_spread": lat["teacher"]["spread"], "export_spread": lat["export"]["spread"],
            "export_p10_ms": lat["export"]["p10_ms"], "export_p90_ms": lat["export"]["p90_ms"],
            "teacher_normalized": lat["teacher"]["normalized"], "export_normalized": lat["export"]["normalized"],
            "reference_ms": lat["export"]["reference_ms"], "reference_version": REFERENCE_VERSION,
            "study_reference_ms": study_ref,
            "export_at_study_speed_ms": at_study,
            "predicted_ms": predicted, "predicted_source": "the trial's search-time latency",
            "vs_predicted": None if not predicted else at_study / predicted - 1,
        },
        "size": {
            "objective_bytes": size_objective, "teacher_bytes": teacher_bytes,
            "weights_bin_bytes": weights_bytes, "weights_bin_vs_objective": weights_bytes / size_objective - 1,
            "weights_bin_ratio": teacher_bytes / weights_bytes, "onnx_bytes": onnx_bytes,
            "teacher_onnx_bytes": teacher_onnx_bytes, "onnx_ratio": teacher_onnx_bytes / onnx_bytes,
        },
    }


# --- from a study ---------------------------------------------------------------------------------------------

@dataclass
class StudySource:
    """A study's front plus what is needed to rebuild its task and settings."""

    front: Any
    storage_url: str
    task_spec: str
    task_options: dict[str, Any]
    finetune: FinetuneConfig
    latency: LatencyConfig
    seed: int
    config_path: Path | None
    notes: list[str] = field(default_factory=list)


def redact(url: str) -> str:
    return re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", url)


def open_study_source(target: str, study_name: str | None = None) -> StudySource:
    """A study config (YAML), a results folder (holding study.db) or a storage URL -> :class:`StudySource`."""

    path = Path(target)
    loaded, notes = None, []
    if "://" in target:
        url = target
    elif path.suffix in (".yaml", ".yml"):
        loaded = load_study_config(path)
        url, study_name = loaded.storage_url, study_name or loaded.study_name
    elif path.is_dir():
        if not (path / "study.db").is_file():
            raise StudyNotFoundError(f"{path} holds no study.db (is it a study's results folder?)")
        url = f"sqlite:///{(path / 'study.db').resolve()}"
        sibling = path.parent / f"{path.name}.yaml"
        if sibling.is_file():
            try:
                cand = load_study_config(sibling)
                if cand.study_dir == path.resolve() and cand.storage_url == url:
                    loaded = cand
            except AutocompressError:
                pass
    else:
        raise StudyNotFoundError(f"{target}: not a study config (.yaml), a results folder or a storage URL")
    front = load_front(url, study_name)
    if loaded is not None:
        cfg = loaded.config
        spec, options, ft, lat, seed = cfg.task, dict(cfg.task_options), cfg.finetune, cfg.latency, cfg.seed
    else:
        study = optuna.load_study(study_name=front.study_name, storage=url)
        spec = study.user_attrs.get("task")
        if not spec:
            raise StudyNotFoundError(f"study {front.study_name!r} does not record its task; export from its config")
        options, ft, lat, seed = {}, FinetuneConfig(), LatencyConfig(), 0
        notes.append("no study config found: task options, fine-tune and latency settings are the defaults; "
                     "export from the config (YAML) to use the study's own")
    return StudySource(front=front, storage_url=url, task_spec=spec, task_options=options, finetune=ft,
                       latency=lat, seed=seed, config_path=loaded.config_path if loaded else None, notes=notes)


def export_from_study(target: str, out: str | Path, *, trial: int | None = None, pick: str | None = None,
                      by: str | None = None, study_name: str | None = None, formats: str | list[str] = FORMATS,
                      finetune: str | int = "full", force: bool = False, task: Task | None = None,
                      rounds: int = LATENCY_ROUNDS, measure: bool = True) -> ExportResult:
    """Export trial ``trial``, or the front member ``pick`` selects (best by ``by``), of a study, with the kernel
    kinds the study scored its candidates with; ``by`` defaults to the task's metric."""

    if (trial is None) == (pick is None):
        raise ExportError("give exactly one of --trial N or --pick 'EXPR'")
    parse_formats(formats)
    check_target(Path(out), force)  # before any expensive work
    src = open_study_source(target, study_name)
    front = src.front
    if pick is not None:
        row = front.pick(pick, by=by)
    else:
        rows = front.trials[front.trials["trial"] == trial]
        if rows.empty:
            failed = front.failed[front.failed["trial"] == trial]
            why = (f"it {failed.iloc[0]['state'].lower()}ed: {failed.iloc[0]['reason']}" if not failed.empty
                   else "no completed trial has that number")
            raise ExportError(f"cannot export trial {trial} of study {front.study_name!r}: {why}; completed "
                              f"trials: {sorted(int(t) for t in front.trials['trial'])[:30]}")
        row = rows.iloc[0]
    number = int(row["trial"])

    study = optuna.load_study(study_name=front.study_name, storage=src.storage_url)
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    deployable = is_deployable(study.user_attrs, frozen)
    if not deployable:
        err = study.user_attrs.get(f"deploy:{number}", {}).get("deploy_error", "")
        log.warning("trial %d was marked not deployable by the study's gate (%s); exporting it anyway", number, err)
    for note in src.notes:
        log.warning(note)
    task = task or load_task(src.task_spec, src.task_options)
    speed = study.user_attrs.get(SPEED_ATTR) or {}
    source = {
        "study": front.study_name, "storage": redact(src.storage_url),
        "config": str(src.config_path) if src.config_path else None, "trial": number, "pick": pick,
        "by": (by or front.metric_name) if pick is not None else None, "on_front": bool(row["on_front"]), "deployable_in_study": deployable,
        "search": {k: (None if row[k] is None or (isinstance(row[k], float) and np.isnan(row[k])) else
                       float(row[k]))
                   for k in ("accuracy", "test_accuracy", "latency_ms", "size_bytes", "compression_ratio")},
        "search_teacher": front.teacher, "search_finetune_steps": src.finetune.steps, "notes": src.notes,
        # a study timed against another version of the reference workload: its speed does not convert
        "search_reference_ms": speed.get("reference_ms") if speed.get("version") == REFERENCE_VERSION else None,
    }
    return export_plan(task, front.plans[number], out, formats=formats, finetune=finetune,
                       finetune_cfg=study_finetune(src.finetune, study.user_attrs), latency_cfg=src.latency,
                       seed=src.seed + number, force=force,
                       measure=measure, source=source, task_spec=src.task_spec, task_options=src.task_options,
                       rounds=rounds, kinds=study.user_attrs.get(KINDS_ATTR, LEGACY_KINDS),
                       search_kernels=frozen.user_attrs.get("kernels"))


# --- verify ----------------------------------------------------------------------------------------------------

@dataclass
class VerifyReport:
    """Card figures against fresh measurements; ``ok`` when every compared row is within tolerance."""

    path: Path
    rows: list[dict[str, Any]]

    @property
    def ok(self) -> bool:
        return all(r["ok"] is not False for r in self.rows)

    def table(self) -> str:
        width = max(len(r["what"]) for r in self.rows)
        lines = [f"{'':{width}}  {'card':>12}  {'measured':>12}  check"]
        for r in self.rows:
            card = "" if r["card"] is None else f"{r['card']:.5g}"
            got = "" if r["measured"] is None else f"{r['measured']:.5g}"
            mark = {True: "ok", False: "DIFFERS", None: "-"}[r["ok"]]
            lines.append(f"{r['what']:{width}}  {card:>12}  {got:>12}  {mark} {r.get('rule', '')}")
        return "\n".join(lines)


def verify(path: str | Path, *, task: Task | None = None, rounds: int = 3, acc_tol: float = 0.005,
           latency_tol: float = 0.25) -> VerifyReport:
    """Check checksums, then re-measure accuracy (test and validation) and latency and compare with the card.

    acc_tol:     largest allowed metric difference: absolute for a metric with a range, as a share of it (0.005 =
                 half a point of accuracy); relative for a metric without one (0.005 = 0.5 % of perplexity)
    latency_tol: largest allowed relative latency difference (0.25 = 25 %; latency depends on the machine and
                 its load, the speedup over the teacher measured alongside is steadier)
    """
    folder = Path(path)
    card = verify_files(folder)
    spec, options = card["task"]["spec"], card["task"].get("options") or {}
    given = task is not None  # a task passed in is also the architecture to rebuild on
    if task is None:
        try:
            task = load_task(spec, options)
        except AutocompressError as e:
            raise ArtifactError(f"cannot rebuild the task {spec!r} to re-measure on ({e}); pass task=") from None
    m = card.get("metrics") or {}
    acc, lat = m.get("accuracy", {}), m.get("latency", {})
    rows: list[dict[str, Any]] = []

    def row(what: str, expected: float | None, got: float | None, *, rel: float | None = None,
            absolute: float | None = None) -> None:
        ok = None
        rule = ""
        if expected is not None and got is not None:
            if absolute is not None:
                ok, rule = abs(got - expected) <= absolute + 1e-12, f"(|diff| <= {absolute:g})"
            elif rel is not None:
                ok, rule = abs(got / expected - 1) <= rel, f"(within {rel:.0%})"
        rows.append({"what": what, "card": expected, "measured": got, "ok": ok, "rule": rule})

    arch = task.model if given or card.get("architecture", {}).get("kind") == "unknown" else None
    models = {}
    for fmt in card.get("formats", []):
        models[fmt] = load(folder, runtime=fmt, architecture=arch)
    # a metric with a range (accuracy in [0, 1]) is compared in absolute terms, one without (perplexity) relatively
    ranged = task.metric.range is not None
    tol = {"absolute": acc_tol * (task.metric.range[1] - task.metric.range[0])} if ranged else {"rel": acc_tol}
    name = task.metric.name
    for fmt, model in models.items():
        for split, data in (("test", task.test), ("val", task.val)):
            if data is not None:
                row(f"{split} {name} ({fmt})", acc.get(f"{fmt}_{split}"), accuracy(model, data, task.metric), **tol)
    row(f"teacher test {name}", acc.get("teacher_test"), accuracy(task.model, task.test, task.metric), **tol)
    if "onnx" in models:
        cfg = LatencyConfig(**card.get("latency_config", {}))
        try:
            backend = backend_for(cfg)
        except BackendError as e:
            raise ArtifactError(f"cannot re-measure latency: {e}") from None
        with tempfile.TemporaryDirectory(prefix="autocompress-verify-") as tmp:
            teacher = teacher_artifact(task, backend, Path(tmp) / "teacher")
            export = folder / ONNX_FILE if backend.files else models.get("torch", models["onnx"])
            got = backend.time({"teacher": teacher, "export": export}, task.example_input,
                               TimingSpec.of(cfg, rounds=rounds, min_runs=MIN_REPEATS))
        t_ms, e_ms = got["teacher"].latency_ms, got["export"].latency_ms
        row(f"latency ms (export, {backend.name})", lat.get("export_ms"), e_ms, rel=latency_tol)
        row("latency ms (fp32 teacher)", lat.get("teacher_ms"), t_ms, rel=latency_tol)
        # relative to the reference workload (steadier than ms), where the card was timed against the same one
        if lat.get("export_normalized") is not None and lat.get("reference_version", 1) == REFERENCE_VERSION:
            row("latency / reference (export)", lat["export_normalized"], got["export"].normalized, rel=latency_tol)
        row("speedup over the teacher", lat.get("speedup"), t_ms / e_ms, rel=latency_tol)
    return VerifyReport(path=folder, rows=rows)


__all__ = ["export_plan", "export_from_study", "verify", "ExportResult", "VerifyReport", "parse_formats",
           "open_study_source", "check_target", "FORMATS", "SUMS"]
