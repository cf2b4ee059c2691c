"""Fidelity ladder: promotion by non-dominated sorting, cumulative fine-tuning, self-check, studies with halving."""

import numpy as np
import optuna
import pytest
from conftest import write_study

from autocompress.config import FidelityConfig, load_study_config
from autocompress.search.driver import run_study
from autocompress.search.fidelity import (
    crowding_distance,
    promote,
    promotion_order,
    rank_agreement,
    rungs,
    self_check_numbers,
)


def test_rungs():
    assert rungs(FidelityConfig(proxy="short")) == ["zero-shot", "short"]
    assert rungs(FidelityConfig(proxy="full")) == ["zero-shot", "short", "full"]
    assert rungs(FidelityConfig(proxy="short", promotion=False)) == ["short"]
    assert rungs(FidelityConfig(proxy="zero-shot")) == ["zero-shot"]


def test_promotion_order_rank_then_crowding():
    # minimisation; rows 0-2 are non-dominated, row 3 dominated by row 1
    pts = np.array([[0.0, 3.0], [1.0, 1.0], [3.0, 0.0], [2.0, 2.0]])
    order = promotion_order(pts)
    assert set(order[:3]) == {0, 1, 2} and order[3] == 3
    assert crowding_distance(pts)[0] == np.inf and crowding_distance(pts)[2] == np.inf
    assert order[2] == 1  # the interior member of the first front has the smallest crowding distance


def test_promote_keeps_best_fraction():
    pts = np.array([[float(i), float(i)] for i in range(9)])  # a chain: 0 dominates everything
    promoted = [i for i in range(9) if promote(pts, i, eta=3)]
    assert promoted == [0, 1, 2]
    assert promote(pts[:2], 1, eta=3)  # fewer than eta scored: everyone goes on


def test_self_check_sample_is_seeded():
    a = self_check_numbers(0, 50, 8)
    assert a == self_check_numbers(0, 50, 8) and len(a) == 8 and max(a) < 50
    assert self_check_numbers(0, 50, 0) == set()


def test_rank_agreement():
    r = rank_agreement([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8])
    assert r["kendall_tau"] == pytest.approx(1.0) and r["spearman_rho"] == pytest.approx(1.0)
    r = rank_agreement([0.4, 0.3, 0.2, 0.1], [0.5, 0.6, 0.7, 0.8])
    assert r["kendall_tau"] == pytest.approx(-1.0)
    assert rank_agreement([0.1, 0.2], [0.1, 0.2])["kendall_tau"] is None


def test_candidate_training_is_cumulative(digits_task):
    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, LayerPlan

    plan = CompressionPlan(layers={"1": LayerPlan(weight_bits=2, sparsity=0.8)})
    cand = Candidate(digits_task, plan, FinetuneConfig(steps=20))
    zero = cand.accuracy()
    cand.train_to(20)
    assert cand.steps_done == 20
    cand.train_to(10)  # never trains backwards
    assert cand.steps_done == 20
    assert cand.accuracy() != zero
    # the baked copy carries the trained weights: same predictions as the training copy
    import torch

    x = digits_task.val.tensors[0]
    assert torch.equal(cand.baked().model(x).argmax(1), cand.cm.model(x).argmax(1))


def test_the_short_level_trains_at_short_lr_and_a_promoted_candidate_matches_one_trained_at_once(digits_task):
    """A candidate's first ``steps`` mini-batches train at ``short_lr``, the rest at ``lr``: climbing the ladder
    (short, then full) and training to full at once (as export does) give the same weights, bit for bit."""
    import torch

    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, LayerPlan

    plan = CompressionPlan(layers={"1": LayerPlan(weight_bits=3, sparsity=0.5)})

    def weights(cfg, *levels):
        cand = Candidate(digits_task, plan, cfg, seed=3)
        for steps in levels:
            cand.train_to(steps)
        return [t.clone() for t in cand.cm.model.state_dict().values()]

    cfg = FinetuneConfig(steps=6, full_steps=15, batch_size=16, short_lr=1e-2)
    climbed, at_once = weights(cfg, 6, 15), weights(cfg, 15)
    assert all(torch.equal(a, b) for a, b in zip(climbed, at_once, strict=True))
    # short_lr is what the short level trains at: another value gives other weights there, and unset means lr
    short_hi, short_lo = weights(cfg, 6), weights(cfg.model_copy(update={"short_lr": 1e-4}), 6)
    assert not all(torch.equal(a, b) for a, b in zip(short_hi, short_lo, strict=True))
    unset = weights(cfg.model_copy(update={"short_lr": None}), 6)
    same_as_lr = weights(cfg.model_copy(update={"short_lr": cfg.lr}), 6)
    assert all(torch.equal(a, b) for a, b in zip(unset, same_as_lr, strict=True))


