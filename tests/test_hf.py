"""Hugging Face transformers models from a local save_pretrained folder, through the whole pipeline."""

import json

import optuna
import pytest
import torch
from conftest import metric_rows_ok, run_complete, write_study

transformers = pytest.importorskip("transformers")

from autocompress.cli import main  # noqa: E402
from autocompress.errors import TaskError  # noqa: E402
from autocompress.export.artifact import export_from_study, verify  # noqa: E402
from autocompress.export.loader import load  # noqa: E402
from autocompress.front import load_front  # noqa: E402
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
    loaded, study, done = run_complete(path, 4)
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
    out = capsys.readouterr().out
    assert "4 completed trials" in out
    # embeddings and LayerNorm are left as they are, and said so
    left = study.user_attrs["left_alone"]
    assert len(left["Embedding"]) == 3 and len(left["LayerNorm"]) == 5, left
    assert "Embedding x3" in out and "LayerNorm x5" in out


@pytest.fixture(scope="module")
def lm_folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf-lm")
    torch.manual_seed(0)
    gpt2 = transformers.GPT2Config(vocab_size=200, n_positions=32, n_embd=32, n_layer=2, n_head=4, pad_token_id=0)
    transformers.GPT2LMHeadModel(gpt2).eval().save_pretrained(root / "gpt2-tiny")
    llama = transformers.LlamaConfig(vocab_size=200, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                     num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=32,
                                     pad_token_id=0)
    transformers.LlamaForCausalLM(llama).eval().save_pretrained(root / "llama-tiny")
    return root


def test_gpt2_conv1d_projections_become_equivalent_linears(lm_folders):
    from autocompress.tasks.hf import load_causal_lm

    model = load_causal_lm(lm_folders / "gpt2-tiny")
    raw = transformers.AutoModelForCausalLM.from_pretrained(lm_folders / "gpt2-tiny", attn_implementation="eager")
    names = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert len(names) == 2 * 4 + 1  # c_attn, c_proj, mlp.c_fc, mlp.c_proj per layer, lm_head
    ids = torch.randint(1, 200, (2, 16))
    mask = torch.ones_like(ids)
    with torch.no_grad():
        ref = raw(input_ids=ids, attention_mask=mask).logits
        assert torch.allclose(model(ids, mask), ref, atol=1e-5)


@pytest.mark.parametrize("kind", ["gpt2-tiny", "llama-tiny"])
def test_a_causal_lm_study_minimizes_perplexity_exports_and_verifies(lm_folders, tmp_path, kind):
    options = {"folder": str(lm_folders / kind), "data": "helpers_tasks:lm_splits"}
    path = write_study(tmp_path, task="hf-causal-lm", task_options=options, search_space=SPACE, n_trials=3,
                       sampler="random", fidelity={"promotion": False, "self_check": 0},
                       finetune={"steps": 5, "batch_size": 16})
    loaded, study, _ = run_complete(path, 3)
    assert study.metric_names[0] == "perplexity"
    assert study.directions[0] == optuna.study.StudyDirection.MINIMIZE
    teacher = study.user_attrs["teacher"]["accuracy"]
    assert 1.0 < teacher < 400  # a perplexity, near the vocabulary size for a random model
    front = load_front(loaded.storage_url)
    best = front.pick("perplexity > 0")
    assert best["perplexity"] == front.front["perplexity"].min()
    res = export_from_study(str(path), tmp_path / "out", pick="perplexity > 0", finetune="none")
    assert set(res.card["inputs"]) == {"input_ids", "attention_mask"}
    assert res.card["metric"]["name"] == "perplexity"
    assert metric_rows_ok(verify(tmp_path / "out", task=load_task("hf-causal-lm", options)))
    onnx_lm = load(tmp_path / "out", runtime="onnx", architecture=load_task("hf-causal-lm", options).model)
    for length in (8, 16):  # token ids have a dynamic sequence axis: the artifact runs at any length
        ids = torch.randint(1, 200, (2, length))
        with torch.no_grad():
            assert onnx_lm(input_ids=ids, attention_mask=torch.ones_like(ids)).shape == (2, length, 200)


def test_a_vit_image_classifier_study_runs_and_exports(tmp_path):
    cfg = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=32, num_hidden_layers=2,
                                 num_attention_heads=4, intermediate_size=64, num_labels=2)
    torch.manual_seed(0)
    folder = tmp_path / "vit-tiny"
    transformers.ViTForImageClassification(cfg).eval().save_pretrained(folder)
    options = {"folder": str(folder), "data": "helpers_tasks:image_splits"}
    path = write_study(tmp_path, task="hf-image-classifier", task_options=options, search_space=SPACE, n_trials=3,
                       sampler="random", fidelity={"promotion": False, "self_check": 0},
                       finetune={"steps": 5, "batch_size": 16})
    loaded, study, done = run_complete(path, 3)
    assert len(study.user_attrs["layers"]) == 1 + 2 * 6 + 1  # patch conv; q, k, v, o, fc1, fc2 per layer; classifier
    export_from_study(str(path), tmp_path / "out", trial=done[0].number, finetune="none", measure=False)
    onnx_model = load(tmp_path / "out", runtime="onnx", architecture=load_task("hf-image-classifier", options).model)
    with torch.no_grad():
        assert onnx_model(torch.rand(2, 3, 32, 32)).shape == (2, 2)


def test_student_depth_drops_transformer_layers_of_a_module_list(bert_folder, lm_folders, tmp_path):
    """Depth over the encoder's nn.ModuleList: the last layers become pass-throughs (names of the others kept), the
    model still runs, lowers to ONNX and is predicted; a study with depth in its space fails no trial."""
    from autocompress.compress import apply, bake
    from autocompress.compress.depth import SkipBlock
    from autocompress.plan import CompressionPlan, StudentPlan
    from autocompress.runtime import get_backend
    from autocompress.tasks.hf import load_causal_lm
    from autocompress.tasks.inputs import call

    model = load_sequence_classifier(bert_folder)
    ids = torch.randint(1, 200, (1, 16))
    cm = apply(model, CompressionPlan(student=StudentPlan(depth=0.5)), ids)
    layers = cm.model.model.bert.encoder.layer
    assert [type(m).__name__ for m in layers] == ["BertLayer", "SkipBlock"]
    lowered = get_backend("onnxruntime").lower(bake(cm), ids, [], tmp_path)
    assert lowered.artifact.is_file()
    lm = load_causal_lm(lm_folders / "llama-tiny")
    x = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    cm = apply(lm, CompressionPlan(student=StudentPlan(depth=0.5)), x)
    assert isinstance(cm.model.model.model.layers[1], SkipBlock)
    with torch.no_grad():
        assert call(cm.model, x).shape == (1, 16, 200)
    space = {**SPACE, "student": {"depth": [0.5, 1.0]}}
    path = write_study(tmp_path, task="hf-classifier",
                       task_options={"folder": str(bert_folder), "data": "helpers_tasks:token_splits"},
                       search_space=space, n_trials=4, sampler="random", warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, finetune={"steps": 5, "batch_size": 16})
    loaded, study, done = run_complete(path, 4)
    assert {t.params.get("student:depth") for t in done} >= {0.5}, [t.params for t in done]
