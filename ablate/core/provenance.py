"""Where a result came from: the git commit a run was planned and trained with."""
from __future__ import annotations

import subprocess
from pathlib import Path

ABLATE_DIR = Path(__file__).resolve().parents[1]  # the ablate package (its checkout, when editable)


def git_sha(cwd=None) -> str:
    """The commit of the git checkout at cwd (default: the current directory) + '-dirty' when
    tracked files changed; 'unknown' outside git."""
    try:
        run = dict(cwd=cwd, capture_output=True, text=True, timeout=5)
        sha = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], **run).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"
