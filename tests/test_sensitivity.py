"""Per-layer sensitivity, budgeted knapsack warm starts and the narrowed space (search.sensitivity, .warmstart)."""

import dataclasses
import json

import numpy as np
import optuna
import pytest
import yaml
from conftest import run_complete, write_study

from autocompress.cli import main
from autocompress.compress import apply
from autocompress.compress.layers import discover_layers
from autocompress.config import SearchSpaceConfig, load_study_config
from autocompress.dashboard.data import sensitivity_heatmap
from autocompress.dashboard.source import read_study
from autocompress.evaluate.size import compressed_size
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.search import sensitivity, warmstart
from autocompress.space import SearchSpace

PER_LAYER = {"version": 1, "groups": [{"name": "fc", "types": ["Linear"], "per_layer": True,
                                       "sparsity": [0.0, 0.5, 0.95], "weight_bits": [2, 4, 8, 32],
                                       "activation_bits": [8, 32], "channel_keep": [0.25, 1.0]}]}


@pytest.fixture
def per_layer_space(digits_task):
    return SearchSpace(SearchSpaceConfig.model_validate(PER_LAYER),
                       discover_layers(digits_task.model, digits_task.example_input))


@pytest.fixture
def scores(digits_task, per_layer_space, tmp_path):
    cfg = load_study_config(write_study(tmp_path)).config
    return sensitivity.measure(digits_task, per_layer_space, cfg.finetune, progress=False)


def test_probes_change_one_knob_strongest_first_and_skip_what_does_nothing(per_layer_space):
    hidden = next(s for s in per_layer_space.sections() if not s.layers[0].is_output)
    probed = [(knob, value) for knob, value, _ in sensitivity.probes(hidden)]
    assert ("weight_bits", 32) not in probed and ("sparsity", 0.0) not in probed  # the teacher's values
    bits = [v for k, v in probed if k == "weight_bits"]
    assert bits == [2, 4, 8]  # strongest (farthest from float) first
    out = next(s for s in per_layer_space.sections() if s.layers[0].is_output)
    assert "channel_keep" not in {k for k, _, _ in sensitivity.probes(out)}  # its channels are the outputs
    for _, _, lp in sensitivity.probes(hidden):
        changed = [f.name for f in dataclasses.fields(lp) if getattr(lp, f.name) != getattr(LayerPlan(), f.name)]
        assert len(changed) == 1


def test_stronger_compression_of_a_layer_moves_the_outputs_more(scores, per_layer_space):
    for s in per_layer_space.sections():
        bits = scores.scores[s.name]["weight_bits"]
        assert bits["2"] > bits["8"] >= 0.0
        assert scores.scores[s.name]["sparsity"]["0.95"] > scores.scores[s.name]["sparsity"]["0.5"]
    assert scores.score(per_layer_space.sections()[0].name, "weight_bits", 32) == 0.0
    assert scores.probes > 0 and scores.seconds > 0 and not scores.errors
    assert sensitivity.Sensitivity.from_dict(json.loads(json.dumps(scores.to_dict()))).scores == scores.scores


def test_a_plan_s_predicted_divergence_adds_its_layers_scores(scores, per_layer_space):
    a, b = (s.name for s in per_layer_space.sections()[:2])
    one = CompressionPlan(layers={a: LayerPlan(weight_bits=4)})
    two = CompressionPlan(layers={a: LayerPlan(weight_bits=4), b: LayerPlan(sparsity=0.95, weight_bits=2)})
    assert sensitivity.plan_divergence(scores, per_layer_space, CompressionPlan()) == 0.0
    assert sensitivity.plan_divergence(scores, per_layer_space, one) == scores.scores[a]["weight_bits"]["4"]
    assert sensitivity.plan_divergence(scores, per_layer_space, two) == pytest.approx(
        scores.scores[a]["weight_bits"]["4"] + scores.scores[b]["sparsity"]["0.95"] + scores.scores[b]["weight_bits"]["2"])


