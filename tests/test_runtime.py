"""The runtime layer: one kernel decision, one timing statistic, backends behind one registry, and an exported
front member running exactly the kernels its trial was scored with (ONNX Runtime and OpenVINO)."""

import json

import numpy as np
import onnx
import optuna
import pytest
import torch
from conftest import ROOT, write_study
from torch import nn

from autocompress.cli import main
from autocompress.compress import apply, bake, calibrate
from autocompress.compress import discover_layers as discover_layers_of
from autocompress.config import load_study_config
from autocompress.export.artifact import export_from_study
from autocompress.front import KINDS_ATTR
from autocompress.latency.graph import optimized_graph
from autocompress.plan import CompressionPlan, LayerPlan
from autocompress.runtime import (
    BACKENDS,
    BackendEntry,
    BackendError,
    TimingSpec,
    check_backend,
    get_backend,
    resolve_kernels,
    time_interleaved,
)
from autocompress.runtime.onnx import export_onnx, graph_ops
from autocompress.search.driver import run_study
from autocompress.tasks.models import LeNet5


def _baked(model, plan, x, calib):
    cm = apply(model, plan, x)
    calibrate(cm, calib)
    cm.model.eval()
    return bake(cm)


def test_onnx_export_matches_torch(tmp_path):
    torch.manual_seed(0)
    m = LeNet5().eval()
    x = torch.randn(3, 1, 28, 28)
    export_onnx(m, x[:1], tmp_path / "m.onnx")
    out = get_backend("onnxruntime").session(tmp_path / "m.onnx").run({"input": x.numpy()})[0]  # dynamic batch
    np.testing.assert_allclose(out, m(x).detach().numpy(), atol=1e-4)


def test_kernel_decision_is_one_rule_per_backend():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 16), nn.ReLU(),
                          nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3)).eval()
    x = torch.randn(1, 1, 8, 8)
    plan = CompressionPlan(layers={
        "0": LayerPlan(weight_bits=4),                                # weight-only conv: no int4 conv kernel
        "3": LayerPlan(weight_bits=8, activation_bits=8),            # int8
        "5": LayerPlan(weight_bits=4, weight_sharing=True),          # k-means codebook: float
        "7": LayerPlan(weight_bits=3),                               # weight-only Linear: int4 where the backend has it
    })
    cm = _baked(model, plan, x, [torch.randn(4, 1, 8, 8)])
    ort = resolve_kernels(cm, get_backend("onnxruntime").kinds)
    assert ort.int8 == ["3"] and ort.int4 == ["7"] and sorted(ort.float) == ["0", "5"]
    assert "weight-only" in ort.notes["0"] and "k-means" in ort.notes["5"]
    predicted = resolve_kernels(cm, {"int8", "float"})
    assert predicted.int8 == ["3"] and predicted.int4 == [] and sorted(predicted.float) == ["0", "5", "7"]
    eager = resolve_kernels(cm, get_backend("torch").kinds)
    assert eager.int8 == eager.int4 == [] and "no int8 kernel" in eager.notes["3"]


def test_int8_found_by_scope_for_batchnorm_folded_and_matmul_layers(tmp_path):
    """The exporter renames the weight of a Conv with a folded BatchNorm and of a Linear exported as MatMul: such
    layers planned int8 still run int8 kernels (QLinearConv / QLinearMatMul), not float."""
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                      nn.Flatten(), nn.Linear(8 * 8 * 8, 16, bias=False), nn.ReLU(), nn.Linear(16, 4)).eval()
    x = torch.randn(1, 1, 8, 8)
    calib = [torch.randn(8, 1, 8, 8)]
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in ("0", "3", "7", "9")})
    lowered = get_backend("onnxruntime").lower(_baked(m, plan, x, calib), x, calib, tmp_path)
    assert sorted(lowered.kernels.int8) == ["0", "3", "7", "9"]
    ops = [n.op for n in optimized_graph(onnx.load(str(lowered.artifact)), "all").nodes]
    assert ops.count("QLinearConv") == 2 and ops.count("QLinearMatMul") == 1 and ops.count("QGemm") == 1
    assert "Conv" not in ops and "FusedConv" not in ops


