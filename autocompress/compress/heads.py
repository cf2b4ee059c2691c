"""Attention-head pruning: channel pruning of an attention block's query/key/value projections removes whole heads.

Torch-Pruning's dependency graph does not see that the outputs of q, k and v are split into heads that must match
(a reshape into ``(..., heads, head_dim)`` and the products between them): cutting one of them alone breaks the
forward pass. Here an attention block is found by its structure (the projections' names as ``transformers`` and
common PyTorch code write them, and a head-count attribute), its heads form one group, and a channel target on any
of q, k, v (or on one fused qkv projection) is rounded to whole heads: the same heads are cut from q, k and v and
from the output projection's inputs, with Torch-Pruning's own layer pruners, lowest-magnitude heads first. The
block's head-count attributes are updated so a forward that reads them still runs. ``apply`` and the latency
predictor's probes both cut heads with :func:`prune_heads`.

Every cut is checked on the example input (:func:`prune_heads`): an attention whose forward splits heads another
way (a literal head count) is left as it is and reported, never silently mixed up.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn
from torch.utils._pytree import tree_leaves

from ..tasks.inputs import Inputs, call

# (q, k, v) child names of an attention block, and the names of its output projection
SEPARATE = (("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"))
FUSED = ("qkv", "c_attn", "qkv_proj", "Wqkv")
OUT = ("o_proj", "out_proj", "out_lin", "c_proj", "proj", "dense")
HEAD_COUNT = ("num_attention_heads", "num_heads", "n_head", "n_heads", "heads")
HEAD_DIM = ("attention_head_size", "head_dim")
HEADS_WIDTH = ("all_head_size", "split_size", "inner_dim")  # attributes holding heads x head_dim


@dataclass(frozen=True)
class HeadGroup:
    """One attention block's heads.

    block:    the attention module (its head-count attributes are updated after a cut)
    members:  the layers whose output channels are per head: q, k, v, or one fused qkv projection
    fused:    3 when one member holds q, k and v stacked (``[q | k | v]``, each ``heads x head_dim``), else 1
    out:      the layer reading the heads (its input channels are cut with them)
    skip:     why the block's heads cannot be pruned (then its members are left as they are), or None
    """

    block: str
    members: tuple[str, ...]
    fused: int
    out: str
    heads: int
    head_dim: int
    skip: str | None = None

    @property
    def per_head(self) -> int:
        """Output channels one head takes from each member."""
        return self.fused * self.head_dim


def _linear(model: nn.Module, name: str) -> nn.Linear | None:
    try:
        m = model.get_submodule(name)
    except AttributeError:
        return None
    return m if isinstance(m, nn.Linear) else None


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _out_projection(model: nn.Module, block: str) -> str | None:
    """The block's own output projection, or (BERT/ViT: ``attention.self`` + ``attention.output.dense``) its
    parent's ``output.dense``."""
    for name in OUT:
        if _linear(model, _join(block, name)) is not None:
            return _join(block, name)
    parent = block.rpartition(".")[0]
    if _linear(model, _join(parent, "output.dense")) is not None and block != _join(parent, "output"):
        return _join(parent, "output.dense")
    return None


