"""Export: packed weights match the size objective, the ONNX artifact runs real int8/int4 kernels and agrees with
PyTorch, checksums refuse tampering, the folder is written atomically and never overwritten without --force,
and the deployability gate keeps members that do not export off the front."""

import json
import shutil

import numpy as np
import onnx
import optuna
import pytest
import torch
from conftest import write_study
from torch import nn
from torch.utils.data import TensorDataset

from autocompress import Task
from autocompress.cli import main
from autocompress.compress.quantize import magnitude_mask, quantize_weight
from autocompress.config import LatencyConfig, load_study_config
from autocompress.evaluate.size import weight_storage_bits
from autocompress.export import gate as gate_module
from autocompress.export.artifact import export_plan, verify
from autocompress.export.card import ArtifactError, ExportError, safe_path
from autocompress.export.loader import load
from autocompress.export.pack import pack_bits, pack_weight, unpack_bits, unpack_state
from autocompress.front import DEPLOY_ATTR, Front, load_front
from autocompress.plan import CompressionPlan, LayerPlan, StudentPlan
from autocompress.runtime.onnx import graph_ops
from autocompress.runtime.onnxruntime import OnnxRuntimeBackend
from autocompress.search.driver import run_study

FAST_LATENCY = LatencyConfig(warmup=2, repeats=5)
# digits-mlp layers: "1" (64->64), "3" (64->32), "5" (32->10, output)
MIXED = CompressionPlan(layers={
    "1": LayerPlan(weight_bits=8, activation_bits=8, sparsity=0.5),    # int8 kernel, bitmask-packed
    "3": LayerPlan(weight_bits=4, sparsity=0.75, channel_keep=0.75),   # int4 weight-only, pruned channels
    "5": LayerPlan(weight_bits=3),                                     # 3-bit weight-only -> int4 container
})


@pytest.fixture(scope="module")
def exported(tmp_path_factory, digits_task):
    out = tmp_path_factory.mktemp("exports") / "mixed"
    result = export_plan(digits_task, MIXED, out, finetune=30, latency_cfg=FAST_LATENCY, rounds=1)
    return result


