"""The short level's learning rate: the range test, what a study stores, and who trains with it."""

import optuna
import pytest
from conftest import ROOT, write_study

from autocompress.config import FinetuneConfig, load_search_space, load_study_config
from autocompress.front import SHORT_LR_ATTR, study_finetune
from autocompress.search import learning_rate
from autocompress.search.driver import run_study


def _space(task):
    from autocompress.compress.layers import discover_layers
    from autocompress.space import SearchSpace

    return SearchSpace(load_search_space(ROOT / "search_spaces" / "small.yaml"),
                       discover_layers(task.model, task.example_input))


def test_the_range_test_picks_the_rate_whose_short_level_scores_best(digits_task):
    cfg = FinetuneConfig(steps=15, batch_size=32)
    # 1000 x lr (Adam at 1.0) wrecks every candidate: it can never be chosen
    out = learning_rate.choose(digits_task, _space(digits_task), cfg, factors=(1.0, 1000.0), progress=False)
    scores = {float(r): s for r, s in out["scores"].items()}
    assert sorted(scores) == pytest.approx([1e-3, 1.0])
    assert out["chosen"] == pytest.approx(1e-3) and scores[1.0] < scores[1e-3]
    # tried from the lowest up; the first rate scoring below a lower one ends the test (1000 x lr is never reached
    # unless every rate below it improved, and then it scores below them)
    out = learning_rate.choose(digits_task, _space(digits_task), cfg, factors=(1.0, 1000.0, 10.0, 100.0),
                               progress=False)
    rates = [1e-3, 1e-2, 1e-1, 1.0]
    scores = {float(r): s for r, s in out["scores"].items()}
    tried = sorted(scores)
    assert tried == pytest.approx(rates[:len(tried)]) and len(tried) >= 2
    assert all(scores[a] <= scores[b] for a, b in zip(tried[:-2], tried[1:-1], strict=True))  # each was the best
    assert out["chosen"] == max(scores, key=scores.get) and out["chosen"] != pytest.approx(1.0)
    if len(tried) < len(rates):
        assert scores[tried[-1]] < scores[out["chosen"]]
    assert out["steps"] == 15 and len(out["plans"]) == learning_rate.PLANS and out["seconds"] > 0
    assert not any(p.startswith("student") for p in out["plans"])  # per-layer choices only: nothing distilled


def test_a_tie_goes_to_the_lower_rate(digits_task, monkeypatch):
    from autocompress.evaluate import candidate

    monkeypatch.setattr(candidate.Candidate, "accuracy", lambda self, split="val": 0.5)
    out = learning_rate.choose(digits_task, _space(digits_task), FinetuneConfig(steps=2), progress=False)
    assert out["chosen"] == pytest.approx(1e-3)


def test_a_study_chooses_once_and_its_trials_and_export_train_with_the_choice(tmp_path, digits_task, monkeypatch,
                                                                              capsys):
    from autocompress.cli import main
    from autocompress.export.artifact import export_from_study
    from autocompress.search.study import prepare_study

    loaded = load_study_config(write_study(tmp_path, n_trials=2, warm_start=False, sensitivity=False,
                                           fidelity={"promotion": False, "self_check": 0}))
    assert loaded.config.finetune.short_lr == "auto"  # the default
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    record = study.user_attrs[SHORT_LR_ATTR]
    assert record["chosen"] in [1e-3 * f for f in learning_rate.FACTORS]
    resolved = study_finetune(loaded.config.finetune, study.user_attrs)
    assert resolved.short_lr == record["chosen"]
    assert main(["front", str(loaded.config_path)]) == 0
    assert f"short level: learning rate {record['chosen']:g}, chosen by a range test" in capsys.readouterr().out

    def boom(*a, **k):
        raise AssertionError("chosen again")

    monkeypatch.setattr(learning_rate, "choose", boom)
    prepared = prepare_study(loaded, task=digits_task)  # resumed: read, not chosen again
    assert prepared.objective.loaded.config.finetune.short_lr == record["chosen"]
    art = export_from_study(str(loaded.config_path), tmp_path / "art", trial=0, finetune="none", formats=["onnx"],
                            task=digits_task)
    assert art.card["finetune"]["short_lr"] == record["chosen"]


@pytest.mark.parametrize("overrides", [
    {"finetune": {"steps": 10, "short_lr": 0.005}},                      # a number: used as it is
    {"fidelity": {"proxy": "zero-shot", "promotion": False, "self_check": 0}},  # no short level to rank with
])
def test_no_range_test_where_there_is_nothing_to_choose(tmp_path, digits_task, monkeypatch, overrides):
    monkeypatch.setattr(learning_rate, "choose", lambda *a, **k: pytest.fail("a range test ran"))
    loaded = load_study_config(write_study(tmp_path, n_trials=1, warm_start=False, sensitivity=False, **overrides))
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert SHORT_LR_ATTR not in study.user_attrs


def test_a_failing_range_test_is_reported_and_the_short_level_trains_at_lr(tmp_path, digits_task, monkeypatch,
                                                                           caplog):
    def fail(*a, **k):
        raise RuntimeError("out of memory")

    monkeypatch.setattr(learning_rate, "choose", fail)
    loaded = load_study_config(write_study(tmp_path, n_trials=1, warm_start=False, sensitivity=False))
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert "out of memory" in study.user_attrs[SHORT_LR_ATTR]["error"]
    assert "learning rate failed" in caplog.text
    assert study_finetune(loaded.config.finetune, study.user_attrs).short_lr == loaded.config.finetune.lr
    assert study.get_trials(states=[optuna.trial.TrialState.COMPLETE])


def test_short_lr_is_validated(tmp_path):
    from autocompress.errors import ConfigError

    for bad in ("fast", 0, -1e-3):
        with pytest.raises(ConfigError, match="short_lr"):
            load_study_config(write_study(tmp_path, finetune={"short_lr": bad}))
