"""Fixtures for the trainer tests: a tiny, learnable character corpus and run dirs that use it.

The root conftest already points ABLATE_DATA_DIR / ABLATE_RUNS_DIR at the test's tmp_path."""
from pathlib import Path

import pytest

from ablate.core import rundir
from train_helpers import TINY, make_corpus


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """One intra-op thread, here and in the subprocesses the tests start: on these small VMs a
    second OpenMP thread makes tiny matmuls ~100x slower (wake-up latency), and equal thread
    counts keep in-process and subprocess runs bitwise comparable."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    yield
    torch.set_num_threads(before)


@pytest.fixture
def corpus(tmp_path) -> Path:
    return make_corpus(tmp_path / "corpus.txt")


@pytest.fixture
def make_run(tmp_path, corpus):
    """make_run(name, **overrides) -> run dir holding config.json, as `ablate submit` writes it."""
    def make(name="run", arch="gpt", **overrides):
        run_dir = tmp_path / "runs" / name
        run_dir.mkdir(parents=True, exist_ok=True)
        lr = 3e-3 if arch == "gpt" else 1e-2
        config = {**TINY, "arch": arch, "lr": lr, "dataset": f"text:{corpus}", **overrides}
        rundir.write_json_atomic(run_dir / rundir.CONFIG, {"config": config, "grid": "test", "run_id": name})
        return run_dir
    return make
