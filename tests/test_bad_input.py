"""Bad input, end to end through the command line: every case exits non-zero with a clear one-paragraph error
(no traceback) and leaves nothing half-written (no study folder, no database, no lock file)."""

import json
import pickle
import socket
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch
import yaml
from conftest import ROOT, write_study
from torch import nn
from torch.utils.data import TensorDataset

from autocompress import Task
from autocompress.cli import main

SMALL = str(ROOT / "search_spaces" / "small.yaml")


def _closed_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _space(**group):
    return {"version": 1, "groups": [{"name": "g", "types": ["Linear"], **group}]}


@dataclass
class Case:
    """``config``: overrides for a valid study (a tiny user task) or raw YAML text; ``args``: extra CLI args
    (``{config}`` stands for the config path); ``words``: what the error must say."""

    id: str
    words: list[str]
    config: dict | str | None = field(default_factory=dict)
    args: list[str] = field(default_factory=list)
    command: str = "search"
    code: int = 2


CASES = [
    # malformed files
    Case("malformed-yaml", ["malformed YAML", "line"], config="task: [unclosed\n"),
    Case("top-level-list", ["mapping"], config="- a\n- b\n"),
    Case("empty-file", ["mapping"], config=""),
    Case("config-missing", ["file not found", "none.yaml"], config=None),
    Case("space-file-missing", ["search_space", "missing.yaml", "not found"], {"search_space": "missing.yaml"}),
    Case("space-file-malformed", ["malformed YAML", "space.yaml"], {"search_space": "space.yaml"}),
    # unknown keys
    Case("unknown-top-key", ["tasks", "unknown key"], {"tasks": "digits-mlp"}),
    Case("unknown-nested-key", ["finetune.stepz", "unknown key"], {"finetune": {"stepz": 5}}),
    Case("unknown-group-key", ["density", "unknown key"], {"search_space": _space(density=[0.5])}),
    # out of range
    Case("sparsity-too-high", ["sparsity", "1.5", "[0, 1)"], {"search_space": _space(sparsity=[1.5])}),
    Case("sparsity-negative", ["sparsity", "-0.1"], {"search_space": _space(sparsity=[-0.1])}),
    Case("weight-bits-9", ["weight_bits", "9", "32"], {"search_space": _space(weight_bits=[9])}),
    Case("activation-bits-4", ["activation_bits", "4", "[8, 16, 32]"], {"search_space": _space(activation_bits=[4])}),
    Case("channel-keep-zero", ["channel_keep", "(0, 1]"], {"search_space": _space(channel_keep=[0.0])}),
    Case("rank-ratio-above-one", ["rank_ratio", "1.2"], {"search_space": _space(rank_ratio=[1.2])}),
    Case("min-accuracy-above-one", ["min_accuracy", "1.5"], {"constraints": {"min_accuracy": 1.5}}),
    Case("trial-timeout-zero", ["trial_timeout_s", "0"], {"trial_timeout_s": 0}),
    Case("heartbeat-zero", ["heartbeat_s", "0"], {"heartbeat_s": 0}),
    # empty or wrong choices
    Case("empty-choices", ["sparsity", "at least one"], {"search_space": _space(sparsity=[])}),
    Case("no-groups", ["groups", "at least one"], {"search_space": {"version": 1, "groups": []}}),
    Case("bad-regex", ["names", "regular expression"], {"search_space": _space(names="(")}),
    Case("unknown-sampler", ["sampler", "'grid'"], {"sampler": "grid"}),
    Case("zero-trials", ["n_trials", "0"], {"n_trials": 0}),
    Case("no-budget", ["n_trials", "timeout_s"], {"n_trials": None}),
    Case("unknown-objective", ["objectives", "flops"], {"objectives": {"flops": "minimize"}}),
    Case("wrong-direction", ["objectives", "maximize"], {"objectives": {"accuracy": "minimize"}}),
    # tasks
    Case("missing-task", ["task", "Field required"], config=f"search_space: {SMALL}\nn_trials: 2\n"),
    Case("unknown-builtin-task", ["unknown task", "mnist-vgg", "digits-mlp"], {"task": "mnist-vgg"}),
    Case("task-module-missing", ["cannot import module", "no_such_pkg"], {"task": "no_such_pkg.tasks:build"}),
    Case("task-function-missing", ["no callable", "nope"], {"task": "helpers_tasks:nope"}),
    Case("task-raises", ["raised RuntimeError", "dataset missing on purpose"], {"task": "helpers_tasks:raises"}),
    Case("task-wrong-type", ["must return", "int"], {"task": "helpers_tasks:wrong_type"}),
    Case("no-compressible-layer", ["nothing to compress", "no Conv/Linear"],
         {"task": "helpers_tasks:no_compressible_layer"}),
    Case("teacher-rejects-its-input", ["'rejects'", "does not run on its own example input", "(1, 5)"],
         {"task": "helpers_tasks:rejects_its_input"}),
    Case("empty-validation-split", ["'empty-val'", "val split is empty"], {"task": "helpers_tasks:empty_validation"}),
    Case("nan-teacher", ["'tiny'", "not finite"], {"task": "helpers_tasks:nan_teacher"}),
    Case("nan-metric", ["'nan-metric'", "metric on the validation split is nan"], {"task": "helpers_tasks:nan_metric"}),
    Case("unknown-latency-backend", ["latency.backend", "'tvm'", "onnxruntime"], {"latency": {"backend": "tvm"}}),
    Case("no-group-selects-a-layer", ["nothing to compress", "Linear"],
         {"search_space": _space(types=["Conv2d"])}),
    # storage
    Case("storage-not-a-url", ["storage", "not a url"], {"storage": "not a url"}),
    Case("storage-unknown-database", ["storage", "foo"], {"storage": "foo://bar"}),
    Case("storage-postgres-unreachable", ["storage", "Connection refused", "bad.yaml"],
         {"storage": "postgresql://autocompress@127.0.0.1:{port}/x"}),
    Case("storage-sqlite-unwritable", ["storage", "unable to open database file"],
         {"storage": "sqlite:///{tmp}/a-file/study.db"}),
    # command-line flags
    Case("flag-storage-not-a-url", ["--storage", "nope"], args=["--storage", "nope"]),
    Case("flag-zero-trials", ["--n-trials", "0"], args=["--n-trials", "0"]),
    Case("ray-address-unreachable", ["--address", "cannot reach", "127.0.0.1"],
         args=["--backend", "ray", "--address", "127.0.0.1:{port}"]),
    Case("ray-address-malformed", ["--address", "HOST:PORT"], args=["--backend", "ray", "--address", "nonsense"]),
    Case("address-without-ray", ["--address", "--backend ray"], args=["--address", "auto"]),
    Case("ray-zero-cpus", ["--trial-cpus", "0"], args=["--backend", "ray", "--trial-cpus", "0"]),
    # latency profiles (JSON; never unpickled)
    Case("corrupt-profile", ["latency.predictor", "corrupt latency profile", "not valid JSON"],
         {"latency": {"predictor": "{tmp}/corrupt.json"}}),
    Case("not-a-profile", ["latency.predictor", "not a latency profile"],
         {"latency": {"predictor": "{tmp}/wrong-type.json"}}),
    Case("profile-missing", ["latency.predictor", "not found"], {"latency": {"predictor": "{tmp}/none.json"}}),
    Case("show-corrupt-profile", ["corrupt latency profile"], config=None, command="profile",
         args=["--show", "{tmp}/corrupt.json"]),
    # reading results
    Case("front-of-nothing", ["not a study config"], config=None, command="front", args=["{tmp}/nowhere"]),
    Case("front-of-missing-database", ["no study database"], config=None, command="front",
         args=["sqlite:///{tmp}/none/study.db"]),
]


