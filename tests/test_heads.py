"""Attention-head pruning: whole heads leave q, k, v and the output projection together; a cut is exactly silencing
those heads; apply, the latency predictor and export agree; a forward that splits heads another way is left alone."""

import copy
import math

import numpy as np
import pytest
import torch
from conftest import run_complete, write_study
from torch import nn

from autocompress.compress import apply
from autocompress.compress.heads import (
    MISPLACED,
    _head_channels,
    attention_groups,
    head_importance,
    prune_heads,
)
from autocompress.compress.structured import BREAKS_FORWARD
from autocompress.latency.analysis import TeacherAnalysis
from autocompress.latency.lowering import lower_ops
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.tasks.inputs import call
from autocompress.tasks.models import ViT

transformers = pytest.importorskip("transformers")

EAGER = "eager"  # as the Hugging Face tasks load models: SDPA exports with head counts baked into its reshapes
IDS = torch.randint(1, 100, (2, 12), generator=torch.Generator().manual_seed(0))
IMAGES = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))


def _gpt2():
    from autocompress.tasks.hf import linearize_conv1d

    model = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=100, n_positions=32, n_embd=64,
                                                                 n_layer=2, n_head=4, bos_token_id=1,
                                                                 eos_token_id=1, attn_implementation=EAGER,
                                                                 use_cache=False))  # as the causal-LM task runs it
    linearize_conv1d(model)
    return model


def _llama(kv_heads=4):
    return transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=kv_heads, max_position_embeddings=32, attn_implementation=EAGER))


MODELS = {  # name: (builder, example input, output of the model)
    "bert": (lambda: transformers.BertModel(transformers.BertConfig(
        vocab_size=100, hidden_size=64, num_hidden_layers=2, num_attention_heads=4, intermediate_size=128,
        attn_implementation=EAGER), add_pooling_layer=False), IDS, lambda out: out.last_hidden_state),
    "distilbert": (lambda: transformers.DistilBertModel(transformers.DistilBertConfig(
        vocab_size=100, dim=64, n_layers=2, n_heads=4, hidden_dim=128, attn_implementation=EAGER)), IDS,
        lambda out: out.last_hidden_state),
    "gpt2": (_gpt2, IDS, lambda out: out.logits),
    "llama": (_llama, IDS, lambda out: out.logits),
    "hf-vit": (lambda: transformers.ViTModel(transformers.ViTConfig(
        image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, attn_implementation=EAGER)), IMAGES, lambda out: out.last_hidden_state),
    "zoo-vit": (ViT, IMAGES, lambda out: out),
}


def _build(name):
    torch.manual_seed(0)
    ctor, x, read = MODELS[name]
    return ctor().eval(), x, read


def _silenced(model, group, heads):
    """The model with ``heads`` of ``group`` silenced: their columns of the output projection zeroed."""
    ref = copy.deepcopy(model)
    with torch.no_grad():
        ref.get_submodule(group.out).weight[:, _head_channels(group.head_dim, heads, group.heads)] = 0
    return ref


@pytest.mark.parametrize("name", MODELS)
def test_cutting_heads_is_exactly_silencing_them(name):
    model, x, read = _build(name)
    groups = attention_groups(model)
    assert len(groups) == (4 if name == "zoo-vit" else 2) and all(g.skip is None for g in groups)
    g = groups[0]
    assert g.heads == 4 and g.head_dim == 16 and len(g.members) == (1 if name in ("gpt2", "zoo-vit") else 3)
    weakest = sorted(torch.argsort(head_importance(model, g))[:2].tolist())
    others = sorted(set(range(4)) - set(weakest))
    with torch.no_grad():
        expected = read(call(_silenced(model, g, weakest), x))
        wrong = read(call(_silenced(model, g, others), x))
        assert prune_heads(model, g, 2, x) is None
        got = read(call(model, x))
    assert model.get_submodule(g.out).in_features == 32
    assert all(model.get_submodule(m).out_features == 32 * g.fused for m in g.members)
    assert torch.allclose(got, expected, atol=1e-5)
    assert not torch.allclose(got, wrong, atol=1e-3)  # the check can fail: silencing other heads differs