# --- packing ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("bits", [1, 2, 3, 4, 5, 7, 8, 11, 32])
def test_bit_packing_round_trip(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=1001, dtype=np.uint64)
    buf = pack_bits(values, bits)
    assert len(buf) == -(-1001 * bits // 8)
    assert np.array_equal(unpack_bits(buf, 1001, bits), values)


@pytest.mark.parametrize("bits", [2, 4, 8, 32])
@pytest.mark.parametrize("sparsity,storage", [(0.0, "dense"), (0.5, "bitmask"), (0.97, "csr")])
def test_pack_weight_is_exact_and_as_small_as_the_objective(bits, sparsity, storage):
    torch.manual_seed(0)
    w = torch.randn(16, 5, 3, 3)
    w = quantize_weight(w * magnitude_mask(w, sparsity), bits).detach()
    packed = pack_weight(w, bits)
    objective = weight_storage_bits(w, bits)
    assert packed.entry["storage"] == objective.storage  # the same layout the size objective counts
    if bits == 8:
        assert objective.storage == storage
    # byte alignment costs at most one byte per section
    assert objective.size_bits / 8 <= len(packed.data) <= objective.size_bits / 8 + len(packed.entry["sections"])
    index = {"type": "autocompress-packed-weights", "version": 1, "nbytes": len(packed.data),
             "tensors": [{"name": "w", "offset": 0, **packed.entry}]}
    assert torch.equal(unpack_state(packed.data, index)["w"], w)


def test_pack_refuses_weights_off_the_grid():
    with pytest.raises(ValueError, match="not on a 4-bit"):
        pack_weight(torch.randn(4, 8), 4)


# --- the artifact ------------------------------------------------------------------------------------------

def test_artifact_files_card_and_size(exported):
    out, card = exported.path, exported.card
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["model.onnx", "plan.json", "weights.json", "weights.bin", "model.json", "README.md", "SHA256SUMS"])
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no temporary folder left
    sums = dict(line.split("  ")[::-1] for line in (out / "SHA256SUMS").read_text().splitlines())
    assert set(sums) == {p.name for p in out.iterdir()} - {"SHA256SUMS"}
    on_disk = json.loads((out / "model.json").read_text())
    assert on_disk["plan"] == MIXED.to_dict() and on_disk["finetune"]["steps"] == 30
    assert {"torch", "onnx", "onnxruntime", "numpy", "python"} <= set(on_disk["versions"])
    size = card["metrics"]["size"]
    # the packed PyTorch artifact is the size objective, up to byte alignment and integer buffers
    assert size["weights_bin_bytes"] == (out / "weights.bin").stat().st_size
    assert abs(size["weights_bin_bytes"] - size["objective_bytes"]) <= 0.02 * size["objective_bytes"]
    assert size["weights_bin_bytes"] < size["teacher_bytes"] / 4
    assert size["onnx_bytes"] == (out / "model.onnx").stat().st_size < size["teacher_onnx_bytes"]
    acc, lat = card["metrics"]["accuracy"], card["metrics"]["latency"]
    assert acc["teacher_test"] > 0.9 and acc["torch_test"] > 0.85
    assert acc["torch_artifact_vs_memory_max_abs_diff"] == 0.0  # packed weights rebuild bit-identically
    assert lat["teacher_ms"] > 0 and lat["export_ms"] > 0 and lat["speedup"] == pytest.approx(
        lat["teacher_ms"] / lat["export_ms"])
    readme = (out / "README.md").read_text()
    assert "Speedup over the fp32 teacher" in readme and "MatMulNBits" in readme


def test_onnx_runs_int8_and_int4_kernels(exported):
    path = exported.path / "model.onnx"
    low = exported.card["lowering"]
    assert low["int8"] == ["1"] and sorted(low["int4"]) == ["3", "5"] and low["float"] == []
    ops = graph_ops(path)
    assert ops.get("QuantizeLinear", 0) >= 1 and ops.get("DequantizeLinear", 0) >= 1
    assert ops.get("MatMulNBits") == 2 and "Gemm" in ops  # the int8 Gemm sits between its Q/DQ nodes
    assert OnnxRuntimeBackend().runtime_ops(path).get("QGemm") == 1  # ONNX Runtime fuses the QDQ Gemm into its int8 kernel
    model = onnx.load(str(path))
    dtypes = {i.name: i.data_type for i in model.graph.initializer}
    assert onnx.TensorProto.INT8 in dtypes.values()  # int8 weights stored as int8
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert all(dtypes[n.input[1]] == onnx.TensorProto.UINT8 for n in nbits)
    assert not any(d == onnx.TensorProto.FLOAT and name.endswith(("3.weight", "5.weight"))
                   for name, d in dtypes.items())


def test_predicted_kinds_lower_int4_layers_as_float(digits_task, tmp_path):
    """A study that predicts latency scores <= 4-bit weight-only layers as float (its predictor has no int4 costs):
    exported with the study's kernel kinds, they run float, as scored."""
    res = export_plan(digits_task, MIXED, tmp_path / "a", finetune="none", measure=False, kinds=["int8", "float"])
    low = res.card["lowering"]
    assert low["int8"] == ["1"] and low["int4"] == [] and sorted(low["float"]) == ["3", "5"]
    assert "MatMulNBits" not in graph_ops(tmp_path / "a" / "model.onnx")
    assert load(tmp_path / "a", runtime="onnx")(digits_task.example_input).shape == (1, 10)


