"""Preparing a study: everything before its trials run, done once per study (and once per worker process).

:func:`prepare_study` loads the task, binds the search space to the teacher's layers, picks the latency mode (all
before anything is written: a bad profile or backend leaves no half-made study), opens or creates the study in its
storage, and (once per study, whichever worker gets there first) measures the teacher, scores its layers
(:mod:`.sensitivity`; budgeted plans and the narrowed space: :mod:`.warmstart`), chooses the short level's
learning rate (:mod:`.learning_rate`) and queues the warm-start plans.
The result, a :class:`PreparedStudy`, is what an executor (:mod:`.local`, :mod:`.ray_backend`) runs trials of.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from dataclasses import dataclass

import optuna

from ..compress.layers import discover_layers, left_alone
from ..config import OBJECTIVES, LoadedStudy
from ..errors import ConfigError
from ..front import KINDS_ATTR, METRIC_ATTR, study_finetune
from ..latency.study import prepare as prepare_latency
from ..latency.study import study_reference
from ..space import SearchSpace
from ..tasks import Task, check_task, load_task
from ..tasks.inputs import resolve_device
from . import learning_rate, sensitivity, warmstart, workers
from .fidelity import rungs
from .objective import TeacherReference, measure_teacher
from .trial import TrialRunner

log = logging.getLogger(__name__)

# Uniform plans queued first (weight bits, sparsity, activation bits): what an expert tries first, the first being
# one uniform int8 post-training quantization (8-bit weights and inputs: int8 kernels on the runtime).
WARM_START = ((8, 0.0, 8), (8, 0.0, 32), (4, 0.0, 32), (4, 0.5, 32), (3, 0.5, 32), (4, 0.75, 32))


@dataclass
class PreparedStudy:
    """A study ready to run trials: its storage, sampler, objective and trial budget (``target`` counted trials;
    None: until ``timeout_s``)."""

    loaded: LoadedStudy
    task: Task
    space: SearchSpace
    study: optuna.Study
    storage: workers.StudyStorage
    study_id: int                    # the storage's id of the study (trial ids are looked up with it)
    teacher: TeacherReference
    objective: TrialRunner
    target: int | None


def _sampler(loaded: LoadedStudy, n_existing: int) -> optuna.samplers.BaseSampler:
    cfg = loaded.config
    # A resumed study gets a different seed so it does not replay the first run's random draws.
    seed = cfg.seed + n_existing
    if cfg.sampler == "nsga2":
        pop = cfg.population_size or max(8, min(50, (cfg.n_trials or 60) // 3))
        return optuna.samplers.NSGAIISampler(population_size=pop, seed=seed)
    if cfg.sampler == "tpe":
        return optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=10)
    if cfg.sampler == "gp":
        # Gaussian-process sampler: constrained expected hypervolume improvement over the completed trials
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.samplers.GPSampler(seed=seed, n_startup_trials=10, warn_independent_sampling=False)
    return optuna.samplers.RandomSampler(seed=seed)


def _storage(url: str, heartbeat_s: int = 10, file: str | None = None) -> workers.StudyStorage:
    try:
        # Heartbeats let a later run (or another worker) notice trials whose process died, mark them failed
        # and run them again; see workers.py.
        return workers.make_storage(url, heartbeat_s=heartbeat_s)
    except Exception as e:
        raise ConfigError(f"cannot open the study storage: {workers.describe_error(e)}", field="storage",
                          value=url, file=file) from None


def open_study(loaded: LoadedStudy, *, create: bool, objectives: dict[str, str] | None = None) -> optuna.Study:
    """The study of ``loaded`` (``create``: created when missing) with ``objectives`` (default: the config's, or
    accuracy, latency_ms and size_bytes)."""
    objectives = objectives or loaded.config.objectives or dict(OBJECTIVES)
    directions = list(objectives.values())
    storage = _storage(loaded.storage_url, loaded.config.heartbeat_s, str(loaded.config_path))
    if create:
        study = optuna.create_study(study_name=loaded.study_name, storage=storage, directions=directions,
                                    load_if_exists=True)
    else:
        study = optuna.load_study(study_name=loaded.study_name, storage=storage)
    stored = study.user_attrs.get("objectives")
    if stored is not None and list(stored) != list(objectives):
        raise ConfigError(f"study {loaded.study_name!r} already exists with objectives {list(stored)}; the "
                          f"config now asks for {list(objectives)}. Use another `name` or storage",
                          file=str(loaded.config_path), field="objectives")
    return study


def _score_layers(study: optuna.Study, task: Task, space: SearchSpace, loaded: LoadedStudy,
                  teacher: TeacherReference) -> None:
    """The sensitivity pass of a new study: scores, budgeted warm starts and the narrowed space, stored. A pass that
    fails is reported and stored as failed; the study goes on with the space as written and uniform warm starts."""
    try:
        attrs = warmstart.guide(task, space, loaded.config, teacher_size_bytes=teacher.size_bytes)
    except Exception as e:
        message = f"{type(e).__name__}: {e}"[:1000]
        log.warning("the sensitivity pass failed (%s); searching the space as written", message)
        study.set_user_attr(sensitivity.ATTR, {"error": message})
        return
    for key, value in attrs.items():
        study.set_user_attr(key, value)
    log.info("sensitivity: %d probes in %.0f s; %d budgeted warm starts; %d parameters narrowed",
             attrs[sensitivity.ATTR]["probes"], attrs[sensitivity.ATTR]["seconds"],
             len(attrs[warmstart.ATTR]["plans"]), len(attrs[warmstart.RESTRICT_ATTR]))


def _choose_short_lr(study: optuna.Study, task: Task, space: SearchSpace, loaded: LoadedStudy) -> None:
    """The short level's learning-rate range test of a new study, stored. A test that fails is reported and
    stored; the study's short level then trains at ``finetune.lr``."""
    try:
        study.set_user_attr(learning_rate.ATTR, learning_rate.choose(task, space, loaded.config.finetune,
                                                                     seed=loaded.config.seed))
    except Exception as e:
        message = f"{type(e).__name__}: {e}"[:1000]
        log.warning("choosing the short level's learning rate failed (%s); it trains at finetune.lr", message)
        study.set_user_attr(learning_rate.ATTR, {"error": message, "chosen": None})


