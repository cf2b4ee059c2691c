"""Compression methods declared once: a suite every registered method passes, and the N:M method that proves a
method is one module plus a registration."""

import dataclasses

import pytest
import torch
from torch import nn

from autocompress.compress import apply, bake, registry
from autocompress.compress.nm import nm_mask
from autocompress.config import LayerGroup, SearchSpaceConfig
from autocompress.evaluate.size import compressed_size, dense_size_bytes
from autocompress.export.pack import pack_state, unpack_state
from autocompress.latency.analysis import TeacherAnalysis
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.space import SearchSpace


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 32),
                         nn.ReLU(), nn.Linear(32, 5)).eval()


X = torch.randn(1, 4, 6, 6)


def _values(knob):
    """Allowed non-default values of a knob."""
    if knob.type is bool:
        return [not knob.default]
    if knob.choices:
        return [c for c in knob.choices if c != knob.default]
    lo, hi, br = knob.interval
    inner = [lo + (hi - lo) * f for f in (0.25, 0.5)]
    return [v for v in inner if v != knob.default]


KNOB_VALUES = [(k, v) for k in registry.KNOBS.values() for v in _values(k)]


@pytest.mark.parametrize("method", registry.METHODS, ids=lambda m: m.name)
def test_every_method_declares_documented_knobs_with_valid_defaults(method):
    assert method.name and method.knobs
    for knob in method.knobs:
        assert knob.doc and knob.check(knob.default) is None and knob.type in (bool, int, float, str)
        assert knob.name in {f.name for f in dataclasses.fields(LayerPlan)}  # the plan's fields come from it
        assert knob.name in LayerGroup.model_fields  # and the config's choice lists
        assert (knob.choices or knob.interval or knob.type is bool) and _values(knob)
    assert not method.active(registry.defaults())


@pytest.mark.parametrize("knob,value", KNOB_VALUES, ids=lambda x: getattr(x, "name", str(x)))
def test_every_knob_value_round_trips_applies_and_is_summarized(knob, value):
    values = {knob.name: value}
    if knob.name in ("weight_sharing", "entropy_coding"):
        values["weight_bits"] = 4  # their rules: quantized weights
    plan = CompressionPlan(layers={"3": LayerPlan(**values)})
    assert CompressionPlan.from_json(plan.to_json()) == plan
    assert plan.summary() != "(uncompressed)" or knob.label is None
    cm = bake(apply(_model(), plan, X))
    assert cm.model(X).shape == (1, 5)
    compressed_size(cm)


@pytest.mark.parametrize("knob", list(registry.KNOBS.values()), ids=lambda k: k.name)
def test_bad_knob_values_are_refused_by_plan_and_config(knob):
    bad = {bool: 3, int: 9, float: 7.5, str: "3:4"}[knob.type]
    with pytest.raises(ValueError, match=knob.name):
        LayerPlan(**{knob.name: bad})
    with pytest.raises(ValueError, match=knob.name if knob.type is bool else f"{knob.name}[\\s\\S]*every choice"):
        LayerGroup(name="g", **{knob.name: [bad]})


def test_identity_plan_changes_nothing():
    model = _model()
    cm = bake(apply(model, CompressionPlan(layers={"3": LayerPlan()}), X))
    assert torch.equal(cm.model(X), model(X))


# --- N:M semi-structured sparsity -------------------------------------------------------------------------------

def test_nm_mask_keeps_the_n_largest_of_every_m():
    torch.manual_seed(0)
    w = torch.randn(6, 16)
    for n, m in ((2, 4), (4, 8)):
        mask = nm_mask(w, n, m)
        groups = mask.reshape(6, -1, m)
        assert (groups.sum(-1) == n).all()
        kept = (w.abs() * mask).reshape(6, -1, m)
        dropped = (w.abs() * (1 - mask)).reshape(6, -1, m)
        assert (kept.amax(-1) >= dropped.amax(-1)).all()
        assert (kept.masked_fill(kept == 0, float("inf")).amin(-1) >= dropped.amax(-1)).all()


def test_nm_applies_with_magnitude_pruning_and_quantization_and_packs_exactly():
    model = _model()
    plan = CompressionPlan(layers={"3": LayerPlan(nm="2:4", sparsity=0.25, weight_bits=4),
                                   "5": LayerPlan(nm="4:8")})
    cm = bake(apply(model, plan, X))
    w3 = cm.model.get_submodule("3").weight
    assert ((w3 != 0).reshape(32, -1, 4).sum(-1) <= 2).all()       # N:M holds under the extra magnitude mask
    assert int((w3 != 0).sum()) == w3.numel() // 2 - round(0.25 * w3.numel() // 2)  # (N/M) x (1 - sparsity)
    assert ((cm.model.get_submodule("5").weight != 0).reshape(5, -1, 8).sum(-1) == 4).all()
    size, per_layer = compressed_size(cm)
    assert per_layer["3"].nnz == int((w3 != 0).sum()) and size < dense_size_bytes(model)
    data, index = pack_state(cm.model, cm.weight_bits, {}, shared=cm.weight_sharing, entropy=cm.entropy_coding)
    assert torch.equal(unpack_state(data, index)["3.weight"], w3)


def test_nm_skips_a_layer_whose_input_is_not_a_multiple_of_m_and_the_plan_goes_on():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    plan = CompressionPlan(layers={"0": LayerPlan(nm="4:8", weight_bits=8), "2": LayerPlan(nm="2:4")})
    cm = bake(apply(model, plan, torch.randn(1, 6)))
    assert "input dimension 6 is not a multiple of 8" in cm.skipped["0"]
    assert (cm.model.get_submodule("0").weight != 0).all()          # left dense, still quantized
    assert ((cm.model.get_submodule("2").weight != 0).reshape(3, -1, 4).sum(-1) == 2).all()


def test_nm_is_a_search_space_knob_and_the_predictor_sees_its_density():
    space_cfg = SearchSpaceConfig(groups=[{"name": "fc", "types": ["Linear"], "nm": ["dense", "2:4"]}])
    model = _model()
    from autocompress.compress import discover_layers

    space = SearchSpace(space_cfg, discover_layers(model, X))
    assert space.distributions()["3:nm"] == ["dense", "2:4"]
    an = TeacherAnalysis(model, X)
    res = an.resolve(CompressionPlan(layers={"3": LayerPlan(nm="2:4", sparsity=0.5)}))
    assert res.sparsity["3"] == pytest.approx(1 - 0.5 * 0.5)  # the same masks apply() uses
