"""k-means weight sharing and Huffman-coded storage: codebooks, exact zeros, trainable centroids that survive
replay, size objective == packed bytes, exact entropy-coding round trips, clear config errors."""

import json
import math

import numpy as np
import optuna
import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from autocompress import Task
from autocompress.compress import apply, bake
from autocompress.compress.layers import discover_layers
from autocompress.compress.quantize import SharedWeight, kmeans_1d, magnitude_mask, quantize_weight
from autocompress.config import FinetuneConfig, SearchSpaceConfig, load_search_space
from autocompress.errors import ConfigError
from autocompress.evaluate import entropy
from autocompress.evaluate.candidate import Candidate
from autocompress.evaluate.size import compressed_size, weight_storage_bits
from autocompress.export.artifact import export_plan
from autocompress.export.loader import load
from autocompress.export.pack import pack_state, pack_weight, unpack_state
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.space import SearchSpace
from autocompress.tasks.models import LeNet5, lenet300

SHARED = dict(weight_sharing=True, entropy_coding=True)
LENET5_PLAN = CompressionPlan(layers={
    "features.0": LayerPlan(sparsity=0.3, weight_bits=5, **SHARED),
    "features.3": LayerPlan(sparsity=0.8, weight_bits=4, **SHARED),
    "classifier.1": LayerPlan(sparsity=0.95, weight_bits=3, **SHARED),
    "classifier.3": LayerPlan(sparsity=0.9, weight_bits=4, entropy_coding=True),  # uniform grid, Huffman-coded
    "classifier.5": LayerPlan(sparsity=0.5, weight_bits=2, weight_sharing=True),  # shared, fixed-length codes
})


def _lenet5_task(n: int = 64) -> Task:
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 1, 28, 28, generator=g)
    data = TensorDataset(x, torch.randint(0, 10, (n,), generator=g))
    return Task(name="lenet5-random", model=LeNet5().eval(), example_input=x[:1], train=data, val=data, test=data)


def _nonzero_values(w: torch.Tensor) -> torch.Tensor:
    return torch.unique(w[w != 0])


# --- k-means ------------------------------------------------------------------------------------------------

def test_kmeans_1d_linear_init_converges_to_cluster_means():
    x = torch.cat([torch.full((10,), -1.0), torch.full((5,), 0.5), torch.full((7,), 2.0)])
    c, a = kmeans_1d(x, 4)
    assert c.shape == (4,) and torch.all(c[1:] >= c[:-1])
    assert torch.equal(c[a], x)  # every value is its cluster's mean: three exact clusters
    assert set(c[a].tolist()) == {-1.0, 0.5, 2.0}


@pytest.mark.parametrize("bits,sparsity", [(2, 0.0), (4, 0.9), (6, 0.97)])
def test_shared_layer_has_at_most_2_pow_bits_values_and_exact_zeros(bits, sparsity):
    torch.manual_seed(bits)
    teacher = lenet300().eval()
    plan = CompressionPlan(layers={"1": LayerPlan(sparsity=sparsity, weight_bits=bits, weight_sharing=True)})
    cm = apply(teacher, plan, torch.randn(1, 784))
    w = cm.model.get_submodule("1").weight.detach()
    mask = magnitude_mask(teacher.get_submodule("1").weight, sparsity)
    assert torch.equal(w == 0, mask == 0) if sparsity > 0 else bool((w != 0).all())
    values = _nonzero_values(w)
    assert values.numel() <= 2**bits
    # linear init + empty-cluster relocation: the codebook is used, not stranded in the pruning gap
    assert values.numel() >= 2**bits * 3 // 4
    lp = plan.layer("1")
    assert lp.int8_kernel is False  # not a uniform grid, even with 8-bit weights (float kernels)
    assert LayerPlan(weight_bits=8, activation_bits=8).int8_kernel


def test_centroids_train_with_summed_gradients_and_zeros_stay():
    torch.manual_seed(0)
    w = torch.randn(8, 20)
    mask = magnitude_mask(w, 0.5)
    p = SharedWeight(w, mask, 2)
    out = p(w)
    g = torch.randn_like(out)
    (out * g).sum().backward()
    expected = torch.zeros(4).index_add_(0, p.assign[mask.bool()], g[mask.bool()])
    assert torch.allclose(p.centroids.grad, expected)  # each centroid gets the sum of its weights' gradients
    before = p.centroids.detach().clone()
    opt = torch.optim.SGD(p.parameters(), lr=0.1)
    opt.step()
    after = p(w).detach()
    assert not torch.equal(p.centroids.detach(), before)
    assert torch.equal(after == 0, mask == 0) and _nonzero_values(after).numel() <= 4