def _head_count(block: nn.Module) -> int | None:
    for attr in HEAD_COUNT:
        value = getattr(block, attr, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def attention_groups(model: nn.Module) -> list[HeadGroup]:
    """Every attention block of ``model`` whose projections this module recognises, in module order."""
    groups = []
    for block_name, block in model.named_modules():
        heads = _head_count(block)
        if heads is None and not isinstance(getattr(block, "head_dim", None), int):
            continue
        members: tuple[str, ...] = ()
        fused = 1
        for names in SEPARATE:
            if all(_linear(block, n) is not None for n in names):
                members = tuple(_join(block_name, n) for n in names)
                break
        else:
            fused_name = next((n for n in FUSED if _linear(block, n) is not None), None)
            if fused_name is not None:
                members, fused = (_join(block_name, fused_name),), 3
        if not members:
            continue
        out = _out_projection(model, block_name)
        lin = [_linear(model, m) for m in members]
        width = lin[0].out_features // fused  # type: ignore[union-attr]
        head_dim = next((v for a in HEAD_DIM if isinstance(v := getattr(block, a, None), int) and v > 0), 0)
        if heads is None:  # Llama-style: only the head size is an attribute
            heads = width // head_dim
        head_dim = head_dim or width // heads
        skip = None
        if out is None:
            skip = "attention block without a recognised output projection: its heads are not pruned"
        elif any(m.out_features != lin[0].out_features for m in lin):  # type: ignore[union-attr]
            skip = ("grouped-query attention (keys and values have fewer heads than queries): its heads are "
                    "not pruned")
        elif heads * head_dim * fused != lin[0].out_features or \
                _linear(model, out).in_features != heads * head_dim:  # type: ignore[union-attr]
            skip = (f"its projections ({lin[0].out_features} outputs) do not match {heads} heads x {head_dim}: "
                    "its heads are not pruned")
        groups.append(HeadGroup(block=block_name, members=members, fused=fused, out=out or "", heads=heads,
                                head_dim=head_dim, skip=skip))
    return groups


def group_of(groups: list[HeadGroup], layer: str) -> HeadGroup | None:
    return next((g for g in groups if layer in g.members), None)


def heads_kept(target_channels: int, per_head: int) -> int:
    """Heads a member's output-channel target keeps (``channel_target`` rounded to whole heads; at least one).

    The one rule: ``apply`` cuts to it and the latency predictor resolves plans with it."""
    return max(1, round(target_channels / per_head))


def current_heads(model: nn.Module, group: HeadGroup) -> int:
    return model.get_submodule(group.members[0]).out_features // group.per_head


def _head_channels(head_dim: int, heads: list[int], total_heads: int, parts: int = 1) -> list[int]:
    """Channels holding ``heads`` in a tensor of ``parts`` stacked ``total_heads x head_dim`` blocks (a fused qkv
    output has three, the output projection's input one)."""
    width = total_heads * head_dim
    return [part * width + h * head_dim + j for part in range(parts) for h in heads for j in range(head_dim)]


@torch.no_grad()
def head_importance(model: nn.Module, group: HeadGroup) -> torch.Tensor:
    """L2 norm of each head's weights: its rows of q, k, v (with biases) and its columns of the output projection
    (Torch-Pruning's group-magnitude criterion, at head granularity)."""
    n = current_heads(model, group)
    score = torch.zeros(n, device=model.get_submodule(group.out).weight.device)
    for h in range(n):
        rows = _head_channels(group.head_dim, [h], n, group.fused)
        cols = _head_channels(group.head_dim, [h], n)
        for name in group.members:
            m = model.get_submodule(name)
            score[h] += m.weight[rows].pow(2).sum() + (m.bias[rows].pow(2).sum() if m.bias is not None else 0)
        score[h] += model.get_submodule(group.out).weight[:, cols].pow(2).sum()
    return score.sqrt()


MISPLACED = ("the model's output after cutting its heads differs from the teacher's with those heads silenced (its "
             "forward splits heads in a way this module does not recognise, e.g. a hard-coded head count); not pruned")


def _outputs(model: nn.Module, example_input: Inputs) -> list[torch.Tensor]:
    return [t for t in tree_leaves(call(model, example_input)) if isinstance(t, torch.Tensor)]


@torch.no_grad()
def prune_heads(model: nn.Module, group: HeadGroup, keep: int, example_input: Inputs) -> str | None:
    """Cut ``group`` down to ``keep`` heads in place, lowest importance first; why not, or None.

    The cut is checked, not assumed: on ``example_input`` the cut model must compute what the uncut one computes
    with the dropped heads' columns of the output projection zeroed (removing a head is exactly silencing it).
    A forward that splits heads another way (a literal head count) fails the check; the cut is then undone.
    """
    n = current_heads(model, group)
    if keep >= n:
        return None
    drop = sorted(torch.argsort(head_importance(model, group))[: n - keep].tolist())
    rows = _head_channels(group.head_dim, drop, n, group.fused)
    cols = _head_channels(group.head_dim, drop, n)
    out = model.get_submodule(group.out)
    saved = out.weight[:, cols].clone()
    out.weight[:, cols] = 0
    expected = _outputs(model, example_input)
    out.weight[:, cols] = saved
    block = model.get_submodule(group.block)
    layers = [model.get_submodule(m) for m in (*group.members, group.out)]
    before = [(m.weight, m.bias, m.in_features, m.out_features) for m in layers]
    attrs = {a: getattr(block, a) for a in (*HEAD_COUNT, *HEADS_WIDTH) if isinstance(getattr(block, a, None), int)}
    try:
        for m in layers[:-1]:
            tp.prune_linear_out_channels(m, rows)
        tp.prune_linear_in_channels(out, cols)
        for attr in attrs:
            setattr(block, attr, keep if attr in HEAD_COUNT else keep * group.head_dim)
        got = _outputs(model, example_input)
        ok = len(got) == len(expected) and all(
            g.shape == e.shape and torch.allclose(g, e, rtol=1e-4, atol=1e-5 * max(1.0, e.abs().max().item()))
            for g, e in zip(got, expected, strict=True))
    except Exception:  # noqa: BLE001 - any failure of the cut (a read-only attribute) or of the cut model's forward
        ok = False         # means the cut is undone
    if not ok:
        for m, (w, b, i, o) in zip(layers, before, strict=True):
            m.weight, m.bias, m.in_features, m.out_features = w, b, i, o
        for attr, value in attrs.items():
            setattr(block, attr, value)
        return MISPLACED
    return None


__all__ = ["HeadGroup", "attention_groups", "group_of", "heads_kept", "current_heads", "head_importance",
           "prune_heads", "MISPLACED"]
