"""Models users bring: integer inputs, checked teachers (the rest of the bring-your-own-model work builds here)."""

import optuna
import pytest
import torch
from conftest import run_complete, write_study

from autocompress.export.artifact import export_from_study
from autocompress.export.loader import load
from autocompress.tasks import load_task

SPACE = {"version": 1, "groups": [{"name": "fc", "types": ["Linear"], "per_layer": False,
                                   "weight_bits": [4, 8], "activation_bits": [8, 32]}]}


def test_integer_inputs_keep_their_dtype_through_search_lowering_and_export(tmp_path):
    """A model taking token ids (int64, through nn.Embedding): measured on ONNX Runtime with int8 and int4
    kernels, exported, and the ONNX artifact fed integer ids."""
    task = load_task("helpers_tasks:token_ids")
    path = write_study(tmp_path, task="helpers_tasks:token_ids", search_space=SPACE, n_trials=4, sampler="random",
                       fidelity={"promotion": False, "self_check": 0})
    loaded, study, done = run_complete(path, 4, task=task)
    assert any(t.user_attrs["kernels"]["int8"] for t in done) and any(t.user_attrs["kernels"]["int4"] for t in done)
    trial = next(t for t in done if t.user_attrs["kernels"]["int8"])
    res = export_from_study(str(path), tmp_path / "out", trial=trial.number, task=task, finetune="none",
                            measure=False)
    assert res.card["input"]["dtype"] == "int64"
    onnx_model = load(tmp_path / "out", runtime="onnx")
    ids = torch.stack([task.val[i][0] for i in range(8)])
    with torch.no_grad():
        out = onnx_model(ids)
        ref = load(tmp_path / "out")(ids)
    assert out.shape == (8, 2) and (out.argmax(1) == ref.argmax(1)).float().mean() >= 0.75


def _foreign_bn_task():
    """A CNN whose BatchNorm statistics come from other data than its calibration set (as a pretrained teacher's
    do): re-estimating them on a few batches changes its outputs."""
    from torch.utils.data import TensorDataset

    from autocompress import Task
    from autocompress.tasks.models import SmallResNet

    torch.manual_seed(0)
    model = SmallResNet(width=8, blocks=(1, 1, 1)).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    x = torch.randn(192, 1, 28, 28)
    with torch.no_grad():
        y = model(x).argmax(1)  # labels = the teacher's own predictions: agreement with the teacher
    return Task(name="foreign-bn", model=model, example_input=x[:1], train=TensorDataset(x[:128], y[:128]),
                val=TensorDataset(x[128:], y[128:]))


def test_batchnorm_statistics_are_reestimated_only_where_the_plan_moved_them():
    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, LayerPlan

    task = _foreign_bn_task()
    cfg = FinetuneConfig(calibration_batches=4)
    identity = Candidate(task, CompressionPlan(), cfg)
    assert identity.recalibrated == [] and identity.accuracy() == 1.0  # exactly the teacher
    with torch.no_grad():
        assert torch.equal(identity.cm.model(task.example_input), task.model(task.example_input))
    w8 = Candidate(task, CompressionPlan(layers={n: LayerPlan(weight_bits=8) for n in ("stem.0", "layer1.0.conv1")}),
                   cfg)
    assert w8.recalibrated == [] and w8.accuracy() >= 0.95  # 8-bit weights barely move the inputs
    pruned = Candidate(task, CompressionPlan(layers={"layer1.0.conv1": LayerPlan(channel_keep=0.5)}), cfg)
    assert "layer1.0.bn1" in pruned.recalibrated and "stem.1" not in pruned.recalibrated
    few = Candidate(task, CompressionPlan(layers={"layer1.0.conv1": LayerPlan(channel_keep=0.5)}),
                    FinetuneConfig(calibration_batches=1))  # 32 samples: too few to re-estimate anything
    assert few.recalibrated == []


# --- random plans over real architectures: a layer a method cannot handle is skipped, never a failed trial ------

SWEEP_SPACE = {"version": 1, "groups": [{
    "name": "all", "types": ["Conv2d", "Linear"], "per_layer": True, "sparsity": [0.0, 0.5, 0.9],
    "weight_bits": [2, 4, 8, 32], "activation_bits": [8, 32], "channel_keep": [0.5, 1.0], "rank_ratio": [0.25, 1.0],
    "nm": ["dense", "2:4"], "entropy_coding": [False, True]}],
    "student": {"width": [0.5, 1.0], "depth": [0.5, 1.0]}}