def test_timing_is_the_median_of_round_medians_interleaved():
    order = []

    def call(key):
        order.append(key)

    spec = TimingSpec(warmup=1, runs=2, rounds=4)
    got = time_interleaved({"a": lambda: call("a"), "b": lambda: call("b")}, spec, backend="x")
    assert order[:2] == ["a", "b"] and order[2:] == ["a", "a", "b", "b"] * 4  # warm-up, then A A B B per round
    assert len(got["a"].rounds_ms) == 4 and got["a"].runs == 8 and got["a"].backend == "x"
    assert got["a"].latency_ms == pytest.approx(np.median(got["a"].rounds_ms), rel=1e-2, abs=1e-5)


def test_torch_backend_times_the_module():
    torch.manual_seed(0)
    x = torch.randn(1, 1, 28, 28)
    cm = _baked(LeNet5().eval(), CompressionPlan(), x, [])
    timing, kernels = get_backend("torch").measure(cm, x, [], TimingSpec(warmup=2, runs=5))
    assert timing.backend == "torch" and timing.latency_ms > 0 and timing.runs == 5 and not kernels.int8


def test_unknown_or_uninstalled_backend_is_a_clear_error(monkeypatch):
    with pytest.raises(BackendError, match=r"unknown latency backend 'tvm'; known: onnxruntime, openvino, torch"):
        check_backend("tvm")
    monkeypatch.setitem(BACKENDS, "fancy", BackendEntry("fancy", "FancyBackend", "no_such_runtime_pkg", "fancy"))
    with pytest.raises(BackendError, match=r"pip install 'autocompress\[fancy\]'.*installed backends: onnxruntime"):
        check_backend("fancy")
    with pytest.raises(BackendError, match="execution provider 'NoSuchExecutionProvider' is not available"):
        get_backend("onnxruntime", device="NoSuchExecutionProvider")


def test_study_with_an_uninstalled_backend_exits_2_and_writes_nothing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(BACKENDS, "fancy", BackendEntry("fancy", "FancyBackend", "no_such_runtime_pkg", "fancy"))
    path = write_study(tmp_path, latency={"backend": "fancy", "measure": True})
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "latency.backend" in err and "autocompress[fancy]" in err and "onnxruntime" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["s.yaml"]


# --- what the search scored is what exports ------------------------------------------------------------------

SPACE = {"version": 1, "groups": [{"name": "all", "types": ["Linear"], "per_layer": True,
                                   "weight_bits": [3, 8], "activation_bits": [8, 32]}]}


def _kernels_in_artifact(backend: str, path) -> dict[str, int]:
    """Counts of int8 / int4 kernels the runtime really runs in the exported file."""
    if backend == "onnxruntime":
        ops = get_backend("onnxruntime").runtime_ops(path)
        return {"int8": ops.get("QGemm", 0) + ops.get("QLinearMatMul", 0), "int4": ops.get("MatMulNBits", 0)}
    precisions = get_backend("openvino").runtime_precisions(path)
    int8 = sum(kind == "FullyConnected" and prec in ("u8", "i8") for kind, prec in precisions.values())
    return {"int8": int8, "int4": graph_ops(path).get("MatMulNBits", 0)}


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_exported_kernels_are_those_the_search_measured(backend, tmp_path, digits_task):
    if backend == "openvino":
        pytest.importorskip("openvino")
    path = write_study(tmp_path, n_trials=6, search_space=SPACE, sampler="random", warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, deployability_gate=False,
                       latency={"backend": backend, "measure": True, "warmup": 1, "repeats": 3})
    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    expected_kinds = ["float", "int4", "int8"] if backend == "onnxruntime" else ["float", "int8"]
    assert study.user_attrs[KINDS_ATTR] == expected_kinds
    seen = {"int8": 0, "int4": 0}
    for trial in study.get_trials(states=[optuna.trial.TrialState.COMPLETE]):
        scored = trial.user_attrs["kernels"]
        res = export_from_study(str(path), tmp_path / f"t{trial.number}", trial=trial.number, task=digits_task,
                                finetune="none", measure=False)
        low = res.card["lowering"]
        assert {k: sorted(low[k]) for k in ("int8", "int4", "float")} == \
            {k: sorted(scored[k]) for k in ("int8", "int4", "float")}, trial.number
        assert low["search_kernels_match"] is True and low["backend"] == backend
        assert _kernels_in_artifact(backend, tmp_path / f"t{trial.number}" / "model.onnx") == \
            {"int8": len(scored["int8"]), "int4": len(scored["int4"])}, trial.number
        for kind in seen:
            seen[kind] += len(scored[kind])
    assert seen["int8"] > 0  # the sampled plans exercised the int8 path
    assert (seen["int4"] > 0) == (backend == "onnxruntime")  # OpenVINO has no int4 kernels: those layers ran float


