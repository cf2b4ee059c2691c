"""Structured channel pruning on Torch-Pruning's dependency graph: channels are physically removed.

Three parts, as Torch-Pruning splits them: the dependency graph says which layers must change together
(residual additions, depthwise convolutions, BatchNorm, the next layer's inputs); group L2 magnitude says which
channels matter least; the plan says only how many to keep.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from ..tasks.inputs import Inputs, call
from .heads import HeadGroup, attention_groups, group_of, heads_kept, prune_heads
from .layers import get_module, out_channels
from .method import Heatmap, Knob, Method


def _prune_fn(m: nn.Module):
    if isinstance(m, nn.Linear):
        return tp.prune_linear_out_channels
    if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels:
        return tp.prune_depthwise_conv_out_channels
    return tp.prune_conv_out_channels


def _grouped(m: nn.Module) -> int:
    """The groups of a grouped (not depthwise) convolution, else 0."""
    if isinstance(m, nn.Conv1d | nn.Conv2d) and m.groups > 1 and not (m.groups == m.in_channels == m.out_channels):
        return m.groups
    return 0


def group_skip_reason(dg, group, guarded: set[int]) -> str | None:
    """Why a Torch-Pruning group must not be pruned (then the layer is left as it is and reported), or None.

    The one set of checks: ``prune_channels`` and the latency predictor's probes both ask here."""
    for dep, _ in group:
        groups = _grouped(dep.target.module)
        if groups:
            return (f"a grouped convolution (groups={groups}) is in its dependency group: channel pruning would "
                    "mix its channel groups; not pruned")
    if any(id(dep.target.module) in guarded and dg.is_out_channel_pruning_fn(dep.handler) for dep, _ in group):
        return "its channels are coupled to the output layer's outputs"
    if not dg.check_pruning_group(group):
        return "pruning would remove every channel of a coupled layer"
    return None


BREAKS_FORWARD = ("pruning it breaks the model's forward pass (e.g. a reshape into attention heads, which the "
                  "dependency graph does not see); not pruned")


def runs(model: nn.Module, example_input: Inputs) -> bool:
    """Whether ``model`` still runs on ``example_input`` (a cut the dependency graph missed breaks it)."""
    try:
        with torch.no_grad():
            call(model, example_input)
        return True
    except Exception:
        return False


def prune_channels(model: nn.Module, example_input: Inputs, targets: dict[str, int],
                   protected: list[str], *, fresh: Callable[[], nn.Module]) -> tuple[nn.Module, dict[str, str]]:
    """Cut each named layer down to ``targets[name]`` output channels, lowest-importance channels first; returns
    the pruned model (``model`` itself, or a copy) and ``{layer: reason}`` for layers left as they are.

    Layers pruned together with an earlier one (same dependency group) may already be at or below their target.
    The projections of a recognised attention block lose whole heads (:mod:`.heads`). If the cuts together break the
    forward pass (an op Torch-Pruning's graph does not follow, like a reshape into attention heads it does not
    recognise), the layers are cut one at a time from the unpruned model (``fresh()`` makes it again, so the
    usual case copies nothing), each kept only if the model still runs, and the others reported.
    """
    if not any(t < out_channels(get_module(model, n)) for n, t in targets.items()):
        return model, {}
    skipped = _prune(model, example_input, targets, protected)
    if runs(model, example_input):
        return model, skipped
    model, skipped = fresh(), {}
    for name, target in targets.items():
        attempt = copy.deepcopy(model)
        why = _prune(attempt, example_input, {name: target}, protected).get(name)
        if why:
            skipped[name] = why
        elif runs(attempt, example_input):
            model = attempt
        else:
            skipped[name] = BREAKS_FORWARD
    return model, skipped


def _prune(model: nn.Module, example_input: Inputs, targets: dict[str, int],
           protected: list[str]) -> dict[str, str]:
    """The cuts themselves (see :func:`prune_channels`), in place; ``{layer: reason}`` for layers not cut."""
    skipped: dict[str, str] = {}
    todo = {n: t for n, t in targets.items() if t < out_channels(get_module(model, n))}
    if not todo:
        return skipped
    # attention projections lose whole heads, the same ones in q, k, v and the output projection (heads.py)
    groups = attention_groups(model)
    for name in [n for n in todo if group_of(groups, n)]:
        why = cut_heads(model, group_of(groups, name), todo.pop(name), protected,  # type: ignore[arg-type]
                        example_input)
        if why:
            skipped[name] = why
    if not todo:
        return skipped
    # Protected layers are not handed to Torch-Pruning as `ignored_layers`: it then treats them as graph outputs
    # and refuses every group that feeds them. Instead, a group that would cut their outputs is refused below.
    guarded = {id(get_module(model, n)) for n in protected}
    dg = tp.DependencyGraph().build_dependency(model, example_inputs=example_input, forward_fn=call,
                                            verbose=False)
    importance = tp.importance.GroupMagnitudeImportance(p=2)
    for name, target in todo.items():
        mod = get_module(model, name)
        n = out_channels(mod)
        if target >= n:
            continue  # already cut as part of an earlier layer's group
        fn = _prune_fn(mod)
        try:
            group = dg.get_pruning_group(mod, fn, idxs=list(range(n)))
            scores = importance(group)
            if scores is None:
                skipped[name] = "no importance for its dependency group"
                continue
            idxs = torch.argsort(scores)[: n - target].tolist()
            group = dg.get_pruning_group(mod, fn, idxs=idxs)
            why = group_skip_reason(dg, group, guarded)
            if why:
                skipped[name] = why
                continue
            group.prune()
        except Exception as e:  # an op Torch-Pruning cannot follow: leave the layer, report it, go on
            skipped[name] = f"structured pruning unsupported here ({type(e).__name__}: {e})"
    return skipped


def cut_heads(model: nn.Module, group: HeadGroup, target: int, protected: list[str],
              example_input: Inputs) -> str | None:
    """Cut an attention block to the heads a member's channel ``target`` keeps; why not, or None."""
    if group.skip:
        return group.skip
    if group.out in protected or any(m in protected for m in group.members):
        return "its heads feed the output layer's outputs; not pruned"
    return prune_heads(model, group, heads_kept(target, group.per_head), example_input)


def channel_target(out_channels: int, width: float, keep: float, multiple: int = 1) -> int | None:
    """Output channels a layer keeps under student ``width`` x the plan's ``keep`` (None: unchanged).

    With ``multiple`` > 1 the count is rounded to the nearest multiple of it, at least ``multiple`` (never above
    ``out_channels``): CPU runtimes compute convolutions in channel blocks (ONNX Runtime's NCHWc: 16 channels with
    AVX-512, 8 with AVX2), and a count off the block runs as slowly as the next multiple or slower (12 channels
    slower than 16: ``benchmarks/channel_alignment.py``).
    The one rule: ``apply`` prunes to it and the latency predictor resolves plans with it."""
    ratio = width * keep
    if ratio >= 1:
        return None
    target = max(1, round(out_channels * ratio))
    if multiple > 1:
        target = min(out_channels, max(multiple, multiple * math.floor(target / multiple + 0.5)))
    return target


class ChannelPruning(Method):
    """Structured pruning: a share of output channels physically removed (with what depends on them)."""

    name = "channel_pruning"
    knobs = (Knob(name="channel_keep", type=float, default=1.0, interval=(0.0, 1.0, "(]"),
                  doc="share of output channels kept by structured pruning", label=lambda v: f"keep{v:g}",
                  heatmap=Heatmap(title="channel keep-ratio (share of output channels kept)", zmin=0, zmax=1,
                                  reverse=True)),)