def _zoo():
    from helpers_tasks import TokenClassifier

    from autocompress.tasks.models import EfficientNetB0, GroupedConvNet, MobileNetV2, ResNet18, ViT

    torch.manual_seed(0)
    return {
        "mobilenet_v2": (MobileNetV2(num_classes=10, width=0.35).eval(), torch.randn(1, 3, 32, 32)),
        "resnet18": (ResNet18(num_classes=10, width=16).eval(), torch.randn(1, 3, 32, 32)),
        "efficientnet_b0": (EfficientNetB0(num_classes=10, width=0.5).eval(), torch.randn(1, 3, 32, 32)),
        "vit": (ViT().eval(), torch.randn(1, 3, 32, 32)),
        "grouped_conv": (GroupedConvNet().eval(), torch.randn(1, 3, 16, 16)),
        "token_ids": (TokenClassifier().eval(), torch.randint(0, 50, (1, 12))),
    }


def _sweep(name: str, n_plans: int, n_lowered: int) -> None:
    import math

    from autocompress.compress import apply, bake, calibrate, discover_layers
    from autocompress.config import SearchSpaceConfig
    from autocompress.evaluate.size import compressed_size
    from autocompress.runtime import get_backend
    from autocompress.space import SearchSpace

    model, x = _zoo()[name]
    space = SearchSpace(SearchSpaceConfig(**SWEEP_SPACE), discover_layers(model, x))
    study = optuna.create_study(directions=["minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    calib = [torch.cat([x] * 8) if x.is_floating_point() else torch.randint(0, 50, (8, 12))]
    failures = []
    for i in range(n_plans):
        trial = study.ask()
        plan = space.suggest(trial)
        try:
            cm = apply(model, plan, x)
            calibrate(cm, calib)
            bake(cm)
            with torch.no_grad():
                out = cm.model(x)
            assert out.shape == model(x).shape and torch.isfinite(out).all()
            size = compressed_size(cm)[0]
            if i < n_lowered:
                import tempfile
                from pathlib import Path

                with tempfile.TemporaryDirectory() as tmp:
                    lowered = get_backend("onnxruntime").lower(cm, x, calib, Path(tmp))
                    get_backend("onnxruntime").session(lowered.artifact).run({"input": x.numpy()})
        except Exception as e:
            failures.append(f"{plan.summary()[:120]}: {type(e).__name__}: {e}")
            size = math.nan
        study.tell(trial, size if math.isfinite(size) else 0.0)
    assert not failures, failures[:3]


ZOO = ["mobilenet_v2", "resnet18", "efficientnet_b0", "vit", "grouped_conv", "token_ids"]


@pytest.mark.parametrize("name", ZOO)
def test_random_plans_never_fail_on_zoo_architectures(name):
    _sweep(name, n_plans=12, n_lowered=2)


@pytest.mark.slow
@pytest.mark.parametrize("name", ZOO)
def test_a_hundred_random_plans_never_fail_on_zoo_architectures(name):
    _sweep(name, n_plans=100, n_lowered=10)


def test_fine_tuning_keeps_the_teachers_normalization_and_the_identity_plan_is_the_teacher():
    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.plan import CompressionPlan, LayerPlan

    task = _foreign_bn_task()
    cfg = FinetuneConfig(calibration_batches=4, batch_size=32)
    identity = Candidate(task, CompressionPlan(), cfg)
    identity.train_to(200)
    assert identity.accuracy() == 1.0
    with torch.no_grad():
        assert torch.equal(identity.cm.model(task.example_input), task.model(task.example_input))
    pruned = Candidate(task, CompressionPlan(layers={"layer1.0.conv1": LayerPlan(channel_keep=0.5)}), cfg)
    before = {n: m.running_var.clone() for n, m in pruned.cm.model.named_modules()
              if isinstance(m, torch.nn.BatchNorm2d)}
    pruned.train_to(50)
    after = {n: m.running_var for n, m in pruned.cm.model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    assert all(torch.equal(before[n], after[n]) for n in before)  # statistics kept while training
    teacher_bn = dict(task.model.named_modules())
    assert torch.equal(after["stem.1"], teacher_bn["stem.1"].running_var)  # an untouched one is the teacher's


@pytest.mark.slow
def test_fine_tuning_raises_the_metric_on_average_over_random_plans():
    import statistics

    from autocompress.compress import discover_layers
    from autocompress.config import FinetuneConfig, SearchSpaceConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.space import SearchSpace

    task = _foreign_bn_task()
    space = SearchSpace(SearchSpaceConfig(**SWEEP_SPACE), discover_layers(task.model, task.example_input))
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    cfg = FinetuneConfig(calibration_batches=4, batch_size=32)
    gains = []
    for _ in range(20):
        trial = study.ask()
        cand = Candidate(task, space.suggest(trial), cfg)
        zero = cand.accuracy()
        cand.train_to(60)
        gains.append(cand.accuracy() - zero)
        study.tell(trial, gains[-1])
    assert statistics.mean(gains) > 0, gains


def test_one_call_from_python_runs_a_resumable_study_and_exports(tmp_path, capsys):
    import autocompress
    from autocompress.cli import main
    from autocompress.errors import ConfigError

    task = load_task("helpers_tasks:tiny")
    kw = dict(train=task.train, val=task.val, name="tiny-py", folder=tmp_path, search_space="small", n_trials=3,
              progress=False, finetune={"steps": 10}, latency={"measure": True, "warmup": 1, "repeats": 3},
              fidelity={"promotion": False, "self_check": 0})
    out = autocompress.search_model(task.model, task.example_input, **kw)
    assert out.new_trials == 3 and len(out.front.trials) >= 1 and (tmp_path / "tiny-py" / "study.db").is_file()
    again = autocompress.search_model(task.model, task.example_input, **{**kw, "n_trials": 4})
    assert again.new_trials == 1  # resumed, not restarted
    assert main(["front", str(tmp_path / "tiny-py")]) == 0 and "4 completed trials" in capsys.readouterr().out
    number = int(again.front.front["trial"].iloc[0])
    res = export_from_study(f"sqlite:///{tmp_path / 'tiny-py' / 'study.db'}", tmp_path / "exp", trial=number,
                            task=autocompress.Task(name="tiny-py", model=task.model, example_input=task.example_input,
                                                   train=task.train, val=task.val),
                            finetune="none", measure=False)
    assert res.card["source"]["trial"] == number
    with pytest.raises(ConfigError, match="sampler"):
        autocompress.search_model(task.model, task.example_input, **{**kw, "sampler": "grid"})
    with pytest.raises(autocompress.TaskError, match="given from Python"):
        load_task("python:tiny-py")


def _bounds(name: str) -> dict[str, float]:
    """Identity, 8-bit-weight and full-int8 (ONNX Runtime) metric changes of a built-in teacher, calibrated on 64
    samples (two batches of 32), as a user with a small calibration set would."""
    import tempfile
    from pathlib import Path

    from autocompress.compress import discover_layers
    from autocompress.config import FinetuneConfig
    from autocompress.evaluate.candidate import Candidate
    from autocompress.export.loader import OnnxModule
    from autocompress.plan import CompressionPlan, LayerPlan
    from autocompress.runtime import get_backend
    from autocompress.tasks.metric import evaluate

    task = load_task(name)
    cfg = FinetuneConfig(calibration_batches=2)
    teacher = evaluate(task.model, task.val, task.metric)

    def everywhere(**knobs):
        return CompressionPlan(layers={i.name: LayerPlan(**knobs)
                                       for i in discover_layers(task.model, task.example_input)})

    out = {"identity": Candidate(task, CompressionPlan(), cfg).accuracy() - teacher}
    for level in ("zero-shot", "short", "full"):  # the identity plan is never trained: the teacher at every level
        cand = Candidate(task, CompressionPlan(), cfg)
        cand.train_to({"zero-shot": 0, "short": 20, "full": 40}[level])
        out[f"identity_{level}"] = cand.accuracy() - teacher
    out["w8"] = Candidate(task, everywhere(weight_bits=8), cfg).accuracy() - teacher
    cand = Candidate(task, everywhere(weight_bits=8, activation_bits=8), cfg)
    with tempfile.TemporaryDirectory() as tmp:
        lowered = get_backend("onnxruntime").lower(cand.baked(), task.example_input, cand.calib, Path(tmp))
        assert lowered.kernels.int8 and not lowered.kernels.float
        out["int8"] = evaluate(OnnxModule(lowered.artifact), task.val, task.metric) - teacher
    return out


def _check_bounds(d: dict[str, float]) -> None:
    assert all(d[k] == 0.0 for k in d if k.startswith("identity")), d
    assert d["w8"] >= -0.005, d   # 8-bit per-channel weights alone: within half a point
    assert d["int8"] >= -0.01, d  # weights and activations int8 on the runtime: within one point


@pytest.mark.parametrize("name", ["digits-mlp", "mnist-lenet5", "mnist-resnet"])
def test_the_machinery_never_damages_a_builtin_teacher(name):
    _check_bounds(_bounds(name))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["mnist-resnet18", "mnist-mobilenetv2", "mnist-lenet300"])
def test_the_machinery_never_damages_a_pretrained_zoo_teacher(name):
    _check_bounds(_bounds(name))
