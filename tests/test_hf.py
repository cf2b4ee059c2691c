"""Hugging Face transformers models from a local save_pretrained folder, through the whole pipeline."""

import json

import optuna
import pytest
import torch
from conftest import write_study

transformers = pytest.importorskip("transformers")

from autocompress.cli import main  # noqa: E402
from autocompress.config import load_study_config  # noqa: E402
from autocompress.errors import TaskError  # noqa: E402
from autocompress.export.artifact import export_from_study  # noqa: E402
from autocompress.export.loader import load  # noqa: E402
from autocompress.search.driver import run_study  # noqa: E402
from autocompress.tasks import load_task  # noqa: E402
from autocompress.tasks.hf import load_sequence_classifier  # noqa: E402

SPACE = {"version": 1, "groups": [{"name": "linear", "types": ["Linear"], "per_layer": False,
                                   "weight_bits": [4, 8], "activation_bits": [8, 32], "sparsity": [0.0, 0.5],
                                   "rank_ratio": [0.5, 1.0], "nm": ["dense", "2:4"]}]}


@pytest.fixture(scope="module")
def bert_folder(tmp_path_factory):
    cfg = transformers.BertConfig(vocab_size=200, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=32, num_labels=2, pad_token_id=0)
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("hf") / "bert-tiny"
    transformers.BertForSequenceClassification(cfg).eval().save_pretrained(folder)
    return folder


def test_a_saved_encoder_classifier_loads_offline_and_runs_on_token_ids(bert_folder):
    assert any(bert_folder.glob("*.safetensors"))
    model = load_sequence_classifier(bert_folder)
    ids = torch.randint(1, 200, (3, 16))
    with torch.no_grad():
        assert model(ids).shape == (3, 2)


def test_folders_that_need_custom_code_or_are_not_models_are_refused(bert_folder, tmp_path):
    with pytest.raises(TaskError, match="no config.json"):
        load_sequence_classifier(tmp_path)
    custom = tmp_path / "custom"
    custom.mkdir()
    config = json.loads((bert_folder / "config.json").read_text())
    (custom / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModel": "modeling_x.X"}}))
    with pytest.raises(TaskError, match="trust_remote_code off"):
        load_sequence_classifier(custom)


def test_study_on_a_hf_encoder_measures_exports_and_runs_the_int64_artifact(bert_folder, tmp_path, capsys):
    path = write_study(tmp_path, task="hf-classifier",
                       task_options={"folder": str(bert_folder), "data": "helpers_tasks:token_splits"},
                       search_space=SPACE, n_trials=4, sampler="random", warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, finetune={"steps": 10, "batch_size": 16})
    loaded = load_study_config(path)
    run_study(loaded, progress=False)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == 4, [t.user_attrs.get("error") for t in study.trials]
    layers = study.user_attrs["layers"]
    assert len(layers) == 14  # q, k, v, out, intermediate, output per layer, pooler, classifier
    for t in done:  # 8-bit inputs: every Linear (attention projections included) ran int8 kernels
        kernels = t.user_attrs["kernels"]
        if t.params.get("linear:activation_bits", 32) == 8:
            assert kernels["int8"] and not kernels["float"], kernels
    assert any(t.params.get("linear:activation_bits") == 8 for t in done)
    trial = done[0]
    export_from_study(str(path), tmp_path / "out", trial=trial.number, finetune="none", measure=False)
    onnx_model = load(tmp_path / "out", runtime="onnx", architecture=load_task(
        "hf-classifier", {"folder": str(bert_folder), "data": "helpers_tasks:token_splits"}).model)
    ids = torch.randint(1, 200, (4, 16))
    with torch.no_grad():
        assert onnx_model(ids).shape == (4, 2)
    assert main(["front", str(path)]) == 0
    assert "4 completed trials" in capsys.readouterr().out