def test_option_bits_are_the_size_module_s_exact_bits(digits_task, per_layer_space):
    """The knapsack's storage formula equals the bits the size module reads from a materialized candidate."""
    stats = warmstart.layer_stats(digits_task, per_layer_space)
    name = per_layer_space.sections()[0].name
    for values in ({"weight_bits": 4, "sparsity": 0.5}, {"weight_bits": 8}, {"weight_bits": 2, "sparsity": 0.95}):
        lp = LayerPlan(**values)
        bits, _, _ = warmstart.layer_cost(dataclasses.asdict(lp), stats[name], frozenset({"float", "int8"}))
        _, per_layer = compressed_size(apply(digits_task.model, CompressionPlan(layers={name: lp}),
                                             digits_task.example_input))
        assert bits == pytest.approx(per_layer[name].size_bits, rel=0.01), values


def test_knapsack_is_solved_exactly_and_refuses_what_no_choice_fits():
    opt = warmstart.Option
    options = [[opt({"a": 0}, 0.0, 10, 0, 0), opt({"a": 1}, 1.0, 4, 0, 0), opt({"a": 2}, 5.0, 1, 0, 0)],
               [opt({"b": 0}, 0.0, 10, 0, 0), opt({"b": 1}, 2.0, 2, 0, 0)]]
    weights = [np.array([o.bits for o in opts]) for opts in options]
    assert warmstart.solve(options, [weights], [20]) == [0, 0]
    assert warmstart.solve(options, [weights], [14]) == [1, 0]  # 1.0 beats the second section's 2.0
    assert warmstart.solve(options, [weights], [6]) == [1, 1]
    assert warmstart.solve(options, [weights], [2]) is None
    # a second bound (here: at most one unit of a cost only option 2 of the first section is free of)
    cost = [np.array([1.0, 1.0, 0.0]), np.array([0.0, 0.0])]
    assert warmstart.solve(options, [weights, cost], [20, 0.0]) == [2, 0]


def test_budgeted_warm_starts_meet_their_budgets_and_narrow_what_is_far_beyond(digits_task, per_layer_space,
                                                                               scores, tmp_path):
    cfg = load_study_config(write_study(tmp_path)).config
    starts, cost = warmstart.plan_warm_starts(digits_task, per_layer_space, cfg, scores)
    # the cost model is fitted on the teacher, uniform int8 and uniform channel pruning, each measured (this tiny
    # MLP's latency is mostly per-call overhead: its per-MAC costs may fit to 0)
    assert starts and [p["plan"] for p in cost.points] == ["teacher", "uniform int8", "uniform channel pruning"]
    assert all(p["ms"] > 0 for p in cost.points) and cost.ms(0.0, 0.0) > 0
    for w in starts:
        for bound in w.label.removeprefix("knapsack ").split(", "):
            target, kind = bound.split("x ")
            assert (w.predicted["speedup"] if kind == "faster" else w.predicted["shrink"]) >= float(target) * 0.999
        plan = per_layer_space.suggest(optuna.trial.FixedTrial(w.params))  # valid parameters of the space
        assert not plan.is_identity
    threshold = max(w.predicted["divergence"] for w in starts)
    allowed = warmstart.restrictions(per_layer_space, scores, threshold)
    for name, choices in allowed.items():
        section, _, knob = name.rpartition(":")
        dropped = set(per_layer_space.distributions()[name]) - set(choices)
        assert dropped and all(scores.score(section, knob, v) > threshold for v in dropped)
        assert all(scores.score(section, knob, v) <= threshold for v in choices)
    kinds = {bound.split("x ")[1] for w in starts for bound in w.label.removeprefix("knapsack ").split(", ")}
    knobs = (warmstart.SIZE_KNOBS if "smaller" in kinds else frozenset()) | \
        (warmstart.LATENCY_KNOBS if "faster" in kinds else frozenset())
    assert warmstart.narrowed(per_layer_space, scores, starts) == warmstart.restrictions(
        per_layer_space, scores, threshold, knobs=knobs)
    # plans solved for size budgets alone are no evidence about what a faster plan needs: keep, rank and input
    # bits stay as written
    size_only = [w for w in starts if "faster" not in w.label]
    if size_only:
        assert {n.rpartition(":")[2] for n in warmstart.narrowed(per_layer_space, scores, size_only)} <= \
            warmstart.SIZE_KNOBS
    before = per_layer_space.distributions()
    per_layer_space.restrict(allowed)
    # a parameter left one choice is fixed: no longer sampled
    assert per_layer_space.distributions() == {n: allowed.get(n, c) for n, c in before.items()
                                               if len(allowed.get(n, c)) > 1}
    with pytest.raises(ValueError, match="cannot restrict"):
        per_layer_space.restrict({"nope:weight_bits": [8]})


