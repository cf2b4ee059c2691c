"""Search spaces bound to a model, and task loading (built-in, user, cached teachers)."""

import json

import optuna
import pytest
import torch

from autocompress.compress import discover_layers
from autocompress.config import LayerGroup, SearchSpaceConfig
from autocompress.errors import ConfigError, TaskError
from autocompress.space import SearchSpace
from autocompress.tasks import load_task
from autocompress.tasks.models import LeNet5


def _layers():
    return discover_layers(LeNet5(), torch.randn(1, 1, 28, 28))


def test_layer_discovery_order_and_output():
    layers = _layers()
    assert [i.name for i in layers] == ["features.0", "features.3", "classifier.1", "classifier.3", "classifier.5"]
    assert [i.is_output for i in layers] == [False] * 4 + [True]


def _space(per_layer):
    return SearchSpaceConfig(groups=[LayerGroup(name="conv", types=["Conv2d"], per_layer=per_layer,
                                                weight_bits=[4, 8], channel_keep=[0.5, 1.0]),
                                     LayerGroup(name="fc", types=["Linear"], names=r"classifier\.[13]",
                                                sparsity=[0.0, 0.5])],
                             student={"width": [0.5, 1.0]})


def test_per_layer_and_shared_parameters():
    per = SearchSpace(_space(True), _layers()).distributions()
    assert "features.0:weight_bits" in per and "features.3:weight_bits" in per and "student:width" in per
    shared = SearchSpace(_space(False), _layers()).distributions()
    assert "conv:weight_bits" in shared and "features.0:weight_bits" not in shared
    s = SearchSpace(_space(False), _layers())
    assert s.unassigned == ["classifier.5"]  # no group selects the output layer here


def test_suggest_gives_valid_plans():
    space = SearchSpace(_space(False), _layers())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for _ in range(10):
        trial = study.ask()
        plan = space.suggest(trial)
        study.tell(trial, 0.0)
        convs = [plan.layer("features.0"), plan.layer("features.3")]
        assert convs[0].weight_bits == convs[1].weight_bits  # shared group value
        assert plan.layer("classifier.5").is_identity
        assert plan.student.width in (0.5, 1.0)


def test_the_spaces_channel_multiple_goes_into_every_plan():
    cfg = _space(False).model_copy(update={"channel_multiple": 16})
    space = SearchSpace(cfg, _layers())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    assert {space.suggest(study.ask()).student.channel_multiple for _ in range(5)} == {16}
    assert "channel_multiple" not in json.dumps(space.distributions())  # fixed, not searched
    plain = SearchSpace(SearchSpaceConfig(groups=[LayerGroup(name="all", channel_keep=[0.5, 1.0])],
                                          student={"width": [0.5, 1.0]}, channel_multiple=16), _layers())
    teacher = plain.suggest(optuna.trial.FixedTrial(plain.uniform_params(weight_bits=32, sparsity=0.0)))
    assert teacher.student.channel_multiple == 16 and teacher.is_identity
    with pytest.raises(ValueError, match="channel_multiple"):
        SearchSpaceConfig(groups=[LayerGroup(name="all")], channel_multiple=0)


def test_output_layer_channel_keep_fixed():
    cfg = SearchSpaceConfig(groups=[LayerGroup(name="all", channel_keep=[0.5, 1.0])])
    d = SearchSpace(cfg, _layers()).distributions()
    assert "classifier.5:channel_keep" not in d and "classifier.3:channel_keep" in d


def test_space_selecting_nothing_is_a_config_error():
    cfg = SearchSpaceConfig(groups=[LayerGroup(name="x", types=["Conv1d"])])
    with pytest.raises(ConfigError, match="no group selects any layer"):
        SearchSpace(cfg, _layers(), source="s.yaml")


def test_builtin_task_splits_are_fixed_and_disjoint(digits_task):
    t = digits_task
    assert len(t.train) + len(t.val) + len(t.test) <= 1797
    again = load_task("digits-mlp")
    assert torch.equal(again.val.tensors[0], t.val.tensors[0])
    train_rows = {tuple(r.tolist()) for r in t.train.tensors[0][:200]}
    assert not any(tuple(r.tolist()) in train_rows for r in t.test.tensors[0])


def test_teacher_cache_checksum_retrains(digits_task, tmp_path, monkeypatch):
    from autocompress.tasks.builtin import cache_dir

    weights = cache_dir() / "teachers" / "digits-mlp.pt"
    assert weights.is_file()
    meta = json.loads(weights.with_suffix(".json").read_text())
    weights.write_bytes(b"corrupt")
    t = load_task("digits-mlp")  # retrained, not crashed
    assert json.loads(weights.with_suffix(".json").read_text())["sha256"] != "x"
    assert weights.read_bytes() != b"corrupt"
    from autocompress.tasks.metric import evaluate

    assert evaluate(t.model, t.val) == pytest.approx(meta["val_accuracy"], abs=0.03)  # retrained just as well


def test_user_task_forms():
    assert load_task("helpers_tasks:tiny", {"hidden": 4}).model[0].out_features == 4
    assert load_task("helpers_tasks:as_dict").name == "helpers_tasks:as_dict"


@pytest.mark.parametrize("spec,match", [
    ("no-such-task", "built-in tasks are"),
    ("no_such_module:f", "cannot import module"),
    ("helpers_tasks:missing", "no callable 'missing'"),
    ("helpers_tasks:raises", "RuntimeError: dataset missing on purpose"),
    ("helpers_tasks:wrong_type", "must return autocompress.Task"),
])
def test_bad_user_tasks(spec, match):
    with pytest.raises(TaskError, match=match):
        load_task(spec)


@pytest.mark.parametrize("name", ["nsga2", "tpe", "gp", "random"])
def test_every_sampler_drives_the_default_space_past_its_startup_trials(name):
    """Each configurable sampler proposes valid plans over the default space (categorical knobs, constraints,
    three objectives) after its random start-up trials too."""
    from types import SimpleNamespace

    from autocompress.config import SAMPLERS, load_search_space
    from autocompress.search.study import _sampler

    assert name in SAMPLERS
    loaded = SimpleNamespace(config=SimpleNamespace(seed=0, sampler=name, population_size=4, n_trials=14))
    space = SearchSpace(load_search_space("search_spaces/default.yaml"), _layers())
    study = optuna.create_study(directions=["maximize", "minimize", "minimize"], sampler=_sampler(loaded, 0))
    for _ in range(14):
        trial = study.ask()
        plan = space.suggest(trial)
        bits = [lp.weight_bits for lp in plan.layers.values()]
        keep = [lp.channel_keep for lp in plan.layers.values()]
        accuracy = 1.0 - 0.02 * sum(b < 4 for b in bits) - 0.1 * (1 - min(keep))
        trial.set_constraint("min_accuracy", 0.9 - accuracy)
        study.tell(trial, (accuracy, sum(keep), sum(bits)))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    assert study.best_trials  # a front over the three objectives
