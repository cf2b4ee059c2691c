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
