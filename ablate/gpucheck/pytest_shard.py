"""A pytest plugin for the GPU check (loaded with `-p ablate.gpucheck.pytest_shard`).

GPU_CHECK_RESULTS=FILE: one JSON line per finished test, appended as it finishes, so a run
killed at its time cap still says which tests passed, failed or were skipped (and, from the
"collected" line, how many never ran). GPU_CHECK_SHARD=i/k: run only every k-th selected test
from the i-th (0-based), so k pytest processes share the tests without pytest-xdist.
"""
import json
import os

import pytest


def _write(line: dict) -> None:
    path = os.environ.get("GPU_CHECK_RESULTS")
    if path:
        with open(path, "a") as f:  # one short line per write: concurrent shards do not interleave
            f.write(json.dumps(line) + "\n")


@pytest.hookimpl(trylast=True)  # after -m / -k have deselected theirs
def pytest_collection_modifyitems(config, items):
    shard = os.environ.get("GPU_CHECK_SHARD")
    if shard:
        i, k = map(int, shard.split("/"))
        config.hook.pytest_deselected(items=[t for n, t in enumerate(items) if n % k != i])
        items[:] = [t for n, t in enumerate(items) if n % k == i]
    _write({"collected": len(items), "shard": shard})


def pytest_runtest_logreport(report):
    if not (report.when == "call" or report.outcome != "passed"):
        return  # one line per test: its call, or the setup / teardown that failed or skipped it
    line = {"test": report.nodeid, "outcome": report.outcome, "when": report.when, "seconds": round(report.duration, 2)}
    if report.skipped and isinstance(report.longrepr, tuple):
        line["reason"] = report.longrepr[2]
    elif report.failed:
        line["error"] = (report.longreprtext.strip().splitlines() or [""])[-1][:300]
    _write(line)