def test_onnx_agrees_with_pytorch(exported, digits_task):
    torch_model = load(exported.path)
    onnx_model = load(exported.path, runtime="onnx")
    assert isinstance(torch_model, nn.Module) and torch_model.autocompress_card["format"] == "autocompress-export"
    x = torch.stack([digits_task.test[i][0] for i in range(len(digits_task.test))])
    with torch.no_grad():
        a, b = torch_model(x), onnx_model(x)
    assert a.shape == b.shape == (len(x), 10)
    assert (a.argmax(1) == b.argmax(1)).float().mean() >= 0.97
    assert (a - b).abs().max() < 0.25 * a.abs().max()
    assert exported.card["metrics"]["accuracy"]["onnx_torch_agreement"] >= 0.97


def test_architecture_rebuilt_without_the_teacher(exported):
    meta = json.loads((exported.path / "weights.json").read_text())
    assert meta["architecture"] == {"kind": "builtin", "name": "digits-mlp"}
    model = load(exported.path)  # no architecture= : rebuilt from the built-in architecture
    assert model.get_submodule("3").out_features == 24  # 32 * channel_keep 0.75, physically removed


def test_tampered_or_escaping_files_are_refused(exported, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(exported.path, copy)
    load(copy)  # intact copy loads
    data = bytearray((copy / "weights.bin").read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / "weights.bin").write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="weights.bin: checksum mismatch"):
        load(copy)
    shutil.rmtree(copy)
    shutil.copytree(exported.path, copy)
    card = json.loads((copy / "model.json").read_text())
    card["metrics"]["accuracy"]["torch_test"] = 1.0
    (copy / "model.json").write_text(json.dumps(card))
    with pytest.raises(ArtifactError, match="model.json: checksum mismatch"):
        load(copy, runtime="onnx")
    shutil.rmtree(copy)
    shutil.copytree(exported.path, copy)
    (copy / "model.onnx").unlink()
    with pytest.raises(ArtifactError, match="model.onnx is missing"):
        load(copy)
    (copy / "SHA256SUMS").write_text("0" * 64 + "  ../outside\n")
    with pytest.raises(ArtifactError, match="refusing file name"):
        load(copy)
    for bad in ("../x", "/etc/passwd", "a/b", ".."):
        with pytest.raises(ArtifactError):
            safe_path(tmp_path, bad)


def test_existing_folder_not_overwritten_without_force(digits_task, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ExportError, match="already exists"):
        export_plan(digits_task, MIXED, out, finetune="none", measure=False)
    with pytest.raises(ExportError, match="not an autocompress export"):
        export_plan(digits_task, MIXED, out, finetune="none", measure=False, force=True)
    assert (out / "keep.txt").read_text() == "mine"
    target = tmp_path / "export"
    first = export_plan(digits_task, MIXED, target, finetune="none", measure=False)
    with pytest.raises(ExportError, match="--force"):
        export_plan(digits_task, CompressionPlan(), target, finetune="none", measure=False)
    assert json.loads((target / "model.json").read_text())["plan"] == first.card["plan"]
    export_plan(digits_task, CompressionPlan(), target, finetune="none", measure=False, force=True)
    assert json.loads((target / "model.json").read_text())["plan"] == CompressionPlan().to_dict()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export", "out"]  # no backup or temporary left


