import os
import tempfile
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Teachers trained by tests go to a private cache, never the user's.
os.environ.setdefault("AUTOCOMPRESS_CACHE", tempfile.mkdtemp(prefix="autocompress-test-cache-"))
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def digits_task():
    from autocompress.tasks import load_task

    return load_task("digits-mlp")


def write_study(tmp_path: Path, file: str = "s", **overrides) -> Path:
    """A small digits study config in tmp_path (results in tmp_path/<file>/)."""
    import yaml

    cfg = {
        "task": "digits-mlp",
        "search_space": str(ROOT / "search_spaces" / "small.yaml"),
        "n_trials": 3,
        "sampler": "random",
        "finetune": {"steps": 10},
        "latency": {"measure": True, "warmup": 2, "repeats": 5},  # never a profile another test left behind
    }
    cfg.update(overrides)
    path = tmp_path / f"{file}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def run_complete(path: Path, n: int, task=None):
    """Run the study of config ``path`` (with ``task`` when given) and check that all ``n`` trials completed;
    returns ``(loaded, study, completed trials)``."""
    import optuna

    from autocompress.config import load_study_config
    from autocompress.search.driver import run_study

    loaded = load_study_config(path)
    run_study(loaded, progress=False, task=task)
    study = optuna.load_study(study_name=loaded.study_name, storage=loaded.storage_url)
    done = study.get_trials(states=[optuna.trial.TrialState.COMPLETE])
    assert len(done) == n, [t.user_attrs.get("error") for t in study.trials]
    return loaded, study, done


def metric_rows_ok(report) -> bool:
    """Every metric row of a verify report holds (there is at least one). Latency rows of these sub-0.1 ms test
    models move by more than verify's tolerance when this shared machine is busy: they are left to test_export."""
    rows = [r for r in report.rows if "latency" not in r["what"] and "speedup" not in r["what"]
            and r["ok"] is not None]  # None: nothing to compare (no test split)
    return bool(rows) and all(r["ok"] for r in rows)
