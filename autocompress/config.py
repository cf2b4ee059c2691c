"""Study configs and search spaces: YAML files validated by pydantic.

Every error names the file, the field path, the bad value and what is allowed, and raises
:class:`~autocompress.errors.ConfigError` (exit code 2 on the command line). Loading writes nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    create_model,
    field_validator,
    model_validator,
)

from .compress import registry
from .errors import ConfigError

# --- allowed values, in one place so errors and docs agree (per-layer knobs: the method registry) ----------
OBJECTIVES = {"accuracy": "maximize", "latency_ms": "minimize", "size_bytes": "minimize"}  # for an accuracy metric
COST_OBJECTIVES = ("latency_ms", "size_bytes")  # always minimized; the other objective is the task's metric
SAMPLERS = ("nsga2", "tpe", "gp", "random")
LAYER_TYPES = ("Conv1d", "Conv2d", "Linear")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


def _nonempty(values: list[Any]) -> list[Any]:
    if not values:
        raise ValueError("must list at least one choice")
    return values


def _check_range(values: list[float], lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False,
                 ) -> list[float]:
    _nonempty(values)
    for v in values:
        bad_lo = v <= lo if lo_open else v < lo
        bad_hi = v >= hi if hi_open else v > hi
        if bad_lo or bad_hi:
            interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
            raise ValueError(f"every choice must be in {interval}, but got {v}")
    return values


class _LayerGroupBase(_Strict):
    """Choices for a group of layers, selected by module type and/or a regular expression on the name.

    A layer belongs to the first group that selects it; layers no group selects stay as they are. Besides
    ``name``, ``types``, ``names`` and ``per_layer``, a group has one list of choices per knob of the registered
    compression methods (:mod:`autocompress.compress.registry`; :class:`autocompress.plan.LayerPlan` documents
    each), each defaulting to ``[<unchanged>]``. A method's rules between knobs hold for the choice lists too,
    e.g. a group that may share weights must keep float inputs.
    """

    name: str = Field(pattern=r"^[A-Za-z0-9_\-]+$")
    types: list[Literal["Conv1d", "Conv2d", "Linear"]] = Field(default_factory=lambda: ["Conv2d", "Linear"])
    names: str | None = None
    per_layer: bool = True

    @field_validator("*")
    @classmethod
    def _knob_choices(cls, v: Any, info: ValidationInfo) -> Any:
        knob = registry.KNOBS.get(info.field_name or "")
        if knob is None:
            return v
        _nonempty(v)
        if len(set(v)) != len(v):
            raise ValueError(f"choices must not repeat, but got {v}")
        for value in v:
            why = knob.check(value)
            if why:
                raise ValueError(f"every choice {why}")
        return v

    @model_validator(mode="after")
    def _method_rules(self) -> _LayerGroupBase:
        choices = {name: getattr(self, name) for name in registry.KNOBS}
        for method in registry.METHODS:
            why = method.check_choices(choices)
            if why:
                raise ValueError(f"group {self.name!r}: {why}")
        return self

    @field_validator("names")
    @classmethod
    def _regex(cls, v: str | None) -> str | None:
        if v is not None:
            try:
                re.compile(v)
            except re.error as e:
                raise ValueError(f"is not a valid regular expression ({e})") from None
        return v

    def selects(self, name: str, type_name: str) -> bool:
        """Whether this group selects the layer called ``name`` of class ``type_name``."""
        if type_name not in self.types:
            return False
        return self.names is None or re.search(self.names, name) is not None


def _choices_field(knob: Any) -> tuple[Any, Any]:
    return list[knob.type], Field(default_factory=lambda: [knob.default], description=knob.doc)


LayerGroup = create_model("LayerGroup", __base__=_LayerGroupBase, __module__=__name__,
                          **{k.name: _choices_field(k) for k in registry.KNOBS.values()})  # type: ignore[call-overload]


class StudentSpace(_Strict):
    """Whole-model student size: width multiplies every hidden layer's channels, depth the number of blocks."""

    width: list[float] = Field(default_factory=lambda: [1.0])
    depth: list[float] = Field(default_factory=lambda: [1.0])

    @field_validator("width", "depth")
    @classmethod
    def _ratio(cls, v: list[float]) -> list[float]:
        return _check_range(v, 0.0, 1.0, lo_open=True)


