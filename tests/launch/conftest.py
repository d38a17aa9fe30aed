"""Fixtures for the launch tests. The root conftest points ABLATE_RUNS_DIR / ABLATE_DATA_DIR at
the test's tmp_path; Slurm jobs inherit that environment from sbatch and see the same files
(single node)."""
import pytest

from launch_helpers import write_grid


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    # jobs started here (debug executor, local runner) use one intra-op thread unless told otherwise
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture
def grid_file(tmp_path):
    """grid_file(name=..., grid=..., steps=..., resources=...) -> a tiny grid YAML."""
    def make(**kw):
        return write_grid(tmp_path, **kw)
    return make
