import json

import pytest

from autocompress.plan import CompressionPlan, DistillPlan, LayerPlan, StudentPlan


def _plan():
    return CompressionPlan(
        layers={"features.0": LayerPlan(sparsity=0.5, weight_bits=4, activation_bits=8, channel_keep=0.75,
                                        rank_ratio=0.5),
                "fc": LayerPlan(weight_bits=2)},
        student=StudentPlan(width=0.5, depth=0.5),
        distill=DistillPlan(temperature=2.0, alpha=0.9, feature_mse=0.1, l1=1e-5))


def test_json_round_trip_is_exact():
    plan = _plan()
    text = plan.to_json()
    assert json.loads(text)["type"] == "CompressionPlan" and json.loads(text)["version"] == 1
    assert CompressionPlan.from_json(text) == plan
    assert CompressionPlan.from_json(CompressionPlan().to_json()) == CompressionPlan()
    aligned = CompressionPlan(layers=plan.layers, student=StudentPlan(width=0.5, channel_multiple=16))
    assert CompressionPlan.from_json(aligned.to_json()) == aligned


def test_plans_written_before_the_channel_multiple_read_with_exact_counts():
    d = _plan().to_dict()
    del d["data"]["student"]["channel_multiple"]
    assert CompressionPlan.from_dict(d).student.channel_multiple == 1


@pytest.mark.parametrize("bad", [0, -16, 1.5, True])
def test_channel_multiple_must_be_a_positive_integer(bad):
    with pytest.raises(ValueError, match="channel_multiple"):
        StudentPlan(channel_multiple=bad)


def test_a_channel_multiple_alone_compresses_nothing():
    plan = CompressionPlan(student=StudentPlan(channel_multiple=16))
    assert plan.is_identity and plan.summary() == "(uncompressed)"
    assert "multiples of 16" in CompressionPlan(layers={"fc": LayerPlan(channel_keep=0.5)},
                                                student=StudentPlan(channel_multiple=16)).summary()


def test_unknown_layer_defaults_to_identity():
    assert _plan().layer("nope").is_identity
    assert not _plan().layer("fc").is_identity


@pytest.mark.parametrize("mutate,match", [
    (lambda d: d.update(version=99), "version 99"),
    (lambda d: d.update(type="Pickle"), "not a CompressionPlan"),
    (lambda d: d["data"]["layers"]["fc"].update(bogus=1), "malformed"),
])
def test_bad_plan_json(mutate, match):
    d = _plan().to_dict()
    mutate(d)
    with pytest.raises(ValueError, match=match):
        CompressionPlan.from_dict(d)


def test_summary_mentions_decisions():
    s = _plan().summary()
    assert "student w0.5 d0.5" in s and "features.0:keep0.75/rank0.5/s0.5/w4/a8" in s and "fc:w2" in s
    assert CompressionPlan().summary() == "(uncompressed)"