def _queue_warm_starts(study: optuna.Study, space: SearchSpace) -> None:
    """Uniform int8 first, then the smallest student of the space distilled in float (what distillation alone
    gives: its zero-shot divergence is no guide to it, so the budgeted plans below never propose it), then the
    budgeted plans when the study scored its layers (they take the other uniform plans' place: each is the
    least-divergence plan of its budget), else the other uniform plans."""
    queued: list[dict] = []

    def queue(params: dict, label: str) -> None:
        if params not in queued:
            queued.append(params)
            study.enqueue_trial(params, user_attrs={"warm_start": label})

    uniform = [(f"uniform w{bits} s{sparsity:g}" + (f" a{act}" if act < 32 else ""),
                space.uniform_params(weight_bits=bits, sparsity=sparsity, activation_bits=act))
               for bits, sparsity, act in WARM_START]
    queue(uniform[0][1], uniform[0][0])
    student = space.uniform_params(weight_bits=32, sparsity=0.0, activation_bits=32, smallest_student=True)
    if student != space.uniform_params(weight_bits=32, sparsity=0.0, activation_bits=32):  # the space has a student
        sizes = space.config.student.model_dump()  # a knob with one choice is not an Optuna parameter
        queue(student, "student w{:g} d{:g}".format(*(student.get(f"student:{k}", min(sizes[k]))
                                                     for k in ("width", "depth"))))
    budgeted = study.user_attrs.get(warmstart.ATTR, {}).get("plans", [])
    for plan in budgeted:
        queue(plan["params"], plan["label"])
    for label, params in [] if budgeted else uniform[1:]:
        queue(params, label)


