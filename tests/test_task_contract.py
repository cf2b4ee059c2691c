"""The task contract: inputs of any structure, a forward hook, distillation losses, and a metric with a name and a
direction that objectives, constraints, fronts, hypervolume, export and verify follow."""

import math

import numpy as np
import optuna
import pytest
import torch
from conftest import metric_rows_ok, run_complete, write_study
from torch import nn
from torch.utils.data import Dataset, TensorDataset

from autocompress import MSE, Task
from autocompress.compress import apply, bake
from autocompress.config import FinetuneConfig, load_study_config
from autocompress.errors import ConfigError, TaskError
from autocompress.export.artifact import export_from_study, verify
from autocompress.export.loader import load
from autocompress.front import hypervolume, load_front
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.runtime import get_backend
from autocompress.search.driver import run_study
from autocompress.tasks import check_task
from autocompress.tasks.inputs import call, collate, feed, from_named, named
from autocompress.tasks.loss import resolve_loss

SPACE = {"version": 1, "groups": [{"name": "fc", "types": ["Linear"], "per_layer": False,
                                   "weight_bits": [4, 8], "activation_bits": [8, 32]}]}


class MaskedBag(nn.Module):
    """Keyword inputs (token ids and a padding mask, both int64) -> class logits; the signature lists the mask
    second, so a dict given mask-first must still reach the right parameters."""

    def __init__(self, vocab: int = 50, dim: int = 16, classes: int = 3) -> None:
        super().__init__()
        self.emb = nn.Embedding(vocab, dim)
        self.fc1 = nn.Linear(dim, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        h = self.emb(input_ids) * attention_mask.unsqueeze(-1).float()
        h = h.sum(1) / attention_mask.sum(1, keepdim=True).clamp_min(1).float()
        return self.fc2(torch.relu(self.fc1(h)))


class DictData(Dataset):
    def __init__(self, ids: torch.Tensor, mask: torch.Tensor, y: torch.Tensor) -> None:
        self.ids, self.mask, self.y = ids, mask, y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return {"attention_mask": self.mask[i], "input_ids": self.ids[i]}, self.y[i]


def dict_task() -> Task:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, 50, (192, 10), generator=g)
    mask = (torch.rand(192, 10, generator=g) > 0.2).long()
    mask[:, 0] = 1
    model = MaskedBag().eval()
    with torch.no_grad():
        y = model(ids, mask).argmax(1)  # agreement with the teacher
    data = DictData(ids, mask, y)
    train, val = torch.utils.data.Subset(data, range(160)), torch.utils.data.Subset(data, range(160, 192))
    return Task(name="dict-inputs", model=model, example_input={"attention_mask": mask[:1], "input_ids": ids[:1]},
                train=train, val=val)


class TwoInputs(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.head = nn.Linear(8, 16), nn.Linear(4, 16), nn.Linear(16, 1)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.a(x) + self.b(z))).squeeze(-1)


def regression_task() -> Task:
    """Tuple inputs, a regression output scored by MSE (minimized), distilled with the MSE loss."""
    g = torch.Generator().manual_seed(0)
    x, z = torch.randn(192, 8, generator=g), torch.randn(192, 4, generator=g)
    model = TwoInputs().eval()
    with torch.no_grad():
        y = model(x, z) + 0.05 * torch.randn(192, generator=g)

    class Pairs(Dataset):
        def __len__(self):
            return 192

        def __getitem__(self, i):
            return (x[i], z[i]), y[i]

    data = Pairs()
    return Task(name="regression", model=model, example_input=(x[:1], z[:1]),
                train=torch.utils.data.Subset(data, range(160)), val=torch.utils.data.Subset(data, range(160, 192)),
                metric=MSE, loss="mse")


def test_inputs_are_named_in_forward_order_and_round_trip():
    model = MaskedBag()
    x = {"attention_mask": torch.ones(1, 4, dtype=torch.long), "input_ids": torch.zeros(1, 4, dtype=torch.long)}
    assert list(named(model, x)) == ["input_ids", "attention_mask"]
    assert list(named(None, (torch.zeros(1, 2), torch.zeros(1, 3)))) == ["input.0", "input.1"]
    back = from_named(feed(x))
    assert set(back) == set(x) and back["input_ids"].dtype == torch.int64
    assert isinstance(from_named(feed((torch.zeros(1, 2), torch.zeros(1, 3)))), tuple)
    batch = collate([(torch.zeros(2), torch.ones(3))] * 4)
    assert isinstance(batch, tuple) and batch[1].shape == (4, 3)