def _format(value, **kw):
    if isinstance(value, str):
        return value.format(**kw)
    if isinstance(value, dict):
        return {k: _format(v, **kw) for k, v in value.items()}
    if isinstance(value, list):
        return [_format(v, **kw) for v in value]
    return value


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")}


def test_battery_is_large_enough():
    assert len(CASES) >= 30 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path, capsys):
    kw = {"tmp": tmp_path, "port": _closed_port()}
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "space.yaml").write_text("groups: [\n")
    (tmp_path / "corrupt.json").write_text('{"type": "LatencyProfile", "version": 1, "data": {')
    (tmp_path / "wrong-type.json").write_text('{"type": "Nope", "version": 1, "data": {}}')
    config = tmp_path / "bad.yaml"
    if isinstance(case.config, str):
        config.write_text(case.config)
    elif case.config is None:
        config = tmp_path / "none.yaml"
    else:
        overrides = {"task": "helpers_tasks:tiny", "search_space": SMALL, **_format(case.config, **kw)}
        write_study(tmp_path, file="bad", **overrides)
    before = _files(tmp_path)
    argv = [case.command] + ([str(config)] if case.command == "search" else []) + _format(case.args, **kw)
    if case.command == "search":
        argv.append("--no-progress")
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == case.code, err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert "\n\n" not in err and len(err.splitlines()) <= 3, f"not one paragraph: {err!r}"
    for word in case.words:
        assert word in err, f"{word!r} not in {err!r}"
    assert _files(tmp_path) == before, "something was written"