def test_a_study_scores_its_layers_once_queues_budgeted_plans_and_samples_only_what_it_left(tmp_path, digits_task):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(PER_LAYER))
    path = write_study(tmp_path, n_trials=12, search_space=str(space), sampler="random",
                       fidelity={"promotion": False, "self_check": 0})
    loaded, study, done = run_complete(path, 12, task=digits_task)
    attrs = study.user_attrs
    assert attrs[sensitivity.ATTR]["probes"] > 0
    labels = [t.user_attrs.get("warm_start") for t in study.trials]
    assert labels[0] == "uniform w8 s0 a8"
    knapsack = [lbl for lbl in labels if lbl and lbl.startswith("knapsack")]
    assert knapsack and labels.index(knapsack[0]) == 1  # right after uniform int8
    allowed = attrs[warmstart.RESTRICT_ATTR]
    for t in study.trials:
        for name, choices in allowed.items():
            if name in t.params:
                assert t.params[name] in choices, (t.number, name)
    # the dashboard draws the scores: one row per layer in model order, one column per knob value
    heat = sensitivity_heatmap(read_study(study).sensitivity, attrs["layers"])
    assert heat["sections"] == [i["name"] for i in attrs["layers"]]
    assert "weight_bits=2" in heat["choices"] and len(heat["z"][0]) == len(heat["choices"])
    col = heat["choices"].index("weight_bits=2")
    assert all(row[col] > 0 for row in heat["z"])
    # a worker joining later (or a resumed run) samples from the same narrowed space and scores nothing again
    seconds = attrs[sensitivity.ATTR]["seconds"]
    loaded, study, _ = run_complete(write_study(tmp_path, n_trials=14, search_space=str(space), sampler="random",
                                                fidelity={"promotion": False, "self_check": 0}), 14, task=digits_task)
    assert study.user_attrs[sensitivity.ATTR]["seconds"] == seconds


def test_sensitivity_off_is_the_space_as_written_with_uniform_warm_starts(tmp_path, digits_task):
    _, study, _ = run_complete(write_study(tmp_path, n_trials=2, sensitivity=False), 2, task=digits_task)
    assert sensitivity.ATTR not in study.user_attrs and warmstart.RESTRICT_ATTR not in study.user_attrs
    labels = [t.user_attrs["warm_start"] for t in study.trials]
    assert labels[0] == "uniform w8 s0 a8" and labels[1] == "student w0.75 d1"  # the smallest of this space
    assert all(lbl.startswith("uniform") for lbl in labels[2:])