def test_failed_export_leaves_nothing(digits_task, tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("lowering exploded")

    monkeypatch.setattr("autocompress.runtime.onnxruntime.OnnxRuntimeBackend.lower", broken)
    with pytest.raises(RuntimeError, match="lowering exploded"):
        export_plan(digits_task, MIXED, tmp_path / "new", finetune="none", measure=False)
    assert list(tmp_path.iterdir()) == []
    monkeypatch.undo()
    export_plan(digits_task, MIXED, tmp_path / "old", finetune="none", measure=False)
    before = (tmp_path / "old" / "SHA256SUMS").read_text()
    monkeypatch.setattr("autocompress.runtime.onnxruntime.OnnxRuntimeBackend.lower", broken)
    with pytest.raises(RuntimeError):
        export_plan(digits_task, CompressionPlan(), tmp_path / "old", finetune="none", measure=False, force=True)
    assert (tmp_path / "old" / "SHA256SUMS").read_text() == before  # the earlier export is untouched
    assert [p.name for p in tmp_path.iterdir()] == ["old"]


def test_bn_fused_convolutions_are_lowered_to_int8(tmp_path):
    """The exporter folds BatchNorm into the convolution and renames its weight: the layer is still found."""
    from autocompress.tasks.models import SmallResNet

    torch.manual_seed(0)
    model = SmallResNet(width=4, blocks=(1, 1, 1)).eval()
    x = torch.randn(64, 1, 28, 28)
    data = TensorDataset(x, torch.randint(0, 10, (64,)))
    task = Task(name="resnet", model=model, example_input=x[:1], train=data, val=data)
    names = ["stem.0", "layer1.0.conv1", "layer1.0.conv2", "layer2.0.conv1", "layer2.0.conv2",
             "layer2.0.shortcut.0", "layer3.0.conv1", "layer3.0.conv2", "layer3.0.shortcut.0", "fc"]
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8) for n in names},
                           student=StudentPlan(width=0.5))
    res = export_plan(task, plan, tmp_path / "rn", finetune="none", measure=False)
    assert sorted(res.card["lowering"]["int8"]) == sorted(names)
    assert res.card["architecture"]["kind"] == "unknown"
    assert OnnxRuntimeBackend().runtime_ops(tmp_path / "rn" / "model.onnx").get("QLinearConv") == 9
    with pytest.raises(ArtifactError, match="architecture="):
        load(tmp_path / "rn")
    rebuilt = load(tmp_path / "rn", architecture=SmallResNet(width=4, blocks=(1, 1, 1)))
    assert rebuilt.get_submodule("stem.0").out_channels == 2


# --- the deployability gate ----------------------------------------------------------------------------------

def _trial(values, number_attrs=None):
    return optuna.trial.create_trial(values=values, user_attrs={"accuracy": values[0], "latency_ms": values[1],
                                                                **(number_attrs or {})})


def test_front_leaves_off_undeployable_members_and_shows_what_they_hid():
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.add_trial(_trial([0.9, 1.0]))   # 0 dominates 1
    study.add_trial(_trial([0.8, 2.0]))   # 1
    study.add_trial(_trial([0.7, 0.5]))   # 2
    assert set(Front.from_study(study).front["trial"]) == {0, 2}
    study.set_user_attr(DEPLOY_ATTR.format(0), {"deployable": False, "deploy_error": "boom"})
    assert set(Front.from_study(study).front["trial"]) == {1, 2}
    study.add_trial(_trial([0.95, 0.1], {"deployable": False}))  # a trial can carry the mark itself
    assert set(Front.from_study(study).front["trial"]) == {1, 2}


def test_gate_marks_a_failing_member_not_deployable(tmp_path, digits_task, monkeypatch):
    real = gate_module.check_deployable
    failed = []

    def flaky(task, plan, *, seed=0, **kwargs):
        if not failed:
            failed.append(seed)  # the study's seed is 0: seed == trial number
            raise RuntimeError("simulated unsupported op")
        return real(task, plan, seed=seed, **kwargs)

    monkeypatch.setattr(gate_module, "check_deployable", flaky)
    loaded = load_study_config(write_study(tmp_path, n_trials=4, fidelity={"promotion": False, "self_check": 0}))
    outcome = run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    bad = failed[0]
    record = study.user_attrs[DEPLOY_ATTR.format(bad)]
    assert record["deployable"] is False and "simulated unsupported op" in record["deploy_error"]
    for front in (outcome.front, load_front(loaded.storage_url)):
        members = set(front.front["trial"])
        assert bad not in members and members
        assert all(study.user_attrs[DEPLOY_ATTR.format(n)]["deployable"] for n in members)


