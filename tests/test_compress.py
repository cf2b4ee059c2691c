"""One suite every compression method passes on every reference architecture (plain, residual, depthwise)."""

import pytest
import torch
from torch import nn

from autocompress.compress import apply, bake, calibrate, discover_layers
from autocompress.compress.depth import SkipBlock
from autocompress.compress.quantize import magnitude_mask, quantize_weight
from autocompress.compress.structured import channel_target
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.tasks.models import LeNet5, SmallResNet, lenet300


class MobileNetish(nn.Module):
    """Depthwise-separable CNN (MobileNetV2-style inverted residual)."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU())
        self.expand = nn.Conv2d(8, 24, 1)
        self.dw = nn.Conv2d(24, 24, 3, 1, 1, groups=24)
        self.project = nn.Conv2d(24, 8, 1)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        x = self.stem(x)
        y = self.project(torch.relu(self.dw(torch.relu(self.expand(x)))))
        x = x + y
        return self.head(x.mean(dim=(2, 3)))


MODELS = {
    "lenet5": LeNet5,
    "lenet300": lenet300,
    "resnet": lambda: SmallResNet(width=8, blocks=(2, 1, 1)),
    "mobilenet": MobileNetish,
}
X = torch.randn(4, 1, 28, 28, generator=torch.Generator().manual_seed(0))


def _teacher(name):
    torch.manual_seed(0)
    m = MODELS[name]().eval()
    return m


def _all_layers(model, **kw):
    return CompressionPlan(layers={i.name: LayerPlan(**kw) for i in discover_layers(model, X[:1])})


def _weights(cm):
    return {n: m.weight.detach() for n, m in cm.compressed_modules()}


@pytest.mark.parametrize("name", MODELS)
def test_teacher_untouched_and_output_valid(name):
    teacher = _teacher(name)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    cm = bake(apply(teacher, _all_layers(teacher, sparsity=0.5, weight_bits=4, channel_keep=0.5), X[:1]))
    for k, v in teacher.state_dict().items():
        assert torch.equal(v, before[k]), k
    out = cm.model(X)
    assert out.shape == teacher(X).shape and torch.isfinite(out).all()


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("sparsity", [0.3, 0.9])
def test_unstructured_sparsity_is_exact(name, sparsity):
    teacher = _teacher(name)
    cm = bake(apply(teacher, _all_layers(teacher, sparsity=sparsity), X[:1]))
    for n, w in _weights(cm).items():
        assert int((w == 0).sum()) == round(sparsity * w.numel()), n


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("bits", [2, 3, 4, 8])
def test_quantized_layers_have_at_most_2_pow_b_levels_per_channel(name, bits):
    teacher = _teacher(name)
    cm = bake(apply(teacher, _all_layers(teacher, weight_bits=bits, sparsity=0.25), X[:1]))
    for n, w in _weights(cm).items():
        for row in w.reshape(w.shape[0], -1):
            assert row.unique().numel() <= 2**bits, n
        assert int((w == 0).sum()) >= round(0.25 * w.numel()), "quantization must keep pruned zeros"


@pytest.mark.parametrize("name", MODELS)
def test_structured_pruning_removes_channels(name):
    teacher = _teacher(name)
    layers = discover_layers(teacher, X[:1])
    cm = bake(apply(teacher, _all_layers(teacher, channel_keep=0.5), X[:1]))
    n_before = sum(p.numel() for p in teacher.parameters())
    n_after = sum(p.numel() for p in cm.model.parameters())
    assert n_after < 0.6 * n_before
    for info in layers:
        mod = cm.model.get_submodule(info.name)
        out_c = mod.out_features if isinstance(mod, nn.Linear) else mod.out_channels
        if info.is_output:
            assert out_c == info.out_channels
        elif info.name not in cm.skipped:
            assert out_c <= round(info.out_channels * 0.5) or out_c < info.out_channels, info.name
    assert cm.model(X).shape == (4, 10)


@pytest.mark.parametrize("name", MODELS)
def test_student_width_initialised_from_teacher(name):
    teacher = _teacher(name)
    cm = apply(teacher, CompressionPlan(student=StudentPlan(width=0.5)), X[:1])
    assert sum(p.numel() for p in cm.model.parameters()) < 0.6 * sum(p.numel() for p in teacher.parameters())
    # kept channels are teacher channels: every student weight row appears in the teacher's layer
    first = discover_layers(teacher, X[:1])[0].name
    tw = teacher.get_submodule(first).weight.detach().flatten(1)
    sw = cm.model.get_submodule(first).weight.detach().flatten(1)
    assert all(any(torch.allclose(r, t[: r.numel()]) for t in tw) for r in sw)


def test_student_depth_drops_residual_blocks():
    teacher = _teacher("resnet")
    cm = apply(teacher, CompressionPlan(student=StudentPlan(depth=0.5)), X[:1])
    assert isinstance(cm.model.layer1[1], SkipBlock) and not list(cm.model.layer1[1].parameters())
    assert "layer1.1.conv1" in cm.skipped
    assert cm.model(X).shape == (4, 10)
    cm2 = apply(_teacher("lenet5"), CompressionPlan(student=StudentPlan(depth=0.5)), X[:1])
    assert "(student depth)" in cm2.skipped


@pytest.mark.parametrize("name", ["lenet5", "lenet300"])
def test_low_rank_factorizes_and_approximates(name):
    teacher = _teacher(name)
    errors = {}
    for ratio in (0.25, 0.5):
        cm = bake(apply(teacher, _all_layers(teacher, rank_ratio=ratio), X[:1]))
        for layer, mods in cm.modules.items():
            if len(mods) != 2:
                assert "rank" in cm.skipped[layer]  # left whole only where factors would not save weights
                continue
            first, second = (cm.model.get_submodule(m).weight.detach().flatten(1) for m in mods)
            w = teacher.get_submodule(layer).weight.detach().flatten(1)
            assert first.shape[0] == max(1, round(ratio * min(w.shape)))
            errors.setdefault(layer, []).append(float((second @ first - w).norm() / w.norm()))
    assert errors
    for layer, (e_quarter, *rest) in errors.items():
        if rest:
            assert rest[0] < e_quarter, layer  # more rank, closer to the layer


def test_low_rank_full_rank_is_exact():
    lin = nn.Linear(6, 5)
    from autocompress.compress.lowrank import factorize

    seq = factorize(lin, 5)
    x = torch.randn(3, 6)
    assert torch.allclose(seq(x), lin(x), atol=1e-5)


def test_grouped_conv_low_rank_is_skipped_not_fatal():
    teacher = _teacher("mobilenet")
    cm = apply(teacher, CompressionPlan(layers={"dw": LayerPlan(rank_ratio=0.1)}), X[:1])
    assert "dw" in cm.skipped and cm.model(X).shape == (4, 10)


@pytest.mark.parametrize("name", MODELS)
def test_apply_is_deterministic(name):
    teacher = _teacher(name)
    plan = _all_layers(teacher, sparsity=0.5, weight_bits=3, channel_keep=0.75, rank_ratio=0.5)
    a = bake(apply(teacher, plan, X[:1])).model.state_dict()
    b = bake(apply(teacher, plan, X[:1])).model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_unknown_layer_in_plan_raises():
    with pytest.raises(ValueError, match="does not have"):
        apply(_teacher("lenet5"), CompressionPlan(layers={"nope": LayerPlan(weight_bits=4)}), X[:1])


@pytest.mark.parametrize("bits", [8, 16])
def test_activation_quantization_after_calibration(bits):
    teacher = _teacher("lenet5")
    cm = apply(teacher, CompressionPlan(layers={"classifier.1": LayerPlan(activation_bits=bits)}), X[:1])
    calibrate(cm, [X])
    seen = []
    cm.model.classifier[1].register_forward_pre_hook(lambda m, a: seen.append(a[0]))  # runs after the quantizer
    cm.model(X)
    assert seen[0].unique().numel() <= 2**bits
    if bits == 8:
        assert seen[0].unique().numel() > 4


def test_quantize_weight_gradients_pass_through():
    w = torch.randn(4, 9, requires_grad=True)
    quantize_weight(w, 3).sum().backward()
    assert torch.equal(w.grad, torch.ones_like(w))


def test_magnitude_mask_keeps_largest():
    w = torch.tensor([[0.1, -5.0, 0.2, 3.0]])
    assert magnitude_mask(w, 0.5).tolist() == [[0.0, 1.0, 0.0, 1.0]]


@pytest.mark.parametrize("out,width,keep,multiple,expect", [
    (48, 1.0, 0.75, 1, 36), (48, 1.0, 0.75, 16, 32), (48, 0.5, 1.0, 16, 32),  # 24 -> the nearest multiple, ties up
    (48, 1.0, 0.25, 16, 16), (20, 1.0, 0.25, 16, 16),  # at least one multiple
    (20, 1.0, 0.9, 16, 16), (24, 1.0, 0.75, 16, 16), (100, 0.5, 0.75, 8, 40),
    (6, 0.5, 1.0, 16, 6), (12, 0.5, 1.0, 4, 8), (48, 1.0, 1.0, 16, None),  # never above the layer's channels
])
def test_channel_target_rounds_pruned_counts_to_the_multiple(out, width, keep, multiple, expect):
    assert channel_target(out, width, keep, multiple) == expect


def test_apply_prunes_to_aligned_channel_counts():
    model = nn.Sequential(nn.Conv2d(3, 48, 3, padding=1), nn.ReLU(), nn.Conv2d(48, 40, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(40, 10, 1)).eval()
    x = torch.randn(1, 3, 8, 8)
    layers = {"0": LayerPlan(channel_keep=0.75), "2": LayerPlan(channel_keep=0.75)}
    exact = apply(model, CompressionPlan(layers=layers), x).model
    aligned = apply(model, CompressionPlan(layers=layers, student=StudentPlan(channel_multiple=16)), x).model
    assert (exact[0].out_channels, exact[2].out_channels) == (36, 30)
    assert (aligned[0].out_channels, aligned[2].out_channels) == (32, 32)
    assert aligned[4].in_channels == 32 and aligned(x).shape == (1, 10, 8, 8)


def _structure(cm):
    return {k: tuple(v.shape) for k, v in cm.model.state_dict().items()}, sorted(cm.skipped), cm.removed


def _student_cases():
    from autocompress.tasks.models import MobileNetV2, ViT

    torch.manual_seed(0)
    cases = [(name, _teacher(name), X[:1]) for name in ("lenet5", "resnet", "mobilenet")]
    return cases + [("mobilenet_v2", MobileNetV2(num_classes=10, width=0.35).eval(), torch.randn(1, 3, 32, 32)),
                    ("vit", ViT().eval(), torch.randn(1, 3, 32, 32))]


@pytest.mark.parametrize("case", _student_cases(), ids=lambda c: c[0])
def test_a_plan_applied_to_its_trained_student_has_the_structure_of_the_plan_applied_to_the_teacher(case):
    import numpy as np

    _, teacher, x = case
    rng = np.random.default_rng(0)
    infos = discover_layers(teacher, x)
    for _ in range(4):
        student = StudentPlan(width=float(rng.choice([0.5, 0.75])), depth=float(rng.choice([0.5, 1.0])),
                              channel_multiple=int(rng.choice([1, 8])))
        plan = CompressionPlan(student=student, layers={
            i.name: LayerPlan(channel_keep=float(rng.choice([0.5, 0.75, 1.0])), weight_bits=int(rng.choice([4, 32])))
            for i in infos})
        start = apply(teacher, CompressionPlan(student=student), x)
        with torch.no_grad():  # "trained": other weights, so magnitude pruning picks other channels
            for p in start.model.parameters():
                p.add_(torch.randn_like(p))
        on_student = apply(teacher, plan, x, start=start)
        assert _structure(on_student) == _structure(apply(teacher, plan, x)), plan.summary()
        assert on_student.model(x).shape == teacher(x).shape
    with pytest.raises(ValueError, match="was made for the student"):
        apply(teacher, CompressionPlan(student=StudentPlan(width=0.5)), x, start=apply(teacher, CompressionPlan(), x))
