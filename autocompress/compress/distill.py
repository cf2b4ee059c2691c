"""Knowledge-distillation fine-tuning of a compressed candidate against its teacher.

loss = the task's distillation loss (:mod:`autocompress.tasks.loss`; by default, for class logits,
       alpha * T^2 * KL(softmax(teacher/T) || softmax(student/T)) + (1 - alpha) * cross_entropy(student, labels))
     + feature_mse * mean MSE over layers whose output has the same shape in teacher and student
     + l1 * mean |w| over the compressed layers' weights (sparsity regularisation)

BatchNorm layers keep their running statistics while the candidate trains (they run in eval mode; their scale and
shift still train): the teacher's statistics, or those re-estimated for the layers a plan changed before
fine-tuning (:func:`autocompress.evaluate.candidate.recalibrate_batchnorm`), are not replaced by the running
average of a few hundred fine-tuning batches, which on a pretrained teacher and a small user dataset damages more
than it adapts.

k-means weight-shared layers (``LayerPlan.weight_sharing``) are fine-tuned in Han et al.'s order within each
call: for the first ``1 - CENTROID_SHARE`` of the steps their pruned float weights retrain, then they are
clustered again (k-means, linear initialisation) and only their centroids train for the remaining steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from ..tasks.inputs import call, loader, to_device
from ..tasks.loss import Loss, kd
from . import CompressedModel
from .quantize import SharedWeight

CENTROID_SHARE = 0.3  # share of a fine-tuning call's steps that trains the centroids of shared layers


def _shared(cm: CompressedModel) -> list[tuple[nn.Module, SharedWeight]]:
    out = []
    for _, mod in cm.compressed_modules():
        pz = getattr(mod, "parametrizations", None)
        if pz is not None and "weight" in pz:
            out += [(mod, p) for p in pz.weight if isinstance(p, SharedWeight)]
    return out


def _feature_pairs(cm: CompressedModel, teacher: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    pairs = []
    teacher_mods = dict(teacher.named_modules())
    for name, names in cm.modules.items():
        if names == [name] and name in teacher_mods:
            pairs.append((teacher_mods[name], cm.model.get_submodule(name)))
    return pairs


def finetune(cm: CompressedModel, teacher: nn.Module, data: Dataset, *, steps: int, batch_size: int = 64,
             lr: float = 1e-3, seed: int = 0, loss_fn: Loss = kd, device: torch.device | str = "cpu") -> float:
    """Train ``cm.model`` for ``steps`` mini-batches with the plan's distillation loss; returns the last loss.

    ``loss_fn``: the task's distillation loss (:func:`autocompress.tasks.loss.resolve_loss`); ``device``: where the
    student and teacher are trained (both are moved back to the CPU before returning)."""
    if steps <= 0:
        return float("nan")
    d = cm.plan.distill
    torch.manual_seed(seed)
    batches = loader(data, batch_size, shuffle=True, drop_last=len(data) > batch_size,
                        generator=torch.Generator().manual_seed(seed))
    model = cm.model
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    teacher.eval()
    feats_t: list[torch.Tensor] = []
    feats_s: list[torch.Tensor] = []
    hooks = []
    if d.feature_mse > 0:
        for tm, sm in _feature_pairs(cm, teacher):
            hooks.append(tm.register_forward_hook(lambda m, i, o: feats_t.append(o)))
            hooks.append(sm.register_forward_hook(lambda m, i, o: feats_s.append(o)))
    l1_params = []
    if d.l1 > 0:
        for _, mod in cm.compressed_modules():
            pz = getattr(mod, "parametrizations", None)
            l1_params.append(pz.weight.original if pz is not None and "weight" in pz else mod.weight)
    shared = _shared(cm)
    share_at = steps - round(steps * CENTROID_SHARE)
    for _, p in shared:
        p.release()  # retrain the pruned float weights first

    def cluster() -> None:
        for mod, p in shared:
            p.cluster(mod.parametrizations.weight.original)

    model.to(device)
    teacher.to(device)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()  # running statistics stay as they are (see the module docstring)
    loss = torch.tensor(float("nan"))
    step = 0
    try:
        while step < steps:
            for x, y in batches:
                if shared and step == share_at:
                    cluster()
                feats_t.clear()
                feats_s.clear()
                x, y = to_device(x, device), y.to(device)
                with torch.no_grad():
                    t_out = call(teacher, x)
                s_out = call(model, x)
                loss = loss_fn(s_out, t_out, y, alpha=d.alpha, temperature=d.temperature)
                if feats_t:
                    mse = [F.mse_loss(s, t) for s, t in zip(feats_s, feats_t, strict=False) if s.shape == t.shape]
                    if mse:
                        loss = loss + d.feature_mse * torch.stack(mse).mean()
                if l1_params:
                    loss = loss + d.l1 * torch.cat([p.abs().flatten() for p in l1_params]).mean()
                opt.zero_grad()
                loss.backward()
                opt.step()
                sched.step()
                step += 1
                if step >= steps:
                    break
    finally:
        if shared and not all(bool(p.clustered) for _, p in shared):
            cluster()  # every call ends with shared weights
        for h in hooks:
            h.remove()
        model.eval()
        model.to("cpu")
        teacher.to("cpu")
    return float(loss.detach())
