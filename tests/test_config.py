"""Config loading: valid files load, and every error names the file, the field and the bad value."""

from pathlib import Path

import pytest
import yaml
from conftest import ROOT, write_study

from autocompress.cli import main
from autocompress.config import load_search_space, load_study_config
from autocompress.errors import ConfigError


@pytest.mark.parametrize("path", sorted((ROOT / "studies").glob("*.yaml")))
def test_shipped_studies_validate(path):
    loaded = load_study_config(path)
    assert loaded.study_dir == (path.parent / path.stem).resolve()
    assert loaded.storage_url.startswith("sqlite:///")


@pytest.mark.parametrize("path", sorted((ROOT / "search_spaces").glob("*.yaml")))
def test_shipped_spaces_validate(path):
    assert load_search_space(path).groups


def _space(**group):
    base = {"name": "g", "types": ["Linear"]}
    base.update(group)
    return {"version": 1, "groups": [base]}


BAD_STUDIES = [
    # (overrides, words that must appear in the message)
    ({"sampler": "grid"}, ["sampler", "'grid'"]),
    ({"sampler": "tpe", "population_size": 8}, ["population_size", "nsga2", "tpe"]),
    ({"n_trials": 0}, ["n_trials", "0"]),
    ({"n_trials": None}, ["n_trials", "timeout_s"]),
    ({"objectives": {"latency_ms": "maximize"}}, ["objectives", "minimize"]),
    ({"objectives": {"flops": "minimize", "accuracy": "maximize"}}, ["objectives", "flops", "only one"]),
    ({"objectives": {}}, ["objectives"]),
    ({"constraints": {"min_accuracy": 1.5}}, ["constraints.min_accuracy", "1.5"]),
    ({"constraints": {"max_latency": 2}}, ["constraints.max_latency", "unknown key"]),
    ({"finetune": {"steps": -1}}, ["finetune.steps", "-1"]),
    ({"latency": {"threads": 0}}, ["latency.threads", "0"]),
    ({"latency": {"repeats": 1}}, ["latency.repeats", "1"]),
    ({"tasks": "digits-mlp"}, ["tasks", "unknown key"]),
    ({"name": "has space"}, ["name", "has space"]),
    ({"search_space": "missing.yaml"}, ["search_space", "missing.yaml", "not found"]),
    ({"storage": "not a url"}, ["storage", "not a url"]),
    ({"search_space": _space(sparsity=[1.5])}, ["search_space.groups[0].sparsity", "1.5", "[0, 1)"]),
    ({"search_space": _space(sparsity=[])}, ["search_space.groups[0].sparsity", "at least one"]),
    ({"search_space": _space(weight_bits=[9])}, ["search_space.groups[0].weight_bits", "9", "32"]),
    ({"search_space": _space(activation_bits=[4])}, ["activation_bits", "4", "[8, 16, 32]"]),
    ({"search_space": _space(channel_keep=[0.0])}, ["channel_keep", "(0, 1]"]),
    ({"search_space": _space(rank_ratio=[1.2])}, ["rank_ratio", "1.2"]),
    ({"search_space": _space(types=["LSTM"])}, ["types", "LSTM"]),
    ({"search_space": _space(names="(")}, ["names", "regular expression"]),
    ({"search_space": _space(density=[0.5])}, ["density", "unknown key"]),
    ({"search_space": {"version": 2, "groups": []}}, ["version", "2"]),
    ({"search_space": {"groups": [{"name": "a"}, {"name": "a"}]}}, ["groups", "unique"]),
    ({"search_space": {"groups": [{"name": "a"}], "student": {"width": [0]}}}, ["student.width", "(0, 1]"]),
    ({"search_space": {"groups": [{"name": "a"}], "distill": {"alpha": [2]}}}, ["distill.alpha", "[0, 1]"]),
]


@pytest.mark.parametrize("overrides,words", BAD_STUDIES, ids=[str(i) for i in range(len(BAD_STUDIES))])
def test_bad_study_config_names_file_field_value(tmp_path, overrides, words):
    path = write_study(tmp_path, **overrides)
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    msg = str(info.value)
    assert str(path) in msg
    for w in words:
        assert w in msg, f"{w!r} not in {msg!r}"


def test_missing_task_field(tmp_path):
    path = tmp_path / "a.yaml"
    path.write_text(yaml.safe_dump({"search_space": str(ROOT / "search_spaces/small.yaml")}))
    with pytest.raises(ConfigError, match=r"field `task`: Field required"):
        load_study_config(path)


@pytest.mark.parametrize("text,words", [
    ("task: [unclosed\n", ["malformed YAML", "line"]),
    ("- a\n- b\n", ["mapping"]),
    ("", ["mapping"]),
])
def test_malformed_yaml(tmp_path, text, words):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_study_config(path)
    for w in words:
        assert w in str(info.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="file not found"):
        load_study_config(Path("no/such/study.yaml"))


def test_validate_cli_exit_code_and_writes_nothing(tmp_path, capsys):
    good = write_study(tmp_path, file="good")
    assert main(["validate", str(good)]) == 0
    bad = write_study(tmp_path, file="bad", sampler="grid")
    assert main(["validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "bad.yaml" in err and "sampler" in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml", "good.yaml"]


def test_search_with_bad_config_exits_2_and_writes_nothing(tmp_path, capsys):
    bad = write_study(tmp_path, file="bad", search_space={"groups": [{"name": "g", "sparsity": [7]}]})
    assert main(["search", str(bad), "--no-progress"]) == 2
    assert not (tmp_path / "bad").exists()