class DistillSpace(_Strict):
    """Knowledge-distillation settings used when fine-tuning a candidate against the teacher.

    loss = alpha * T^2 * KL(teacher/T || student/T) + (1 - alpha) * CE(labels)
           + feature_mse * MSE(matching-shape layer outputs) + l1 * sum|w| (compressed layers)
    """

    temperature: list[float] = Field(default_factory=lambda: [4.0])
    alpha: list[float] = Field(default_factory=lambda: [0.7])
    feature_mse: list[float] = Field(default_factory=lambda: [0.0])
    l1: list[float] = Field(default_factory=lambda: [0.0])

    @field_validator("temperature")
    @classmethod
    def _temp(cls, v: list[float]) -> list[float]:
        return _check_range(v, 0.0, 100.0, lo_open=True)

    @field_validator("alpha")
    @classmethod
    def _alpha(cls, v: list[float]) -> list[float]:
        return _check_range(v, 0.0, 1.0)

    @field_validator("feature_mse", "l1")
    @classmethod
    def _weight(cls, v: list[float]) -> list[float]:
        return _check_range(v, 0.0, 1e6)


class SearchSpaceConfig(_Strict):
    """A declarative search space (``search_spaces/*.yaml``)."""

    version: Literal[1] = 1
    groups: list[LayerGroup]
    student: StudentSpace = Field(default_factory=StudentSpace)
    distill: DistillSpace = Field(default_factory=DistillSpace)
    # pruned channel counts are rounded to multiples of this (1 = exact counts); see StudentPlan
    channel_multiple: int = Field(default=1, ge=1, le=256)

    @field_validator("groups")
    @classmethod
    def _groups(cls, v: list[LayerGroup]) -> list[LayerGroup]:
        _nonempty(v)
        names = [g.name for g in v]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"group names must be unique, but {sorted(dup)} repeat")
        return v


class Constraints(_Strict):
    """Feasibility limits. Infeasible trials stay in the study but are marked and never on the front."""

    min_accuracy: float | None = Field(default=None, ge=0.0, le=1.0)
    min_metric: float | None = None  # the task's metric at least this (any metric; min_accuracy is its [0, 1] form)
    max_metric: float | None = None  # the task's metric at most this (e.g. perplexity)
    max_latency_ms: float | None = Field(default=None, gt=0.0)
    max_size_bytes: int | None = Field(default=None, gt=0)


class FinetuneConfig(_Strict):
    """Knowledge-distillation fine-tuning of candidates.

    steps:      mini-batches at the ``short`` fidelity level
    full_steps: mini-batches at the ``full`` level (fine-tuning to convergence; what export uses)
    student_steps: mini-batches distilling each student size (width/depth below 1) once, before the candidates of
                that size apply the rest of their plan to it (default: 3 x ``steps``: a student needs far more steps
                to recover than a plan on top of it; 0 = candidates start from the teacher)
    lr:         Adam learning rate (cosine-annealed within each level's steps)
    short_lr:   learning rate of a candidate's first ``steps`` mini-batches, the short level: ``auto`` (default)
                = chosen by a range test when a study starts (:mod:`autocompress.search.learning_rate`; outside a
                study, ``lr``), a number, or None = ``lr``. The rest, up to ``full_steps``, train at ``lr``. Export
                trains the pick the same way (a study's promoted candidate and the exported one follow one
                schedule).
    calibration_batches: training batches (of 32) used for activation ranges and BatchNorm recalibration
    device:     where candidates fine-tune and are evaluated: ``auto`` (CUDA when available, else CPU), ``cpu``,
                ``cuda``, ``cuda:N`` or ``mps``; the study config's top-level ``device`` sets it. Latency is
                measured on the latency backend's own target whatever this is.
    """

    steps: int = Field(default=200, ge=0)
    full_steps: int = Field(default=1500, ge=1)
    student_steps: int | None = Field(default=None, ge=0)
    batch_size: int = Field(default=64, ge=1)
    lr: float = Field(default=1e-3, gt=0.0)
    short_lr: Annotated[float, Field(gt=0.0)] | Literal["auto"] | None = "auto"
    calibration_batches: int = Field(default=4, ge=1)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?|mps)$")

    @model_validator(mode="after")
    def _order(self) -> FinetuneConfig:
        if self.full_steps < self.steps:
            raise ValueError(f"`full_steps` ({self.full_steps}) must be at least `steps` ({self.steps})")
        return self


