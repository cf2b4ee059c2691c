"""The README's bring-your-own-model examples run as written (with fewer trials)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


def test_python_example_searches_and_exports_a_plain_pytorch_model(tmp_path):
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "byom_python.py"), "--trials", "3",
                          "--folder", str(tmp_path), "--export-finetune", "search"],
                         cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "exported trial" in out.stdout
    assert (tmp_path / "byom-digits-export" / "model.onnx").is_file()


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    pytest.importorskip("transformers")
    sys.path.insert(0, str(ROOT / "examples" / "hf"))
    try:
        import make_models
    finally:
        sys.path.pop(0)
    folder = tmp_path_factory.mktemp("hf-examples")
    make_models.build(folder, steps=10)
    return folder


@pytest.mark.parametrize("config", ["causal_lm.yaml", "classifier.yaml"])
def test_hugging_face_configs_run_on_save_pretrained_folders(tmp_path, models, config):
    cfg = yaml.safe_load((ROOT / "examples" / "hf" / config).read_text())
    cfg["task_options"]["folder"] = str(models / Path(cfg["task_options"]["folder"]).name)
    cfg.update(n_trials=2, finetune={"steps": 5, "batch_size": 16}, fidelity={"promotion": False, "self_check": 0},
               latency={"warmup": 2, "repeats": 5}, constraints={})
    path = tmp_path / config
    path.write_text(yaml.safe_dump(cfg))
    # the console script, as a user runs it (the current directory is not on its sys.path by itself)
    cli = str(Path(sys.executable).parent / "autocompress")
    out = subprocess.run([cli, "search", str(path), "--no-progress"], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    front = subprocess.run([sys.executable, "-m", "autocompress", "front", str(path)], cwd=ROOT,
                           capture_output=True, text=True, timeout=300)
    assert front.returncode == 0, front.stderr[-2000:]
    metric = "perplexity" if config == "causal_lm.yaml" else "accuracy"
    assert f"teacher: {metric}" in front.stdout
