"""The deployability gate: before a study reports its final front, every front member must export and run.

Each member of the (feasible) Pareto front is exported exactly as ``autocompress export`` would (plan applied,
packed PyTorch artifact, ONNX lowered to int8 / int4 / float kernels, card, checksums), without fine-tuning or
measuring, then loaded back through :func:`autocompress.load` in both formats and run once on the example input.
A member that fails is marked not deployable and left off the front; the members it was hiding are then checked
in turn, until every member of the front has passed.

Optuna does not allow changing a finished trial, so the result is stored on the study, one user attribute per
trial: ``deploy:<number>`` = ``{"deployable": bool, "deploy_error": str, "checked_s": float}`` (see
:func:`autocompress.front.is_deployable`). Checked trials are not checked again when a study resumes.
Switch it off with ``deployability_gate: false`` in the study config.
"""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import optuna

from ..config import FinetuneConfig, LatencyConfig, LoadedStudy
from ..front import DEPLOY_ATTR, KINDS_ATTR, Front
from ..plan import CompressionPlan
from ..tasks import Task
from .artifact import export_plan

log = logging.getLogger(__name__)


def check_deployable(task: Task, plan: CompressionPlan, *, finetune_cfg: FinetuneConfig | None = None,
                     latency_cfg: LatencyConfig | None = None, kinds: list[str] | None = None,
                     seed: int = 0) -> float:
    """Export ``plan`` (both formats, no fine-tune, no measurement) for the study's latency backend with its kernel
    kinds to a temporary folder, load it, run it once.

    Returns the seconds it took; raises whatever the export, the load or the run raised.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="autocompress-gate-") as tmp:
        export_plan(task, plan, Path(tmp) / "artifact", finetune="none", finetune_cfg=finetune_cfg,
                    latency_cfg=latency_cfg, kinds=kinds, seed=seed, measure=False)
    return time.perf_counter() - start


def deployability_gate(study: optuna.Study, task: Task, loaded: LoadedStudy) -> None:
    """Post-study step (see ``autocompress.search.driver.post_study_steps``): gate every front member."""
    cfg = loaded.config
    if not cfg.deployability_gate:
        return
    checked: set[int] = set()
    while True:
        front = Front.from_study(study)
        attrs = study.user_attrs
        todo = [int(n) for n in front.front["trial"] if DEPLOY_ATTR.format(int(n)) not in attrs]
        todo = [n for n in todo if n not in checked]
        if not todo:
            return
        for number in todo:
            checked.add(number)
            start = time.perf_counter()
            try:
                check_deployable(task, front.plans[number], finetune_cfg=cfg.finetune, latency_cfg=cfg.latency,
                                 kinds=study.user_attrs.get(KINDS_ATTR), seed=cfg.seed + number)
                record = {"deployable": True}
            except Exception as e:  # any failure means: not deployable; the study goes on
                record = {"deployable": False, "deploy_error": f"{type(e).__name__}: {e}"[:2000]}
                log.warning("trial %d is not deployable and leaves the front: %s", number, record["deploy_error"])
            record["checked_s"] = round(time.perf_counter() - start, 3)
            study.set_user_attr(DEPLOY_ATTR.format(number), record)


__all__ = ["deployability_gate", "check_deployable"]