def prepare_study(loaded: LoadedStudy, *, task: Task | None = None, n_trials: int | None = None,
                  create: bool = True) -> PreparedStudy:
    """Open (``create``: or create) the study and get it ready to run trials (see the module docstring)."""
    cfg = loaded.config
    task = task or load_task(cfg.task, cfg.task_options)
    teacher_val = check_task(task)  # the teacher runs, gives finite outputs, a finite metric on non-empty splits
    metric = task.metric
    try:
        resolve_device(cfg.finetune.device)  # a study asking for an absent GPU stops here, not in every trial
    except ValueError as e:
        raise ConfigError(str(e), file=str(loaded.config_path), field="device") from None
    objectives = cfg.objectives_for(metric.name, metric.direction, file=str(loaded.config_path))
    layers = discover_layers(task.model, task.example_input)
    space = SearchSpace(loaded.space, layers, source=str(loaded.config_path))
    # The latency profile is loaded once per study (predict or measure), before anything is written.
    latency_mode = prepare_latency(loaded, task)

    made_dir = create and not loaded.study_dir.exists()
    if create:
        loaded.study_dir.mkdir(parents=True, exist_ok=True)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        study = open_study(loaded, create=create, objectives=objectives)
    except Exception:
        if made_dir:  # a storage that cannot be opened leaves nothing behind
            shutil.rmtree(loaded.study_dir, ignore_errors=True)
        raise
    storage = _storage(loaded.storage_url, cfg.heartbeat_s, str(loaded.config_path))
    with workers.study_lock(storage, study.study_name):  # one worker measures the teacher, queues the warm start
        study_reference(study, latency_mode, cfg.latency)  # the machine speed every latency of the study is at
        if "teacher" not in study.user_attrs:
            teacher = measure_teacher(task, cfg.latency, accuracy=teacher_val)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                study.set_metric_names(list(objectives))  # optuna-dashboard shows these names
            study.set_user_attr("objectives", objectives)
            study.set_user_attr(METRIC_ATTR, metric.describe())
            study.set_user_attr("teacher", teacher.to_dict())
            study.set_user_attr("task", cfg.task)
            # the kernel kinds candidates are scored with: export lowers a front member with these
            study.set_user_attr(KINDS_ATTR, sorted(latency_mode.kinds))
            study.set_user_attr("layers", [{"name": i.name, "type": i.type_name, "out_channels": i.out_channels,
                                            "is_output": i.is_output} for i in layers])
            study.set_user_attr("unassigned_layers", space.unassigned)
            study.set_user_attr("left_alone", left_alone(task.model, layers))
        teacher = TeacherReference(**study.user_attrs["teacher"])
        fresh = not study.get_trials(deepcopy=False)
        if cfg.sensitivity and fresh and sensitivity.ATTR not in study.user_attrs:
            _score_layers(study, task, space, loaded, teacher)
        space.tie(study.user_attrs.get(warmstart.TIE_ATTR, {}))  # what every worker samples from: tied,
        space.restrict(study.user_attrs.get(warmstart.RESTRICT_ATTR, {}))  # then narrowed
        if fresh and learning_rate.needed(cfg.finetune, rungs(cfg.fidelity)) and \
                learning_rate.ATTR not in study.user_attrs:
            _choose_short_lr(study, task, space, loaded)
        if cfg.warm_start and fresh:
            _queue_warm_starts(study, space)
    # every worker trains with the study's choice (``short_lr: auto`` resolved from what the study stored)
    loaded = loaded.model_copy(update={"config": cfg.model_copy(update={
        "finetune": study_finetune(cfg.finetune, study.user_attrs)})})
    target = n_trials if n_trials is not None else cfg.n_trials
    done, _ = workers.count_trials(study.get_trials(deepcopy=False))  # the study's trials, not this worker's
    # Every worker of a study samples with its own seed (the first one: seed + finished trials).
    study.sampler = _sampler(loaded, done + 7919 * workers.worker_number(storage, study.study_name))
    objective = TrialRunner(task=task, space=space, loaded=loaded, teacher=teacher, horizon=target,
                            objectives=objectives)
    return PreparedStudy(loaded=loaded, task=task, space=space, study=study, storage=storage,
                         study_id=storage.get_study_id_from_name(study.study_name), teacher=teacher,
                         objective=objective, target=target)


__all__ = ["PreparedStudy", "prepare_study", "open_study", "WARM_START"]