def test_unknown_task_option_for_a_builtin_task(tmp_path, capsys):
    path = write_study(tmp_path, file="bad", task="digits-mlp", task_options={"hidden": 128})
    assert main(["search", str(path), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "hidden" in err and "digits-mlp" in err and "Traceback" not in err


# --- a corrupt (or malicious) teacher cache: retrained, never unpickled ------------------------------------------


def _tiny_splits():
    from autocompress.tasks.data import Splits

    g = torch.Generator().manual_seed(0)
    x = torch.randn(96, 8, generator=g)
    y = (x[:, 0] > 0).long()
    return Splits(train=TensorDataset(x[:64], y[:64]), val=TensorDataset(x[64:80], y[64:80]),
                  test=TensorDataset(x[80:], y[80:]))


def cached_tiny() -> Task:
    """A user task whose teacher goes through the built-in teacher cache (used as ``test_bad_input:cached_tiny``)."""
    from autocompress.tasks.builtin import cached_teacher

    splits = _tiny_splits()
    model = cached_teacher("bad-input-tiny", lambda: nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)),
                           splits, epochs=2)
    return Task(name="cached-tiny", model=model, example_input=splits.train[0][0].unsqueeze(0), train=splits.train,
                val=splits.val, test=splits.test)


class _Payload:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("corruption", ["garbage", "pickle-with-matching-checksum", "bad-metadata"])
def test_corrupt_teacher_cache_is_retrained_never_unpickled(tmp_path, monkeypatch, caplog, corruption):
    cache = tmp_path / "cache"
    monkeypatch.setenv("AUTOCOMPRESS_CACHE", str(cache))
    path = write_study(tmp_path, task="test_bad_input:cached_tiny", n_trials=1, warm_start=False,
                       fidelity={"promotion": False, "self_check": 0}, deployability_gate=False)
    assert main(["search", str(path), "--no-progress"]) == 0
    weights, meta = cache / "teachers" / "bad-input-tiny.pt", cache / "teachers" / "bad-input-tiny.json"
    marker = tmp_path / "payload-ran"
    if corruption == "garbage":
        weights.write_bytes(b"\x00not a checkpoint" * 10)
    elif corruption == "bad-metadata":
        meta.write_text("{ not json")
    else:
        weights.write_bytes(pickle.dumps(_Payload(marker)))
        import hashlib

        info = json.loads(meta.read_text())
        info["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        meta.write_text(json.dumps(info))
    caplog.clear()
    assert main(["search", str(path), "--n-trials", "2", "--no-progress"]) == 0
    assert not marker.exists(), "the cached file was unpickled"
    assert any("is unusable" in r.getMessage() and "retraining" in r.getMessage() for r in caplog.records)
    torch.load(weights, weights_only=True)  # the cache was rewritten with a good checkpoint
    assert json.loads(meta.read_text())["format"] == 1
    assert yaml.safe_load(path.read_text())["task"] == "test_bad_input:cached_tiny"
