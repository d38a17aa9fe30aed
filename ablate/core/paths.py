"""Where ablate keeps things: one function per root, each overridable by an environment variable.

    runs_root()     $ABLATE_RUNS_DIR, default ./runs        run dirs, the store, the simulation cache
    reports_root()  $ABLATE_REPORTS_DIR, default ./reports  one folder per grid
    data_root()     $ABLATE_DATA_DIR, default ./data        prepared data sets
    cache_root()    $ABLATE_CACHE_DIR, default ~/.cache/ablate   the report's JavaScript bundle

Read at each call, never at import: tests and jobs set them per process.
"""
from __future__ import annotations

import os
from pathlib import Path


def runs_root() -> Path:
    return Path(os.environ.get("ABLATE_RUNS_DIR", "runs"))


def reports_root() -> Path:
    return Path(os.environ.get("ABLATE_REPORTS_DIR", "reports"))


def data_root() -> Path:
    return Path(os.environ.get("ABLATE_DATA_DIR", "data"))


def cache_root() -> Path:
    return Path(os.environ.get("ABLATE_CACHE_DIR") or Path.home() / ".cache" / "ablate")