def test_baked_replay_equals_the_trained_candidate():
    task = _lenet5_task()
    cand = Candidate(task, LENET5_PLAN, FinetuneConfig(steps=3, full_steps=3, batch_size=16, lr=1e-2), seed=0)
    start = cand.cm.model.get_submodule("classifier.1").parametrizations.weight[0].centroids.detach().clone()
    cand.train_to(3)
    trained = cand.cm.model.get_submodule("classifier.1").parametrizations.weight[0].centroids.detach()
    assert not torch.equal(start, trained)  # fine-tuning moved the centroids
    baked = cand.baked()  # replays apply() (k-means again) and loads the trained state: centroids, assignments
    for name, _ in baked.compressed_modules():
        live = cand.cm.model.get_submodule(name).weight.detach()
        assert torch.equal(baked.model.get_submodule(name).weight.detach(), live), name
    with torch.no_grad():
        assert torch.equal(baked.model(task.val.tensors[0]), cand.cm.model(task.val.tensors[0]))


# --- storage ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1])
def test_huffman_round_trip_is_exact(seed):
    rng = np.random.default_rng(seed)
    cases = [rng.integers(0, 16, 5000), np.minimum(rng.geometric(0.05, 20000) - 1, 255), np.full(100, 3),
             np.array([0, 1]), np.zeros(0, dtype=np.int64), rng.integers(0, 2, 33)]
    for symbols in cases:
        counts = np.bincount(symbols, minlength=4)
        lengths, bits = entropy.stream_bits(counts)
        buf = entropy.encode(symbols, lengths)
        assert len(buf) == math.ceil(entropy.payload_bits(counts, lengths) / 8)
        table = entropy.encode_table(lengths)
        assert len(table) == math.ceil(entropy.table_bits(lengths) / 8)
        assert np.array_equal(entropy.decode(buf, symbols.size, entropy.decode_table(table)), symbols)
    runs = np.array([0, 0, 7, 15, 16, 300, 1, 0])
    for m in entropy.ESCAPES:
        assert np.array_equal(entropy.runs_from_symbols(entropy.gap_symbols(runs, m), m), runs)
    with pytest.raises(entropy.EntropyError):
        entropy.decode(buf[:-1] if buf else b"", 10**6, lengths)


@pytest.mark.parametrize("shared", [False, True])
def test_huffman_storage_is_exact_and_its_objective(shared):
    torch.manual_seed(0)
    w = torch.randn(120, 400)
    mask = magnitude_mask(w, 0.95)
    w = SharedWeight(w, mask, 3)(w).detach() if shared else quantize_weight(w * mask, 4).detach()
    bits = 3 if shared else 4
    packed = pack_weight(w, bits, shared=shared, entropy=True)
    objective = weight_storage_bits(w, bits, shared=shared, entropy=True)
    assert objective.storage == packed.entry["storage"] == "huffman"
    assert objective.size_bits < weight_storage_bits(w, bits, shared=shared).size_bits  # cheaper than CSR/bitmask
    assert objective.size_bits / 8 <= len(packed.data) <= objective.size_bits / 8 + len(packed.entry["sections"])
    index = {"type": "autocompress-packed-weights", "version": 2, "nbytes": len(packed.data),
             "tensors": [{"name": "w", "offset": 0, **packed.entry}]}
    assert torch.equal(unpack_state(packed.data, index)["w"], w)


def test_size_objective_equals_packed_bytes_for_a_shared_huffman_lenet300():
    torch.manual_seed(0)
    plan = CompressionPlan(layers={"1": LayerPlan(sparsity=0.97, weight_bits=5, **SHARED),
                                   "3": LayerPlan(sparsity=0.9, weight_bits=5, **SHARED),
                                   "5": LayerPlan(sparsity=0.5, weight_bits=6, **SHARED)})
    cm = bake(apply(lenet300().eval(), plan, torch.randn(1, 784)))
    size, per = compressed_size(cm)
    assert per["1"].storage == per["3"].storage == "huffman"  # the small output layer may pick another layout
    data, index = pack_state(cm.model, cm.weight_bits, shared=cm.weight_sharing, entropy=cm.entropy_coding)
    sections = sum(len(t["sections"]) for t in index["tensors"])
    assert size <= len(data) <= size + sections  # byte alignment only
    assert 266_610 * 4 / len(data) > 50
    state = unpack_state(data, index)
    assert all(torch.equal(state[k], v) for k, v in cm.model.state_dict().items())


