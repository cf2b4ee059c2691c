"""Materialize a plan for export: apply it to the teacher, fine-tune at full fidelity, capture scales, bake.

"Full fidelity" is the study's ``full`` fidelity level and is defined in one place, the study config:
``finetune.full_steps`` mini-batches (default :data:`FULL_FINETUNE_STEPS`) of the plan's own distillation loss
(temperature, alpha, feature MSE, L1) at the study's batch size and learning rate, against the same teacher,
from the same starting point as the search (:class:`autocompress.evaluate.candidate.Candidate`: the plan applied
to the teacher, BatchNorm statistics recalibrated, activation ranges calibrated) and with the trial's seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch.nn.utils import parametrize

from ..compress import CompressedModel
from ..compress.quantize import weight_scale
from ..config import FinetuneConfig
from ..evaluate.candidate import Candidate, short_level_lr, student_steps
from ..plan import CompressionPlan
from ..tasks import Task

# `--finetune full` = the study's `finetune.full_steps`; this is its default (the config holds the definition).
FULL_FINETUNE_STEPS: int = FinetuneConfig.model_fields["full_steps"].default
FINETUNE_MODES = ("full", "search", "none")


def finetune_steps(mode: str | int, cfg: FinetuneConfig) -> int:
    """Steps for a fine-tune mode: ``full`` (``cfg.full_steps``), ``search`` (``cfg.steps``), ``none`` (0)."""
    if isinstance(mode, int) and not isinstance(mode, bool):
        if mode < 0:
            raise ValueError(f"fine-tune steps must be >= 0, but got {mode}")
        return mode
    if mode == "full":
        return cfg.full_steps
    if mode == "search":
        return cfg.steps
    if mode == "none":
        return 0
    raise ValueError(f"fine-tune mode must be one of {list(FINETUNE_MODES)} or a step count, but got {mode!r}")


@dataclass
class Materialized:
    """A baked candidate ready to pack and lower, with what it took to make it."""

    cm: CompressedModel
    calibration: list[torch.Tensor]
    scales: dict[str, torch.Tensor] = field(default_factory=dict)
    finetune: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def capture_scales(cm: CompressedModel) -> dict[str, torch.Tensor]:
    """Per-channel weight scales of every quantized module, exactly as its fake quantizer computes them."""
    out = {}
    for name, mod in cm.compressed_modules():
        bits = cm.weight_bits.get(name, 32)
        if bits >= 32 or not parametrize.is_parametrized(mod, "weight") or cm.weight_sharing.get(name, False):
            continue  # float, or k-means shared (a codebook, no scales)
        w = mod.parametrizations.weight.original
        mask = getattr(mod.parametrizations.weight[0], "mask", None)
        if mask is not None and mask.numel():
            w = w * mask
        out[name] = weight_scale(w, bits).clone()
    return out


def materialize(task: Task, plan: CompressionPlan, *, finetune: str | int = "full",
                finetune_cfg: FinetuneConfig | None = None, seed: int = 0) -> Materialized:
    """Apply ``plan`` to the task's teacher as the search does, fine-tune (see :func:`finetune_steps`), bake."""
    cfg = finetune_cfg or FinetuneConfig()
    steps = finetune_steps(finetune, cfg)
    cand = Candidate(task, plan, cfg, seed=seed)
    cand.train_to(steps)
    scales = capture_scales(cand.cm)
    cm = cand.baked()
    info = {"mode": finetune if isinstance(finetune, str) else "steps", "steps": steps,
            "batch_size": cfg.batch_size, "lr": cfg.lr, "short_lr": short_level_lr(cfg), "seed": seed,
            "full_steps": cfg.full_steps,
            "search_steps": cfg.steps, "distill": plan.to_dict()["data"]["distill"],
            "student_steps": 0 if cand.student is None else student_steps(cfg),
            "seconds": round(cand.seconds.get("finetune", 0.0), 2)}
    return Materialized(cm=cm, calibration=cand.calib, scales=scales, finetune=info)


__all__ = ["FULL_FINETUNE_STEPS", "FINETUNE_MODES", "finetune_steps", "materialize", "Materialized",
           "capture_scales"]