FIDELITY_LEVELS = ("zero-shot", "short", "full")


class FidelityConfig(_Strict):
    """How candidates' accuracy is estimated, cheaply first (see docs: the fidelity ladder).

    proxy:     the level whose validation accuracy is the study's accuracy objective
               zero-shot = plan applied, BatchNorm recalibrated, no training; short = ``finetune.steps`` of KD;
               full = ``finetune.full_steps`` of KD
    promotion: multi-objective successive halving: every candidate is scored at zero-shot first, and only the best
               1/eta at each rung (non-dominated sorting, crowding distance for ties) goes on to the next level
    eta:       promotion rate denominator
    self_check: number of candidates (chosen at random) also fine-tuned at full fidelity, to measure how well the
               proxy ranks candidates (Kendall tau stored in the study); 0 = off
    min_tau:   warn when the measured Kendall tau is below this
    """

    proxy: Literal["zero-shot", "short", "full"] = "short"
    promotion: bool = True
    eta: int = Field(default=3, ge=2)
    self_check: int = Field(default=8, ge=0)
    min_tau: float = Field(default=0.6, ge=-1.0, le=1.0)


class LatencyConfig(_Strict):
    """How latency is obtained: predicted from a latency profile, or measured (the materialized candidate, timed
    in ONNX Runtime). See :mod:`autocompress.latency.study`.

    predictor: path of a profile (``autocompress profile -o PATH``); relative to the config's folder
    measure:   true = always measure; false = always predict (this machine's profile); unset (default) = predict
               when this machine has a profile (``autocompress profile``), otherwise measure
    fallback:  what to do with a candidate needing a kernel the profile has not measured: ``error`` or ``measure``
    backend:   a runtime of :mod:`autocompress.runtime` (checked against its registry when a study starts):
               ``onnxruntime`` (default; int8 QDQ, int4 MatMulNBits and float kernels), ``openvino`` (OpenVINO's CPU
               plugin, int8 and float; ``pip install autocompress[openvino]``) or ``torch`` (eager PyTorch on CPU:
               float kernels only; predicted from an ``autocompress profile --backend torch`` profile)
    device:    onnxruntime: an execution provider (default ``CPUExecutionProvider``; ``CUDAExecutionProvider``,
               ``TensorrtExecutionProvider`` where installed); openvino: a device (default ``CPU``)
    """

    measure: bool | None = None
    predictor: str | None = None
    fallback: Literal["error", "measure"] = "error"
    backend: str = Field(default="onnxruntime", pattern=r"^[a-z0-9_]+$")
    device: str | None = None
    threads: int = Field(default=1, ge=1, le=256)
    batch_size: int = Field(default=1, ge=1)
    warmup: int = Field(default=20, ge=0)
    repeats: int = Field(default=100, ge=3)

    @model_validator(mode="after")
    def _mode(self) -> LatencyConfig:
        if self.measure is True and self.predictor:
            raise ValueError("set either `measure: true` (measure every candidate) or `predictor: PATH` (predict "
                             "from a latency profile), not both")
        return self


