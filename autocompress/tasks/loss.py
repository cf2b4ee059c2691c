"""Distillation losses: how a student's outputs are scored against the teacher's while a candidate fine-tunes.

A task names one (``loss="kd"``, the default) or gives its own ``loss(student_out, teacher_out, targets) -> tensor``.
The built-in ones take the plan's distillation settings (``alpha``: weight of the teacher term, ``temperature``):

- ``kd``     class logits (batch, classes): alpha * T^2 * KL(teacher || student at temperature T)
             + (1 - alpha) * cross-entropy with the labels
- ``lm``     per-token logits (batch, length, vocab) of a causal LM: the same, per token, with next-token targets
             (-100 = ignored, e.g. padding)
- ``mse``    embeddings or regression outputs: alpha * MSE to the teacher + (1 - alpha) * MSE to the targets
- ``cosine`` embeddings: 1 - cosine similarity to the teacher's output along the last dimension
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

UserLoss = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
Loss = Callable[..., torch.Tensor]  # (student_out, teacher_out, targets, *, alpha, temperature) -> scalar


def _kl(s: torch.Tensor, t: torch.Tensor, temperature: float) -> torch.Tensor:
    s, t = s.reshape(-1, s.shape[-1]), t.reshape(-1, t.shape[-1])
    return F.kl_div(F.log_softmax(s / temperature, -1), F.softmax(t / temperature, -1),
                    reduction="batchmean") * temperature * temperature


def kd(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    return alpha * _kl(s, t, temperature) + (1 - alpha) * F.cross_entropy(s, y)


def lm(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    keep = (y != -100).reshape(-1)
    s2, t2 = s.reshape(-1, s.shape[-1])[keep], t.reshape(-1, t.shape[-1])[keep]
    return alpha * _kl(s2, t2, temperature) + (1 - alpha) * F.cross_entropy(s2, y.reshape(-1)[keep])


def mse(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    target = F.mse_loss(s, y.to(s.dtype)) if y.shape == s.shape else s.new_zeros(())
    return alpha * F.mse_loss(s, t) + (1 - alpha) * target


def cosine(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
    return (1 - F.cosine_similarity(s.flatten(1), t.flatten(1), dim=-1)).mean()


LOSSES: dict[str, Loss] = {"kd": kd, "lm": lm, "mse": mse, "cosine": cosine}


def resolve_loss(value: str | UserLoss | None) -> Loss:
    """The loss a task names or gives (a user function ignores ``alpha`` and ``temperature``)."""
    if value is None:
        return kd
    if isinstance(value, str):
        if value not in LOSSES:
            raise ValueError(f"unknown loss {value!r}; built-in losses are {sorted(LOSSES)}, or give a function "
                             "loss(student_out, teacher_out, targets) -> scalar tensor")
        return LOSSES[value]
    if not callable(value):
        raise ValueError(f"`loss` must be a built-in name {sorted(LOSSES)} or a function, not {type(value).__name__}")

    def user(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, *, alpha: float, temperature: float) -> torch.Tensor:
        return value(s, t, y)

    return user


__all__ = ["LOSSES", "Loss", "UserLoss", "cosine", "kd", "lm", "mse", "resolve_loss"]