def test_dict_inputs_lower_to_onnx_with_every_input_named_and_matching_outputs(tmp_path):
    task = dict_task()
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in ("fc1", "fc2")})
    cm = bake(apply(task.model, plan, task.example_input))
    calib = [collate([task.train[i][0] for i in range(32)])]
    lowered = get_backend("onnxruntime").lower(cm, task.example_input, calib, tmp_path)
    assert len(lowered.kernels.int8) == 2
    sess = get_backend("onnxruntime").session(lowered.artifact)
    assert sess.input_names == ["input_ids", "attention_mask"]
    x = collate([task.val[i][0] for i in range(16)])
    out = sess.run(feed(x))[0]
    with torch.no_grad():
        ref = call(cm.model, x)
    assert (torch.from_numpy(out).argmax(1) == ref.argmax(1)).float().mean() >= 0.8


def test_a_study_on_dict_inputs_runs_exports_and_its_artifacts_take_the_same_dict(tmp_path):
    task = dict_task()
    path = write_study(tmp_path, task="python:dict", search_space=SPACE, n_trials=3, sampler="random",
                       fidelity={"promotion": False, "self_check": 0})
    loaded, study, done = run_complete(path, 3, task=task)
    res = export_from_study(str(path), tmp_path / "out", trial=done[0].number, task=task, finetune="none")
    assert set(res.card["inputs"]) == {"input_ids", "attention_mask"}
    x = collate([task.val[i][0] for i in range(8)])
    with torch.no_grad():
        onnx_out = call(load(tmp_path / "out", runtime="onnx", architecture=task.model), x)
        torch_out = call(load(tmp_path / "out", architecture=task.model), x)
    assert onnx_out.shape == torch_out.shape == (8, 3)
    report = verify(tmp_path / "out", task=task)
    assert metric_rows_ok(report), [r for r in report.rows if not r["ok"]]


def test_a_minimized_metric_drives_objectives_constraints_front_and_pick(tmp_path):
    task = regression_task()
    teacher_mse = check_task(task)
    path = write_study(tmp_path, task="python:regression", search_space=SPACE, n_trials=5, sampler="random",
                       fidelity={"promotion": False, "self_check": 0},
                       constraints={"max_metric": teacher_mse * 50})
    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert study.metric_names == ["mse", "latency_ms", "size_bytes"]
    assert study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    front = load_front(loaded.storage_url)
    assert front.metric == {"name": "mse", "direction": "minimize", "range": None}
    assert "mse" in front.trials and "test_mse" in front.trials
    best = front.pick("mse < 1e9")
    assert best["mse"] == front.front["mse"].min()  # best = smallest, not largest
    assert "mse" in front.table().splitlines()[0]
    for t in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        assert t.user_attrs["constraints"]["max_metric"] == pytest.approx(t.user_attrs["accuracy"] - teacher_mse * 50)
    # hypervolume scores mse as a ratio to the teacher's: a member at the teacher's mse, latency and size gives 1x1
    teacher = {"accuracy": 2.0, "latency_ms": 1.0, "size_bytes": 100}
    df = front.trials.head(1).assign(accuracy=1.0, latency_ms=1.0, size_bytes=50, feasible=True)
    hv = hypervolume(df, ["mse", "latency_ms", "size_bytes"], teacher, front.metric)
    assert hv == pytest.approx((2 - 0.5) * (2 - 1) * (1 - 0.5))


def test_objectives_that_do_not_match_the_tasks_metric_are_a_clear_config_error(tmp_path):
    task = regression_task()
    for objectives, needle in (({"accuracy": "maximize", "latency_ms": "minimize"}, "not the task's metric"),
                               ({"mse": "maximize", "size_bytes": "minimize"}, "is minimized")):
        path = write_study(tmp_path, task="python:regression", search_space=SPACE, objectives=objectives)
        with pytest.raises(ConfigError, match=needle) as e:
            run_study(load_study_config(path), progress=False, task=task)
        assert "field `objectives`" in str(e.value) and str(path.name) in str(e.value)
        assert not (tmp_path / "s").exists()  # nothing written