def test_study_with_halving_and_self_check(tmp_path, digits_task):
    path = write_study(tmp_path, n_trials=10, warm_start=False, finetune={"steps": 10, "full_steps": 20},
                       fidelity={"proxy": "short", "eta": 2, "self_check": 3})
    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    states = [t.state for t in study.trials]
    assert len(states) == 10
    pruned = [t for t in study.trials if t.state == optuna.trial.TrialState.PRUNED]
    complete = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert pruned, "successive halving stopped nothing"
    for t in pruned:
        assert t.user_attrs["fidelity"] == "zero-shot" and "stopped at zero-shot" in t.user_attrs["stopped"]
        assert "rung:short" not in t.user_attrs
    for t in complete:
        assert t.user_attrs["fidelity"] == "short"
        assert t.user_attrs["accuracy"] == t.user_attrs["rung:short"][0] == t.values[0]
    checked = [t for t in complete if t.user_attrs.get("self_check")]
    assert len(checked) == 3  # self-check candidates are never stopped early
    summary = study.user_attrs["fidelity_summary"]
    assert summary["stopped"] == len(pruned) and summary["completed"] == len(complete)
    assert summary["self_check"]["n"] == 3 and summary["self_check"]["trials"] == sorted(t.number for t in checked)
    plain = [t for t in complete if not t.user_attrs.get("self_check")]
    if plain:
        assert summary["cost_s_saved_estimate"] >= 0
    else:
        assert summary["cost_s_saved_estimate"] is None  # nothing to compare a stopped trial's cost with


def test_self_checked_trial_reports_validation_and_test_at_the_same_level(tmp_path, digits_task):
    """A self-checked trial's accuracy and test_accuracy are both the proxy level's; the full-fidelity pair is beside
    them (full_accuracy, full_test_accuracy)."""
    from autocompress.evaluate.candidate import Candidate
    from autocompress.front import study_finetune
    from autocompress.plan import CompressionPlan
    from autocompress.search.fidelity import steps_for

    loaded = load_study_config(write_study(tmp_path, n_trials=2, warm_start=False,
                                           fidelity={"promotion": False, "self_check": 2},
                                           finetune={"steps": 20, "full_steps": 60}))
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    checked = [t for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]) if t.user_attrs.get("self_check")]
    assert checked
    cfg = loaded.config
    finetune = study_finetune(cfg.finetune, study.user_attrs)  # the short level's rate the study chose
    for t in checked:
        cand = Candidate(digits_task, CompressionPlan.from_dict(t.user_attrs["plan"]), finetune,
                         seed=cfg.seed + t.number)
        cand.train_to(steps_for(cfg.fidelity.proxy, cfg.finetune))
        assert t.user_attrs["accuracy"] == pytest.approx(cand.accuracy("val"))
        assert t.user_attrs["test_accuracy"] == pytest.approx(cand.accuracy("test"))
        cand.train_to(steps_for("full", finetune))
        assert t.user_attrs["full_test_accuracy"] == pytest.approx(cand.accuracy("test"))


def test_a_student_size_is_distilled_once_and_its_candidates_start_from_it(digits_task):
    import torch

    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan

    cfg = FinetuneConfig(steps=30, student_steps=60)
    half = StudentPlan(width=0.5, channel_multiple=7)  # a size no other test distils
    plain = Candidate(digits_task, CompressionPlan(student=half), cfg)
    assert plain.student is not None and plain.seconds["student"] > 0  # distilled here
    # the student alone: exactly the distilled student, already far better than the teacher cut without training
    x = digits_task.val.tensors[0]
    assert torch.equal(plain.cm.model(x), plain.student.model(x))
    cold = Candidate(digits_task, CompressionPlan(student=half), FinetuneConfig(steps=30, student_steps=0))
    assert cold.student is None and plain.accuracy() > cold.accuracy() + 0.1
    # another plan of that size reuses it (no second distillation), prunes further and trains on top
    more = CompressionPlan(student=half, layers={"1": LayerPlan(channel_keep=0.5, weight_bits=4)})
    cand = Candidate(digits_task, more, cfg)
    assert cand.student is plain.student and "student" not in cand.seconds
    assert cand.cm.model[1].out_features < plain.cm.model[1].out_features
    cand.train_to(30)
    assert torch.equal(cand.baked().model(x).argmax(1), cand.cm.model(x).argmax(1))
    # where only the structure matters, no student is made
    assert Candidate(digits_task, CompressionPlan(student=StudentPlan(width=0.75)), cfg, warm_student=False).student \
        is None


def test_a_student_size_that_changes_nothing_is_not_distilled(digits_task):
    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, StudentPlan

    # depth alone on an MLP without removable blocks: the same structure as the teacher
    cand = Candidate(digits_task, CompressionPlan(student=StudentPlan(depth=0.5)), FinetuneConfig(steps=20))
    assert cand.student is None and "(student depth)" in cand.cm.skipped
