"""Finding a study (config, results folder or storage URL) and reading what the dashboard draws from it."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import optuna
import pandas as pd

from ..config import load_study_config
from ..errors import AutocompressError, StudyNotFoundError
from ..front import Front, study_names
from .data import EXTRA_ATTRS, StudyData

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.FAIL, optuna.trial.TrialState.PRUNED)
RUNNING = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.WAITING)


class NothingToDrawError(AutocompressError):
    """The study exists but holds no completed trial (empty, or every trial failed)."""

    exit_code = 1


@dataclass(frozen=True)
class StudyRef:
    """Where a study lives. ``target`` is what the user typed (reused in the export commands shown)."""

    target: str
    storage_url: str
    study_name: str
    study_name_given: str | None
    default_output: Path


def resolve(target: str, study_name: str | None = None) -> StudyRef:
    """A config file, a results folder (holding study.db) or a storage URL -> the study it names.

    Same rules as ``autocompress front``; raises :class:`StudyNotFoundError` (exit code 2) when nothing is there.
    Nothing is created.
    """
    path = Path(target)
    if "://" in target:
        url, name, out_dir = target, study_name, Path.cwd()
        if target.startswith("sqlite:///"):
            db = Path(target.removeprefix("sqlite:///"))
            out_dir = db.parent if db.name and str(db) != ":memory:" else out_dir
    elif path.suffix in (".yaml", ".yml"):
        loaded = load_study_config(path)
        url, name, out_dir = loaded.storage_url, study_name or loaded.study_name, loaded.study_dir
    elif path.is_dir():
        db = path / "study.db"
        if not db.is_file():
            raise StudyNotFoundError(f"{path} holds no study.db (is it a study's results folder?)")
        url, name, out_dir = f"sqlite:///{db.resolve()}", study_name, path
    else:
        raise StudyNotFoundError(f"{target}: not a study config (.yaml), a results folder or a storage URL")
    names = study_names(url)
    if name is None:
        if len(names) != 1:
            raise StudyNotFoundError(f"storage {url!r} holds {len(names)} studies ({names}); name one with "
                                     "--study-name")
        name = names[0]
    if name not in names:
        raise StudyNotFoundError(f"no study {name!r} in {url!r}; studies there: {names or 'none'}")
    return StudyRef(target=target, storage_url=url, study_name=name, study_name_given=study_name,
                    default_output=out_dir / "dashboard.html")


def open_study(ref: StudyRef) -> optuna.Study:
    try:
        return optuna.load_study(study_name=ref.study_name, storage=ref.storage_url)
    except Exception as e:  # deleted between resolve and load, unreadable database
        raise StudyNotFoundError(f"cannot open study {ref.study_name!r} in {ref.storage_url!r}: {e}") from None


def read_study(study: optuna.Study) -> StudyData:
    """Everything the dashboard draws, read from ``study`` (any Optuna storage, a running study too)."""
    trials = study.get_trials(deepcopy=False)
    rows = []
    for t in trials:
        if t.state not in FINISHED:
            continue
        ua = t.user_attrs
        row = {"trial": t.number, "state": t.state.name, "cost_s": ua.get("cost_s"),
               "constraints": ua.get("constraints") if isinstance(ua.get("constraints"), dict) else {}}
        for key in EXTRA_ATTRS:
            if key in ua:
                row[key] = ua[key]
        rows.append(row)
    attrs = pd.DataFrame(rows) if rows else pd.DataFrame(columns=["trial", "state", "cost_s", "constraints"])
    user_attrs = study.user_attrs
    layers = user_attrs.get("layers")
    return StudyData(front=Front.from_study(study), attrs=attrs,
                     layers=layers if isinstance(layers, list) else [],
                     task=user_attrs.get("task") if isinstance(user_attrs.get("task"), str) else None,
                     n_running=sum(t.state in RUNNING for t in trials),
                     sensitivity=user_attrs.get("sensitivity") if isinstance(user_attrs.get("sensitivity"), dict)
                     else None)


def study_version(study: optuna.Study) -> str:
    """Cheap to compute; changes whenever a trial is added, starts or finishes, or the study's attributes change."""
    trials = study.get_trials(deepcopy=False)
    states = Counter(t.state.name for t in trials)
    attrs = json.dumps(study.user_attrs, sort_keys=True, default=str)
    return f"{len(trials)}:{sorted(states.items())}:{hashlib.sha256(attrs.encode()).hexdigest()[:16]}"


def require_completed(sd: StudyData, ref_text: str) -> None:
    """Raise :class:`NothingToDrawError` with the reason when ``sd`` holds no completed trial."""
    if len(sd.front.trials):
        return
    name = sd.front.study_name
    failed = sd.front.failed
    if len(failed):
        last = str(failed["reason"].iloc[-1]) or "no error recorded"
        raise NothingToDrawError(
            f"study {name!r} has no completed trial: all {len(failed)} finished trials failed or were pruned "
            f"(last: {last}). Nothing to draw; fix the failure and run `autocompress search` again")
    running = f" ({sd.n_running} running now)" if sd.n_running else ""
    raise NothingToDrawError(
        f"study {name!r} has no completed trial yet{running}: nothing to draw. Run `autocompress search` first, "
        f"or watch it live with `autocompress dashboard {ref_text} --serve`")