class StudyConfig(_Strict):
    """A study: which task, which search space, which objectives, how long, where results go.

    ``warm_start`` queues a few uniform plans (int8 weights and inputs; 8, 4 and 3-bit weights, with and without
    sparsity) as the first trials of a new study, so the front starts from what an expert would try first; the
    sampler does the rest.

    ``sensitivity`` scores every layer's choices once, at the start of a new study (one zero-shot probe per layer
    and knob value, :mod:`autocompress.search.sensitivity`); with ``warm_start``, the plans losing least within a
    spread of latency and size budgets are queued after uniform int8, and choices far beyond every budget are left
    out of the search (:mod:`autocompress.search.warmstart`). ``false``: the space as written, uniform warm starts
    only. ``tie_layers`` (with ``sensitivity``): the layers of a deep per-layer group that scored alike share
    their parameters, a few tied sections instead of one per layer (:func:`autocompress.search.warmstart.ties`).
    """

    name: str | None = Field(default=None, pattern=r"^[A-Za-z0-9_.\-]+$")
    task: str
    task_options: dict[str, Any] = Field(default_factory=dict)
    search_space: str | SearchSpaceConfig
    objectives: dict[str, Literal["maximize", "minimize"]] | None = None  # default: metric, latency_ms, size_bytes
    constraints: Constraints = Field(default_factory=Constraints)
    sampler: Literal["nsga2", "tpe", "gp", "random"] = "tpe"
    population_size: int | None = Field(default=None, ge=2)
    n_trials: int | None = Field(default=30, ge=1)
    timeout_s: float | None = Field(default=None, gt=0)
    trial_timeout_s: float | None = Field(default=None, gt=0)  # a longer trial is stopped and recorded failed
    heartbeat_s: int = Field(default=10, ge=1, le=3600)  # a running trial silent for 3x this is failed and retried
    seed: int = 0
    warm_start: bool = True
    sensitivity: bool = True
    tie_layers: bool = True
    deployability_gate: bool = True  # export and run every front member before reporting the front
    storage: str | None = None
    finetune: FinetuneConfig = Field(default_factory=FinetuneConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    latency: LatencyConfig = Field(default_factory=LatencyConfig)

    @field_validator("objectives")
    @classmethod
    def _objectives(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        if v is None:
            return v
        if not v:
            raise ValueError(f"must name at least one objective: the task's metric (e.g. accuracy), "
                             f"{', '.join(COST_OBJECTIVES)}")
        metrics = [n for n in v if n not in COST_OBJECTIVES]
        if len(metrics) > 1:
            raise ValueError(f"names {metrics}: only one objective can be the task's metric; the others must be "
                             f"{' or '.join(COST_OBJECTIVES)}")
        for name, direction in v.items():
            if name in COST_OBJECTIVES and direction != "minimize":
                raise ValueError(f"objective {name!r} must be 'minimize', but got {direction!r}")
            if not name.isidentifier():
                raise ValueError(f"objective {name!r} is not a metric name (an identifier such as accuracy)")
        return v

    def objectives_for(self, metric: str, direction: str, *, file: str | None = None) -> dict[str, str]:
        """The study's objectives for a task whose metric is ``metric`` (maximized or minimized): the config's,
        checked against it, or by default the metric, latency_ms and size_bytes. Raises ConfigError."""
        if self.objectives is None:
            return {metric: direction, "latency_ms": "minimize", "size_bytes": "minimize"}
        for name, d in self.objectives.items():
            if name in COST_OBJECTIVES:
                continue
            if name != metric:
                raise ConfigError(f"objective {name!r} is not the task's metric; the task scores {metric!r} "
                                  f"({direction}d): allowed objectives are {metric}, {', '.join(COST_OBJECTIVES)}",
                                  field="objectives", value=name, file=file)
            if d != direction:
                raise ConfigError(f"the task's metric {metric!r} is {direction}d, but the config asks it {d}d",
                                  field="objectives", value=d, file=file)
        return dict(self.objectives)

    @model_validator(mode="before")
    @classmethod
    def _device(cls, data: Any) -> Any:
        """The top-level ``device`` is where candidates train: it is kept on the fine-tuning settings."""
        if isinstance(data, dict) and "device" in data:
            data = dict(data)
            device = data.pop("device")
            finetune = dict(data.get("finetune") or {})
            if "device" in finetune and finetune["device"] != device:
                raise ValueError(f"`device` ({device!r}) and `finetune.device` ({finetune['device']!r}) disagree; "
                                 "give one")
            data["finetune"] = {**finetune, "device": device}
        return data

    @model_validator(mode="after")
    def _budget(self) -> StudyConfig:
        if self.n_trials is None and self.timeout_s is None:
            raise ValueError("set `n_trials` or `timeout_s` (or both), otherwise the study never ends")
        if self.population_size is not None and self.sampler != "nsga2":
            raise ValueError(f"`population_size` is only used by `sampler: nsga2` (this config has `sampler: "
                             f"{self.sampler}`); remove it or set `sampler: nsga2`")
        return self


class LoadedStudy(BaseModel):
    """A validated study config together with the paths it resolves to."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    config: StudyConfig
    space: SearchSpaceConfig
    config_path: Path
    study_name: str
    study_dir: Path
    storage_url: str


# --- loading -----------------------------------------------------------------------------------------------

def _field_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part in ("function-after", "function-before") or str(part).startswith(("str", "SearchSpaceConfig")):
            continue
        else:
            out += ("." if out else "") + str(part)
    return out


def _from_validation_error(err: ValidationError, file: Path, prefix: str = "") -> ConfigError:
    lines = []
    for e in err.errors(include_url=False):
        field = _field_path(tuple(e["loc"]))
        if prefix:
            field = f"{prefix}.{field}" if field else prefix
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            parent = field.rsplit(".", 1)[0] if "." in field else "(top level)"
            msg = f"unknown key under {parent}"
        value = e.get("input")
        shown = "" if e["type"] in ("missing",) or isinstance(value, dict) else f" (got {value!r})"
        lines.append(f"field `{field or '(top level)'}`: {msg}{shown}")
    head = f"{file}: invalid config, {len(lines)} problem{'s' if len(lines) > 1 else ''}: "
    error = ConfigError(head + "; ".join(lines))
    error.file = str(file)
    return error


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping, turning every failure into a :class:`ConfigError` naming the file."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError("file not found", file=str(path))
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"malformed YAML{where}: {getattr(e, 'problem', e)}", file=str(path)) from None
    except UnicodeDecodeError:
        raise ConfigError("is not a text (UTF-8) file", file=str(path)) from None
    if not isinstance(data, dict):
        raise ConfigError("the top level must be a mapping of `key: value` lines", file=str(path),
                          value=type(data).__name__, has_value=True)
    return data


def load_search_space(path: str | Path) -> SearchSpaceConfig:
    """Load and validate a search space YAML file."""
    path = Path(path)
    try:
        return SearchSpaceConfig.model_validate(read_yaml(path))
    except ValidationError as e:
        raise _from_validation_error(e, path) from None


BUILTIN_SPACES = Path(__file__).parent / "search_spaces"  # shipped with the package: default, small, ...


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in BUILTIN_SPACES.glob("*.yaml"))


def resolve_search_space(value: str, base: Path, *, file: str | None = None) -> Path:
    """A search space file: ``value`` beside ``base``, in the current directory, or a built-in space's name
    (``default``, ``small``, ``deep_compression``)."""
    candidates = [base / value, Path(value)]
    if not Path(value).suffix:
        candidates.append(BUILTIN_SPACES / f"{value}.yaml")
    found = next((p for p in candidates if p.is_file()), None)
    if found is None:
        raise ConfigError(f"search space file not found (looked beside the config and in the current directory; "
                          f"built-in spaces: {', '.join(builtin_spaces())})", file=file, field="search_space",
                          value=value)
    return found


def load_study_config(path: str | Path) -> LoadedStudy:
    """Load a study config, resolve its search space and results folder. Writes nothing.

    Relative paths in the config (``search_space``) are resolved against the config file's folder first,
    then the current directory. Results go in a folder beside the config named after it
    (``studies/quickstart.yaml`` -> ``studies/quickstart/``), with an SQLite database there by default.
    """
    path = Path(path)
    try:
        cfg = StudyConfig.model_validate(read_yaml(path))
    except ValidationError as e:
        raise _from_validation_error(e, path) from None
    if isinstance(cfg.search_space, SearchSpaceConfig):
        space = cfg.search_space
    else:
        space = load_search_space(resolve_search_space(cfg.search_space, path.parent, file=str(path)))
    name = cfg.name or path.stem
    study_dir = (path.parent / path.stem).resolve()
    storage = cfg.storage or f"sqlite:///{study_dir / 'study.db'}"
    if not re.match(r"^[a-z][a-z0-9+]*://", storage):
        raise ConfigError("must be a database URL such as sqlite:///path/study.db or postgresql://user@host/db",
                          file=str(path), field="storage", value=storage)
    return LoadedStudy(config=cfg, space=space, config_path=path.resolve(), study_name=name,
                       study_dir=study_dir, storage_url=storage)