def test_gate_can_be_switched_off(tmp_path, digits_task):
    loaded = load_study_config(write_study(tmp_path, n_trials=2, deployability_gate=False,
                                           fidelity={"promotion": False, "self_check": 0}))
    run_study(loaded, progress=False, task=digits_task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    assert not [k for k in study.user_attrs if k.startswith("deploy:")]


# --- command line ------------------------------------------------------------------------------------------

def test_cli_export_verify_and_errors(tmp_path, digits_task, capsys):
    path = write_study(tmp_path, n_trials=3, fidelity={"promotion": False, "self_check": 0})
    run_study(load_study_config(path), progress=False, task=digits_task)
    out = tmp_path / "exported"
    capsys.readouterr()
    assert main(["export", str(path), "--pick", "accuracy >= 0", "--by", "size_bytes", "-o", str(out),
                 "--finetune", "none", "--rounds", "1"]) == 0
    printed = capsys.readouterr().out
    assert "speedup" in printed and "weights.bin" in printed
    card = json.loads((out / "model.json").read_text())
    front = load_front(load_study_config(path).storage_url)
    assert card["source"]["trial"] == int(front.pick("accuracy >= 0", by="size_bytes")["trial"])
    assert card["metrics"]["latency"]["predicted_ms"] == pytest.approx(
        float(front.trials.set_index("trial").loc[card["source"]["trial"], "latency_ms"]))
    assert main(["verify", str(out), "--rounds", "1", "--latency-tol", "100"]) == 0
    assert "agree with the card" in capsys.readouterr().out
    report = verify(out, task=digits_task, rounds=1, latency_tol=100)
    assert report.ok and any(r["what"] == "test accuracy (onnx)" and r["ok"] for r in report.rows)
    # timed against this version of the reference workload: verify compares the relative times too
    from autocompress.runtime.reference import REFERENCE_VERSION
    assert card["metrics"]["latency"]["reference_version"] == REFERENCE_VERSION
    assert any(r["what"] == "latency / reference (export)" for r in report.rows)
    # errors: existing folder, no match, bad format
    assert main(["export", str(path), "--trial", "0", "-o", str(out), "--finetune", "none"]) == 2
    assert "--force" in capsys.readouterr().err
    assert main(["export", str(path), "--pick", "accuracy > 2", "-o", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "no front member satisfies" in err and "closest" in err
    assert not (tmp_path / "x").exists()
    with pytest.raises(SystemExit):
        main(["export", str(path), "--trial", "0", "-o", str(tmp_path / "y"), "--format", "tflite"])
    # a tampered artifact fails verify with exit code 1
    (out / "plan.json").write_text((out / "plan.json").read_text() + " ")
    assert main(["verify", str(out)]) == 1
    assert "checksum mismatch" in capsys.readouterr().err


@pytest.mark.parametrize("cmd", [["export"], ["verify"]])
def test_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0
    assert "usage: autocompress" in capsys.readouterr().out


@pytest.mark.slow
def test_lenet5_export_runs_qlinearconv(tmp_path):
    from autocompress.tasks import load_task

    task = load_task("mnist-lenet5")
    plan = CompressionPlan(layers={n: LayerPlan(weight_bits=8, activation_bits=8)
                                   for n in ("features.0", "features.3", "classifier.1", "classifier.3")})
    res = export_plan(task, plan, tmp_path / "lenet", finetune=50, latency_cfg=FAST_LATENCY, rounds=2)
    ops = OnnxRuntimeBackend().runtime_ops(tmp_path / "lenet" / "model.onnx")
    assert ops.get("QLinearConv") == 2 and ops.get("QGemm", 0) >= 1
    acc = res.card["metrics"]["accuracy"]
    assert acc["onnx_test"] >= acc["teacher_test"] - 0.02 and acc["onnx_torch_agreement"] >= 0.98