def test_forward_hook_and_loss_functions():
    class Wrapped(nn.Module):  # returns a dict, as Hugging Face models return ModelOutput
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x):
            return {"logits": self.fc(x)}

    x, y = torch.randn(64, 4), torch.randint(0, 3, (64,))
    raw = Task(name="raw", model=Wrapped(), example_input=x[:1], train=TensorDataset(x, y), val=TensorDataset(x, y))
    with pytest.raises(TaskError, match="forward"):
        check_task(raw)
    hooked = Task(name="hooked", model=Wrapped(), example_input=x[:1], train=TensorDataset(x, y),
                  val=TensorDataset(x, y), forward=lambda m, inp: m(inp)["logits"])
    assert 0.0 <= check_task(hooked) <= 1.0
    assert [n for n, _ in hooked.model.named_modules()][1:] == ["model", "model.fc"]
    s, t = torch.randn(8, 5, 11), torch.randn(8, 5, 11)
    tokens = torch.randint(0, 11, (8, 5))
    tokens[:, -1] = -100
    lm = resolve_loss("lm")(s, t, tokens, alpha=0.5, temperature=2.0)
    assert math.isfinite(float(lm)) and float(resolve_loss("lm")(t, t, tokens, alpha=1.0, temperature=2.0)) < 1e-5
    mine = resolve_loss(lambda a, b, c: (a - b).abs().mean())
    assert float(mine(s, s, tokens, alpha=0.5, temperature=1.0)) == 0.0
    with pytest.raises(TaskError, match="unknown loss"):
        Task(name="bad", model=Wrapped(), example_input=x[:1], train=TensorDataset(x, y), val=TensorDataset(x, y),
             loss="hinge")


def test_a_bad_example_input_is_a_task_error_naming_what_it_is():
    model = nn.Linear(4, 2)
    data = TensorDataset(torch.randn(8, 4), torch.zeros(8, dtype=torch.long))
    for bad, needle in ((np.zeros((1, 4)), "ndarray"), ({"x": 1}, "not a tensor"), ((), "empty tuple")):
        with pytest.raises(TaskError, match=needle):
            check_task(Task(name="t", model=model, example_input=bad, train=data, val=data))


def test_device_is_validated_and_candidates_train_where_it_says(tmp_path):
    from autocompress.cli import main
    from autocompress.config import StudyConfig
    from autocompress.evaluate.candidate import Candidate

    cfg = StudyConfig.model_validate({"task": "digits-mlp", "search_space": "small", "device": "cpu"})
    assert cfg.finetune.device == "cpu"
    with pytest.raises(Exception, match="device"):
        StudyConfig.model_validate({"task": "digits-mlp", "search_space": "small", "device": "tpu"})
    task = regression_task()
    cand = Candidate(task, CompressionPlan(layers={"a": LayerPlan(weight_bits=4)}), cfg.finetune)
    assert cand.device.type == "cpu"
    cand.train_to(3)
    assert all(p.device.type == "cpu" for p in cand.cm.model.parameters())
    if not torch.cuda.is_available():
        path = write_study(tmp_path, task="python:regression", search_space=SPACE, device="cuda")
        with pytest.raises(ConfigError, match="CUDA") as e:
            run_study(load_study_config(path), progress=False, task=task)
        assert "field `device`" in str(e.value)
        assert not (tmp_path / "s").exists()
    assert main(["search", str(write_study(tmp_path, file="g")), "--trial-gpus", "1"]) == 2


def test_the_tasks_collate_function_batches_every_split():
    """Sequences of different lengths, padded by the user's collate into {input_ids, attention_mask} batches: the
    teacher check, calibration, fine-tuning and evaluation all batch through it."""
    from autocompress.evaluate.candidate import Candidate, calibration_batches

    g = torch.Generator().manual_seed(0)
    seqs = [torch.randint(1, 50, (int(n),), generator=g) for n in torch.randint(3, 10, (96,), generator=g)]
    labels = [int(s[0] < 25) for s in seqs]
    calls = []

    def pad(samples):
        calls.append(len(samples))
        n = max(len(s) for s, _ in samples)
        ids = torch.zeros(len(samples), n, dtype=torch.long)
        for i, (s, _) in enumerate(samples):
            ids[i, :len(s)] = s
        return {"input_ids": ids, "attention_mask": (ids != 0).long()}, torch.tensor([y for _, y in samples])

    data = list(zip(seqs, labels, strict=True))
    example = pad(data[:1])[0]
    task = Task(name="padded", model=MaskedBag(classes=2).eval(), example_input=example, train=data[:64],
                val=data[64:], collate=pad)
    assert 0.0 <= check_task(task) <= 1.0 and calls
    batches = calibration_batches(task, 2)
    assert set(batches[0]) == {"input_ids", "attention_mask"} and len(batches[0]["input_ids"]) == 32
    cand = Candidate(task, CompressionPlan(layers={"fc1": LayerPlan(weight_bits=4)}), FinetuneConfig(steps=3))
    before = len(calls)
    cand.train_to(3)
    assert len(calls) > before and math.isfinite(cand.accuracy())
