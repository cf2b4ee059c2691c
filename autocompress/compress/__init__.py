"""Apply a :class:`~autocompress.plan.CompressionPlan` to a teacher: one function, one module per method.

The methods and their knobs are declared once, in :mod:`.registry` (see :mod:`.method`).

Order (each step sees the result of the previous one):

1. student depth   drop trailing shape-preserving blocks            (``depth.py``)
2. channels        student width x per-layer keep ratio, physically  (``structured.py``, Torch-Pruning)
3. low rank        truncated SVD into two thinner layers             (``lowrank.py``)
4. weights        masks of every masking method (magnitude ``quantize.py``, N:M ``nm.py``), multiplied,
                   + per-channel fake quantization or k-means weight sharing (parametrizations)
5. activations     calibrated input fake quantization                (``quantize.py``, pre-hooks)

Fine-tuning with distillation (``distill.py``) then trains the compressed model; :func:`bake` writes the
compressed weights into plain parameters. A layer a method cannot handle is left as it is and reported in
``CompressedModel.skipped``; the rest of the plan still applies.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch
from torch import nn
from torch.nn.utils import parametrize

from ..tasks.inputs import Inputs, call
from . import registry
from .depth import drop_blocks
from .layers import LayerInfo, discover_layers, get_module, set_module
from .lowrank import factorize, resolve_rank
from .quantize import CompressedWeight, InputQuantizer, SharedWeight
from .structured import channel_target, prune_channels

if TYPE_CHECKING:  # plans are built from this package's method registry, above it
    from ..plan import CompressionPlan


@dataclass
class CompressedModel:
    """A candidate: the materialized model and how the plan landed on it.

    modules:     teacher layer name -> names of the modules now holding its weights (two after low rank)
    weight_bits: module name -> weight bits (32 = float)
    sparsity:    module name -> target share of zero weights
    act_bits:    teacher layer name -> input activation bits
    weight_sharing: module name -> whether its weight is k-means shared (a codebook, not a uniform grid)
    entropy_coding: module name -> whether its stored weight may be Huffman-coded
    skipped:     teacher layer or block -> why (part of) the plan was not applied to it
    removed:     the blocks student depth removed
    """

    model: nn.Module
    plan: CompressionPlan
    layers: list[LayerInfo]
    modules: dict[str, list[str]] = field(default_factory=dict)
    weight_bits: dict[str, int] = field(default_factory=dict)
    sparsity: dict[str, float] = field(default_factory=dict)
    act_bits: dict[str, int] = field(default_factory=dict)
    weight_sharing: dict[str, bool] = field(default_factory=dict)
    entropy_coding: dict[str, bool] = field(default_factory=dict)
    input_quantizers: dict[str, InputQuantizer] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)
    baked: bool = False

    def compressed_modules(self) -> Iterable[tuple[str, nn.Module]]:
        for names in self.modules.values():
            for n in names:
                yield n, get_module(self.model, n)


def apply(teacher: nn.Module, plan: CompressionPlan, example_input: Inputs, *,
          start: CompressedModel | None = None) -> CompressedModel:
    """Materialize ``plan`` on a copy of ``teacher`` (the teacher is not modified). Deterministic.

    ``start``: the plan's student made already (``apply`` of a plan with only ``plan.student``, then trained, e.g.
    distilled): the rest of the plan is applied to a copy of its model instead, giving the same structure with the
    student's weights (:mod:`autocompress.evaluate.candidate` distils each student size once this way)."""
    if start is not None and start.plan.student != plan.student:
        raise ValueError(f"`start` was made for the student {start.plan.student}, not the plan's {plan.student}")
    model = copy.deepcopy(start.model if start is not None else teacher).eval()
    infos = start.layers if start is not None else discover_layers(model, example_input)
    known = {i.name for i in infos}
    unknown = sorted(set(plan.layers) - known)
    if unknown:
        raise ValueError(f"plan names layers the model does not have: {unknown}; the model's compressible "
                         f"layers are {sorted(known)}")
    cm = CompressedModel(model=model, plan=plan, layers=infos)

    # 1. depth (a start model has its blocks removed already)
    removed = list(start.removed) if start is not None else drop_blocks(model, example_input, plan.student.depth)
    cm.removed = removed
    if plan.student.depth < 1 and not removed:
        cm.skipped["(student depth)"] = "no removable shape-preserving block in this architecture"
    present = []
    for info in infos:
        block = next((b for b in removed if info.name.startswith(b + ".")), None)
        if block:
            cm.skipped[info.name] = f"removed with block {block} (student depth {plan.student.depth:g})"
        else:
            present.append(info)

    # 2. channels: student width and per-layer keep ratio multiply
    width, multiple = plan.student.width, plan.student.channel_multiple
    targets, protected = {}, []
    for info in present:
        lp = plan.layer(info.name)
        if info.is_output:
            protected.append(info.name)
            if lp.channel_keep < 1:
                cm.skipped[info.name] = "output layer: its channels are the model's outputs, not pruned"
            continue
        target = channel_target(info.out_channels, width, lp.channel_keep, multiple)
        if target is not None:
            targets[info.name] = target
    def unpruned() -> nn.Module:  # the model as it stood before this step (apply is deterministic)
        if start is not None:
            return copy.deepcopy(start.model).eval()
        again = copy.deepcopy(teacher).eval()
        drop_blocks(again, example_input, plan.student.depth)
        return again

    model, skipped = prune_channels(model, example_input, targets, protected, fresh=unpruned)
    cm.model = model
    cm.skipped.update(skipped)

    # 3. low rank
    for info in present:
        lp = plan.layer(info.name)
        cm.modules[info.name] = [info.name]
        if lp.rank_ratio >= 1:
            continue
        mod = get_module(model, info.name)
        rank, why = resolve_rank(tuple(mod.weight.shape), lp.rank_ratio, getattr(mod, "groups", 1))
        if rank is None:
            cm.skipped[info.name] = why
            continue
        try:
            set_module(model, info.name, factorize(mod, rank))
            cm.modules[info.name] = [f"{info.name}.0", f"{info.name}.1"]
        except (ValueError, TypeError) as e:
            cm.skipped[info.name] = f"low rank not applied: {e}"

    # 4. weight masks (every registered masking method: magnitude, N:M), then bits or a k-means codebook
    maskers = registry.mask_methods()
    for info in present:
        lp = plan.layer(info.name)
        values = dataclasses.asdict(lp)
        for name in cm.modules[info.name]:
            cm.weight_bits[name] = lp.weight_bits
            cm.sparsity[name] = lp.sparsity
            cm.weight_sharing[name] = lp.weight_sharing
            cm.entropy_coding[name] = lp.entropy_coding
            mod = get_module(model, name)
            mask = None
            for method in maskers:
                got = method.weight_mask(mod.weight, values, mask)
                if isinstance(got, str):
                    cm.skipped[name] = f"{cm.skipped[name]}; {got}" if name in cm.skipped else got
                elif got is not None:
                    mask = got if mask is None else mask * got  # a later mask keeps what earlier ones zeroed
            if mask is None and lp.weight_bits >= 32:
                continue
            if lp.weight_sharing:
                param: nn.Module = SharedWeight(mod.weight, mask, lp.weight_bits)
            else:
                param = CompressedWeight(mask, lp.weight_bits)
            parametrize.register_parametrization(mod, "weight", param)

    # 5. activation bits (quantize the layer's input)
    for info in present:
        lp = plan.layer(info.name)
        cm.act_bits[info.name] = lp.activation_bits
        if lp.activation_bits < 32:
            q = InputQuantizer(lp.activation_bits)
            get_module(model, cm.modules[info.name][0]).register_forward_pre_hook(q)
            cm.input_quantizers[info.name] = q
    return cm


@torch.no_grad()
def calibrate(cm: CompressedModel, batches: Iterable[Inputs]) -> None:
    """Record activation ranges on ``batches`` of inputs, then freeze them."""
    if not cm.input_quantizers:
        return
    for q in cm.input_quantizers.values():
        q.calibrating, q.lo, q.hi = True, float("inf"), float("-inf")
    cm.model.eval()
    for x in batches:
        call(cm.model, x)
    for q in cm.input_quantizers.values():
        q.calibrating = False


def bake(cm: CompressedModel) -> CompressedModel:
    """Write the masked, quantized weights into plain parameters (ends training). Idempotent."""
    if not cm.baked:
        for _, mod in cm.compressed_modules():
            if parametrize.is_parametrized(mod, "weight"):
                parametrize.remove_parametrizations(mod, "weight", leave_parametrized=True)
        cm.baked = True
    return cm


def set_input_quantizers(cm: CompressedModel, enabled: bool) -> None:
    """Switch activation fake quantization on or off (off when exporting to a runtime that quantizes itself)."""
    for q in cm.input_quantizers.values():
        q.enabled = enabled


__all__ = ["CompressedModel", "apply", "bake", "calibrate", "set_input_quantizers", "discover_layers", "LayerInfo"]
