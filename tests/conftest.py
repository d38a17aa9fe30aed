import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own runs/, reports/ and data/ so nothing touches the checkout."""
    monkeypatch.setenv("ABLATE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ABLATE_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "data"))
    yield


def ablate_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ablate.cli", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)