def test_openvino_runs_the_qdq_graph_on_int8_kernels(tmp_path, digits_task):
    pytest.importorskip("openvino")
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in ("1", "3")})
    calib = [torch.stack([digits_task.train[i][0] for i in range(64)])]
    cm = _baked(digits_task.model, plan, digits_task.example_input, calib)
    ov = get_backend("openvino")
    lowered = ov.lower(cm, digits_task.example_input, calib, tmp_path)
    assert sorted(lowered.kernels.int8) == ["1", "3"]
    precisions = ov.runtime_precisions(lowered.artifact)
    assert sum(k == "FullyConnected" and p in ("u8", "i8") for k, p in precisions.values()) == 2
    x = torch.stack([digits_task.test[i][0] for i in range(32)])
    ov_out = ov.session(lowered.artifact).run({"input": x.numpy()})[0]
    ort_out = get_backend("onnxruntime").session(lowered.artifact).run({"input": x.numpy()})[0]
    assert (ov_out.argmax(1) == ort_out.argmax(1)).mean() >= 0.95
    timing, _ = ov.measure(cm, digits_task.example_input, calib, TimingSpec(warmup=2, runs=5))
    assert timing.backend == "openvino" and timing.latency_ms > 0


def test_validate_names_the_installed_backends(tmp_path, capsys):
    path = tmp_path / "v.yaml"
    path.write_text(json.dumps({"task": "digits-mlp", "search_space": str(ROOT / "search_spaces" / "small.yaml"),
                                "latency": {"backend": "tvm"}}))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "latency.backend" in err and "unknown latency backend 'tvm'" in err


def test_exported_kernels_are_those_the_search_predicted(tmp_path, digits_task):
    """A study that predicts latency scores with the predictor's kernel kinds (int8, int4 where the profile measured
    MatMulNBits, float): its front members export with exactly the kernels each trial was predicted with."""
    from test_predictor import _digits_profile

    profile = _digits_profile(digits_task, tmp_path / "digits-profile.json")
    path = write_study(tmp_path, n_trials=6, search_space=SPACE, sampler="random", warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, deployability_gate=False,
                       latency={"predictor": profile.name, "warmup": 1, "repeats": 3})
    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert study.user_attrs[KINDS_ATTR] == ["float", "int4", "int8"]
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert done and all(t.user_attrs["latency_source"] == "predicted" for t in done)
    assert any(t.user_attrs["kernels"]["int8"] for t in done)
    for trial in done:
        scored = trial.user_attrs["kernels"]
        res = export_from_study(str(path), tmp_path / f"t{trial.number}", trial=trial.number, task=digits_task,
                                finetune="none", measure=False)
        low = res.card["lowering"]
        assert {k: sorted(low[k]) for k in ("int8", "int4", "float")} == \
            {k: sorted(scored[k]) for k in ("int8", "int4", "float")}, trial.number
        assert _kernels_in_artifact("onnxruntime", tmp_path / f"t{trial.number}" / "model.onnx") == \
            {"int8": len(scored["int8"]), "int4": len(scored["int4"])}
    assert any(t.user_attrs["kernels"]["int4"] for t in done)