def test_grouped_query_attention_is_reported_not_pruned():
    torch.manual_seed(0)
    model = _llama(kv_heads=2).eval()
    groups = attention_groups(model)
    assert groups and all("grouped-query" in g.skip for g in groups)
    name = groups[0].members[0]
    cm = apply(model, CompressionPlan(layers={name: LayerPlan(channel_keep=0.5)}), IDS[:1])
    assert "grouped-query" in cm.skipped[name] and cm.model.get_submodule(name).out_features == 64


class Logits(nn.Module):
    """A model returning one tensor, as a task's forward makes it (what exports is what it computes)."""

    def __init__(self, model, read) -> None:
        super().__init__()
        self.model, self.read = model, read

    def forward(self, x):
        return self.read(self.model(x))


@pytest.mark.parametrize("name", ["bert", "zoo-vit", "gpt2"])  # GPT-2: fused q/k/v split in three, tied head
def test_apply_and_the_predictor_cut_the_same_heads(name):
    model, x, read = _build(name)
    if name == "gpt2":  # as the causal-LM task wraps it: token ids and attention mask in, logits out
        from autocompress.tasks.hf import CausalLM

        model, x = CausalLM(model).eval(), {"input_ids": x[:1], "attention_mask": torch.ones_like(x[:1])}
    else:
        model, x = Logits(model, read).eval(), x[:1]
    groups = attention_groups(model)
    q0, q1 = groups[0].members[0], groups[1].members[-1]  # q of block 0, v (or the fused qkv) of block 1
    layers = {q0: LayerPlan(channel_keep=0.5), q1: LayerPlan(channel_keep=0.25)}
    plans = [CompressionPlan(layers=layers),
             CompressionPlan(layers=layers, student=StudentPlan(width=0.5)),  # every block: 2 of 4 heads
             CompressionPlan(layers={**layers, q1: LayerPlan(channel_keep=0.25, weight_bits=8, activation_bits=8)})]
    an = TeacherAnalysis(model, x)
    for plan in plans:
        cm = apply(model, plan, x)
        res = an.resolve(plan)
        assert not {k: v for k, v in cm.skipped.items() if "head" in v}, cm.skipped
        for layer in res.weights:
            assert tuple(cm.model.get_submodule(layer).weight.shape) == res.weights[layer], (layer, plan.summary())
        lowered = lower_ops(res, block=16)
        assert lowered
    g0, g1 = groups[0], groups[1]
    cm = apply(model, plans[0], x)
    assert cm.model.get_submodule(g0.out).in_features == 2 * 16 and cm.model.get_submodule(g1.out).in_features == 16
    per_member = [cm.model.get_submodule(m).out_features for m in g0.members]
    assert per_member == [2 * 16 * g0.fused] * len(g0.members)


class HardCodedHeads(nn.Module):
    """An attention whose forward uses a literal head count: its head-count attribute does not reach the reshape."""

    def __init__(self, dim: int = 64) -> None:
        super().__init__()
        self.heads = 4
        self.qkv, self.proj, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 10)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
        return self.head(self.proj(a.transpose(1, 2).reshape(b, n, -1)).mean(1))


class UnknownAttention(HardCodedHeads):
    """No head-count attribute: not recognised, so Torch-Pruning cuts qkv alone and the forward breaks."""

    def __init__(self) -> None:
        super().__init__()
        del self.heads

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, 4, d // 4).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1), -1) @ v
        return self.head(self.proj(a.transpose(1, 2).reshape(b, n, d)).mean(1))


