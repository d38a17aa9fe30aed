import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def isolated_dirs(tmp_path, monkeypatch):
    """Every test gets its own runs/, reports/ and data/ so nothing touches the checkout, and its
    own machine slots (a test's cells never wait for another process's jobs on this machine)."""
    monkeypatch.setenv("ABLATE_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("ABLATE_SLOTS_DIR", str(tmp_path / "slots"))
    monkeypatch.setenv("ABLATE_REPORTS_DIR", str(tmp_path / "reports"))
    monkeypatch.setenv("ABLATE_DATA_DIR", str(tmp_path / "data"))
    yield


def ablate_cli(*args, cwd=None, env=None, timeout=600):
    """Run the real console entry point in a subprocess; returns CompletedProcess."""
    import subprocess

    full_env = {**os.environ, **(env or {})}
    return subprocess.run([sys.executable, "-m", "ablate.cli", *map(str, args)], cwd=cwd or ROOT,
                          env=full_env, capture_output=True, text=True, timeout=timeout)


def write_text_grid(tmp_path: Path, template: str, name: str, repeat: int = 400) -> Path:
    """tmp_path/name from `template` (a grid whose data is 'text:{text}') over a small English
    corpus written beside it: the char-level data the CLI tests train on."""
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * repeat)
    path = tmp_path / name
    path.write_text(template.format(text=text))
    return path