def test_openvino_study_predicts_from_its_own_profile_and_exports_what_it_scored(tmp_path, digits_task):
    """An OpenVINO profile (quick) predicts an OpenVINO study's trials with int8 and float kernels; a front member
    exports with the kernels it was scored with, and OpenVINO runs them int8; an ONNX Runtime profile is refused."""
    pytest.importorskip("openvino")
    from test_predictor import _synthetic_profile

    from autocompress.errors import ConfigError
    from autocompress.latency.profile import ProfileSettings, build_profile

    settings = ProfileSettings.quick()
    settings.micro, settings.runs, settings.calibration_plans = 24, 20, 0
    profile = build_profile(backend="openvino", settings=settings)
    assert profile.fingerprint["openvino"] and any(k.endswith("/int8") for k in profile.model.kinds)
    profile.save(tmp_path / "ov.json")
    path = write_study(tmp_path, n_trials=5, search_space=SPACE, sampler="random", warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, deployability_gate=False,
                       latency={"backend": "openvino", "predictor": "ov.json"})
    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert study.user_attrs[KINDS_ATTR] == ["float", "int8"]
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert done and all(t.user_attrs["latency_source"] == "predicted" for t in done)
    trial = next(t for t in done if t.user_attrs["kernels"]["int8"])
    export_from_study(str(path), tmp_path / "out", trial=trial.number, task=digits_task, finetune="none",
                      measure=False)
    assert _kernels_in_artifact("openvino", tmp_path / "out" / "model.onnx") == \
        {"int8": len(trial.user_attrs["kernels"]["int8"]), "int4": 0}
    _synthetic_profile({"Gemm"}).save(tmp_path / "ort.json")
    (tmp_path / "other").mkdir()
    path = write_study(tmp_path / "other", latency={"backend": "openvino", "predictor": str(tmp_path / "ort.json")})
    with pytest.raises(ConfigError, match="onnxruntime"):
        run_study(load_study_config(path), progress=False, task=digits_task)


class _Block(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.q, self.v = nn.Linear(d, d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, 32), nn.GELU(), nn.Linear(32, d))

    def forward(self, x):
        a = torch.softmax(self.q(x) @ x.transpose(1, 2), -1) @ self.v(x)
        return x + self.ff(a)


class _Encoder(nn.Module):
    """Transformer-style: blocks in an nn.ModuleList iterated in forward (not a called container)."""

    def __init__(self) -> None:
        super().__init__()
        self.layer = nn.ModuleList([_Block(), _Block()])
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        for block in self.layer:
            x = block(x)
        return self.head(x.mean(1))


def test_layers_inside_a_module_list_are_found_and_run_int8(tmp_path):
    """Scope names of modules in an nn.ModuleList (``/layer.0/q/MatMul``), as transformer encoders have: every
    Linear planned int8 runs int8 (it ran float before: its node was not matched to its module)."""
    torch.manual_seed(0)
    model, x = _Encoder().eval(), torch.randn(1, 6, 16)
    names = [i.name for i in discover_layers_of(model, x)]
    assert "layer.0.q" in names and "layer.1.ff.2" in names
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in names})
    calib = [torch.randn(8, 6, 16)]
    lowered = get_backend("onnxruntime").lower(_baked(model, plan, x, calib), x, calib, tmp_path)
    assert sorted(lowered.kernels.int8) == sorted(names) and not lowered.kernels.float
    graph = onnx.load(str(lowered.artifact)).graph
    dq_fed = {n.output[0] for n in graph.node if n.op_type == "DequantizeLinear"}
    int8_layers = [n for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in dq_fed]
    assert len(int8_layers) == len(names)  # every layer's weight comes through its int8 Q/DQ pair


class _DictBlock(nn.Module):
    def __init__(self, d: int = 16) -> None:
        super().__init__()
        self.attn = nn.ModuleDict({"q": nn.Linear(d, d), "v": nn.Linear(d, d)})
        self.out = nn.Linear(d, d)

    def forward(self, x):
        return x + self.out(torch.softmax(self.attn["q"](x) @ x.transpose(1, 2), -1) @ self.attn["v"](x))


def test_layers_inside_a_module_dict_are_found_too(tmp_path):
    """The exporter drops an nn.ModuleDict's name from the scope (``/layer.0/q/MatMul`` for ``layer.0.attn.q``):
    the node is still matched to its module, by lowering and by the latency predictor alike."""
    from autocompress.latency.analysis import TeacherAnalysis

    torch.manual_seed(0)
    model = nn.Sequential(_DictBlock(), _DictBlock(), nn.Flatten(), nn.Linear(6 * 16, 3)).eval()
    x = torch.randn(1, 6, 16)
    names = [i.name for i in discover_layers_of(model, x)]
    assert "0.attn.q" in names and "1.attn.v" in names
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in names})
    calib = [torch.randn(8, 6, 16)]
    lowered = get_backend("onnxruntime").lower(_baked(model, plan, x, calib), x, calib, tmp_path)
    assert sorted(lowered.kernels.int8) == sorted(names), lowered.kernels.notes
    res = TeacherAnalysis(model, x).resolve(plan)
    assert all(res.int8[n][0] for n in names)  # the predictor lowers the same layers to int8