def test_sensitivity_command_prints_the_table_and_writes_it_whole(tmp_path, capsys):
    path = write_study(tmp_path)
    out = tmp_path / "sens.json"
    assert main(["sensitivity", str(path), "--top", "0"]) == 2
    assert "--top" in capsys.readouterr().err and not out.exists()
    assert main(["sensitivity", str(path), "-o", str(out), "--top", "3"]) == 0
    text = capsys.readouterr().out
    assert "divergence from the teacher" in text and "weight_bits=4" in text
    record = json.loads(out.read_text())
    assert record[sensitivity.ATTR]["scores"] and not (tmp_path / "s" / "study.db").exists()  # no study made
    assert not list(tmp_path.glob("*.tmp"))
    assert main(["sensitivity", str(path), "--format", "json", "-o", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)[sensitivity.ATTR]["scores"] == record[sensitivity.ATTR]["scores"]


def test_a_failing_sensitivity_pass_is_reported_and_the_study_goes_on(tmp_path, digits_task, monkeypatch, caplog):
    def broken(*a, **k):
        raise RuntimeError("solver exploded")

    monkeypatch.setattr(warmstart, "plan_warm_starts", broken)
    _, study, _ = run_complete(write_study(tmp_path, n_trials=2), 2, task=digits_task)
    assert study.user_attrs[sensitivity.ATTR] == {"error": "RuntimeError: solver exploded"}
    assert warmstart.RESTRICT_ATTR not in study.user_attrs
    labels = [t.user_attrs["warm_start"] for t in study.trials]  # finished and still queued
    assert labels[0] == "uniform w8 s0 a8" and labels[1].startswith("student") and len(labels) > 3
    assert all(lbl.startswith("uniform") for lbl in labels[2:])
    assert "sensitivity pass failed" in caplog.text


def _deep_space(task):
    return SearchSpace(SearchSpaceConfig.model_validate(PER_LAYER), discover_layers(task.model, task.example_input))


def test_layers_that_scored_alike_are_tied_and_sample_one_value_together():
    from helpers_tasks import deep

    task = deep(20)
    space = _deep_space(task)
    names = [a.layer.name for a in space.assignments if not a.layer.is_output]
    robust, fragile = set(names[::2]), set(names[1::2])  # interleaved, so layer order cannot explain the ties
    sens = sensitivity.Sensitivity()
    for name in names:
        d = 1e-3 if name in robust else 1.0
        sens.scores[name] = {"weight_bits": {"2": 10 * d, "4": d, "8": d / 10}, "sparsity": {"0.95": 5 * d}}
    tied = warmstart.ties(space, sens, {n: 64.0 for n in names})
    # at most tie_count(20) = 7 sections; layers that scored the same are one section, the output layer its own
    assert warmstart.tie_count(len(names)) == 7
    assert {frozenset(ms) for ms in tied.values()} == {frozenset(robust), frozenset(fragile)}
    spread = {n: {k: {v: d * (1 + i / 10) for v, d in vals.items()} for k, vals in sens.scores[n].items()}
              for i, n in enumerate(names)}
    several = warmstart.ties(space, sensitivity.Sensitivity(scores=spread), {n: 64.0 for n in names})
    assert 2 < len(several) <= 7 and all(set(ms) <= robust or set(ms) <= fragile for ms in several.values())
    before = len(space.distributions())
    space.tie(tied)
    assert len(space.distributions()) < before
    name, ms = next(iter(tied.items()))
    assert f"{name}:weight_bits" in space.distributions() and f"{ms[0]}:weight_bits" not in space.distributions()
    params = {n: c[0] for n, c in space.distributions().items()} | {f"{name}:weight_bits": 4}
    plan = space.suggest(optuna.trial.FixedTrial(params))
    assert {plan.layers[m].weight_bits for m in ms} == {4}
    # the tied section's scores are its layers' sums; a value failed on one layer failed for the section
    sens.errors[ms[0]] = {"sparsity": {"0.95": "ValueError: no"}}
    merged = sens.merged(tied)
    assert merged.score(name, "weight_bits", 2) == pytest.approx(sum(sens.score(m, "weight_bits", 2) for m in ms))
    assert merged.score(name, "sparsity", 0.95) is None and "0.95" in merged.errors[name]["sparsity"]
    assert all(m not in merged.scores for m in ms)
    for bad in ({"x": [ms[0], ms[0]]}, {"y": [names[0], space.assignments[-1].layer.name]}, {"z": ["nope"]},
                {names[0]: [names[1], names[2]]}):
        with pytest.raises(ValueError, match="cannot tie"):
            space.tie(bad)


def test_a_shallow_group_is_not_tied(per_layer_space, scores):
    assert warmstart.ties(per_layer_space, scores, {}) == {}


def test_a_deep_study_ties_its_layers_queues_plans_of_the_tied_space_and_every_trial_follows_the_ties(tmp_path):
    space = tmp_path / "space.yaml"
    space.write_text(yaml.safe_dump(PER_LAYER))
    path = write_study(tmp_path, n_trials=6, task="helpers_tasks:deep", search_space=str(space), sampler="random",
                       fidelity={"promotion": False, "self_check": 0})
    _, study, _ = run_complete(path, 6)
    tied = study.user_attrs[warmstart.TIE_ATTR]
    assert tied
    for t in study.trials:
        plan = CompressionPlan.from_dict(t.user_attrs["plan"])
        for members in tied.values():
            assert len({plan.layers.get(m, LayerPlan()) for m in members}) == 1, (t.number, members)
        assert not any(p.rpartition(":")[0] in {m for ms in tied.values() for m in ms} for p in t.params)
    untied = write_study(tmp_path, file="u", n_trials=1, task="helpers_tasks:deep", search_space=str(space),
                         sampler="random", tie_layers=False, fidelity={"promotion": False, "self_check": 0})
    _, study, _ = run_complete(untied, 1)
    assert study.user_attrs[warmstart.TIE_ATTR] == {}