def test_exported_shared_lenet5_matches_the_objective_and_loads(tmp_path):
    task = _lenet5_task()
    result = export_plan(task, LENET5_PLAN, tmp_path / "out", formats="torch", finetune=2, measure=False,
                         finetune_cfg=FinetuneConfig(steps=2, full_steps=2, batch_size=16))
    card = result.card
    layers = card["layers"]
    assert layers["classifier.1"]["weight_sharing"] and layers["classifier.1"]["storage"] == "huffman"
    assert not layers["classifier.3"]["weight_sharing"] and layers["classifier.3"]["storage"] == "huffman"
    assert card["lowering"]["int8"] == [] and "k-means" in card["lowering"]["notes"]["classifier.1"]
    biases = sum(m.bias.numel() for m in task.model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    objective = math.ceil((sum(v["objective_bits"] for v in layers.values()) + 32 * biases) / 8)
    on_disk = (result.path / "weights.bin").stat().st_size
    index = json.loads((result.path / "weights.json").read_text())["weights"]
    assert objective <= on_disk <= objective + sum(len(t["sections"]) for t in index["tensors"])
    model = load(result.path, architecture=LeNet5())
    for name, lp in LENET5_PLAN.layers.items():
        w = model.get_submodule(name).weight.detach()
        if lp.weight_sharing:
            assert _nonzero_values(w).numel() <= 2**lp.weight_bits
        assert abs(float((w == 0).float().mean()) - lp.sparsity) < 0.01


# --- plans and configs -----------------------------------------------------------------------------------------

def test_plan_json_round_trip_and_old_plans_read_with_defaults():
    assert CompressionPlan.from_json(LENET5_PLAN.to_json()) == LENET5_PLAN
    old = {"type": "CompressionPlan", "version": 1, "data": {"layers": {"1": {
        "sparsity": 0.5, "weight_bits": 4, "activation_bits": 32, "channel_keep": 1.0, "rank_ratio": 1.0}}}}
    lp = CompressionPlan.from_dict(old).layer("1")
    assert lp.weight_sharing is False and lp.entropy_coding is False
    assert "km" in LENET5_PLAN.summary() and "huff" in LENET5_PLAN.summary()


@pytest.mark.parametrize("kwargs,match", [
    (dict(weight_sharing=True, weight_bits=32), "weight_bits <= 8"),
    (dict(weight_sharing=True, weight_bits=4, activation_bits=8), "activation_bits must be 32"),
    (dict(entropy_coding=True), "needs weight_bits < 32"),
])
def test_inconsistent_layer_plans_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        LayerPlan(**kwargs)
    bad = {"type": "CompressionPlan", "version": 1, "data": {"layers": {"1": kwargs}}}
    with pytest.raises(ValueError, match="malformed CompressionPlan"):
        CompressionPlan.from_dict(bad)


@pytest.mark.parametrize("group,words", [
    ({"weight_sharing": [True], "weight_bits": [4], "activation_bits": [8, 32]},
     ["groups[0]", "weight_sharing", "activation_bits", "[32]"]),
    ({"weight_sharing": [True], "weight_bits": [32]}, ["groups[0]", "weight_bits", "<= 8"]),
    ({"entropy_coding": [True]}, ["groups[0]", "entropy_coding", "< 32"]),
    ({"weight_sharing": ["maybe"]}, ["groups[0].weight_sharing", "maybe"]),
])
def test_bad_sharing_config_is_a_clear_error(tmp_path, group, words):
    path = tmp_path / "space.yaml"
    path.write_text(json.dumps({"version": 1, "groups": [{"name": "g", **group}]}))
    with pytest.raises(ConfigError) as info:
        load_search_space(path)
    for word in [str(path), *words]:
        assert word in str(info.value), (word, str(info.value))


def test_space_samples_sharing_only_with_quantized_weights():
    teacher = lenet300().eval()
    cfg = SearchSpaceConfig.model_validate({"version": 1, "groups": [{
        "name": "fc", "types": ["Linear"], "sparsity": [0.0, 0.9], "weight_bits": [3, 32],
        "weight_sharing": [True, False], "entropy_coding": [True]}]})
    space = SearchSpace(cfg, discover_layers(teacher, torch.randn(1, 784)))
    assert "1:weight_sharing" in space.distributions() and "1:entropy_coding" not in space.distributions()
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    seen = set()
    for _ in range(30):
        plan = space.suggest(study.ask())
        for lp in plan.layers.values():
            if lp.weight_bits == 32:
                assert not lp.weight_sharing and not lp.entropy_coding
            else:
                assert lp.entropy_coding
                seen.add(lp.weight_sharing)
    assert seen == {True, False}