@pytest.mark.parametrize("cls, why", [(HardCodedHeads, MISPLACED), (UnknownAttention, BREAKS_FORWARD)])
def test_a_forward_that_splits_heads_another_way_is_left_alone_and_reported(cls, why):
    torch.manual_seed(0)
    model, x = cls().eval(), torch.randn(1, 6, 64)
    plan = CompressionPlan(layers={"qkv": LayerPlan(channel_keep=0.5)})
    cm = apply(model, plan, x)
    assert cm.skipped == {"qkv": why}
    assert cm.model.qkv.out_features == 192 and cm.model.proj.in_features == 64 and torch.equal(cm.model(x), model(x))
    assert getattr(cm.model, "heads", 4) == 4  # the undone cut restored the attribute too
    assert TeacherAnalysis(model, x).resolve(plan).skipped == cm.skipped


class AttributeHeads(HardCodedHeads):
    """Heads from the attribute, head size inferred: cut correctly in torch, but the exported graph keeps the head
    count as a constant, so the teacher's resized graph would split the cut model's heads wrongly."""

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), -1) @ v
        return self.head(self.proj(a.transpose(1, 2).reshape(b, n, -1)).mean(1))


def test_a_head_count_baked_into_the_graph_is_cut_by_apply_and_refused_by_the_predictor():
    from autocompress.latency.analysis import AnalysisError

    torch.manual_seed(0)
    model, x = AttributeHeads().eval(), torch.randn(1, 6, 64)
    plan = CompressionPlan(layers={"qkv": LayerPlan(channel_keep=0.5)})
    cm = apply(model, plan, x)
    assert not cm.skipped and cm.model.heads == 2 and cm.model.proj.in_features == 32
    with pytest.raises(AnalysisError, match="head count as a constant"):
        TeacherAnalysis(model, x).resolve(plan)


def test_a_study_prunes_heads_of_a_hf_encoder_and_exports_it(tmp_path):
    """The whole path on a saved BERT: trials with half the heads, an export that runs them on ONNX Runtime."""
    from autocompress.export.artifact import export_from_study
    from autocompress.export.loader import load
    from autocompress.tasks import load_task

    cfg = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=0)
    torch.manual_seed(0)
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(tmp_path / "bert")
    options = {"folder": str(tmp_path / "bert"), "data": "helpers_tasks:token_splits"}
    space = {"version": 1, "groups": [{"name": "attention", "types": ["Linear"], "per_layer": False,
                                       "channel_keep": [0.5], "weight_bits": [8, 32]}]}
    path = write_study(tmp_path, task="hf-classifier", task_options=options, search_space=space, n_trials=2,
                       sampler="random", fidelity={"promotion": False, "self_check": 0})
    task = load_task("hf-classifier", options)
    _, _, done = run_complete(path, 2, task=task)
    assert not any("head" in why for t in done for why in t.user_attrs.get("skipped", {}).values())
    res = export_from_study(str(path), tmp_path / "out", trial=done[0].number, task=task, finetune="none",
                            measure=False)
    onnx_model = load(tmp_path / "out", runtime="onnx")
    torch_model = load(tmp_path / "out", architecture=task.model)
    attn = [m for n, m in torch_model.named_modules() if n.endswith("attention.output.dense")]
    assert attn and all(m.in_features == 16 for m in attn)  # 2 of 4 heads of 8 channels
    ids = torch.stack([task.val[i][0] for i in range(4)])
    with torch.no_grad():
        assert np.allclose(onnx_model(ids).numpy(), torch_model(ids).numpy(), atol=1e-3)
    assert res.card["source"]["trial"] == done[0].number


def test_a_cut_that_breaks_the_forward_is_undone_and_the_other_cuts_are_kept():
    torch.manual_seed(0)
    model, x = UnknownAttention().eval(), torch.randn(1, 6, 64)
    plan = CompressionPlan(layers={"qkv": LayerPlan(channel_keep=0.5), "proj": LayerPlan(channel_keep=0.5)})
    cm = apply(model, plan, x)
    assert cm.skipped == {"qkv": BREAKS_FORWARD}
    assert cm.model.qkv.out_features == 192 and cm.model.proj.out_features == 32  # the other cut is kept
    assert cm.model(x).shape == (1, 10)
    assert TeacherAnalysis(model, x).resolve(plan).skipped == cm.skipped
