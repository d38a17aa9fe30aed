"""The run directory: the only contract between a job and the rest of ablate.

    runs/<grid>/<run_id>/
        config.json    resolved RunConfig + grid, run_id, ablate version, git sha
        status.json    state, attempts, executor + job id, host, device, times, heartbeat, error
        metrics.jsonl  one line per logged train step (appended, flushed)
        evals.jsonl    one line per eval (appended, flushed)
        summary.json   params, bytes, memory, throughput, final loss (written at the end)
        ckpt.pt        model + optimizer + RNG + data position + step (replaced atomically)

JSON files are written to a temp file and renamed, so a reader never sees half a file; a
torn last line of a .jsonl (a job killed mid-write) is skipped by `read_jsonl`.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import tempfile
import time
from pathlib import Path

STATES = ("pending", "queued", "running", "done", "failed", "diverged", "oom", "cancelled")
TERMINAL = ("done", "failed", "diverged", "oom", "cancelled")
RETRYABLE = ("failed", "diverged", "oom", "cancelled")

CONFIG, STATUS, METRICS, EVALS, SUMMARY, CKPT = (
    "config.json", "status.json", "metrics.jsonl", "evals.jsonl", "summary.json", "ckpt.pt")
STATUS_LOCK = ".status.lock"


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on any error
    delete it. Readers see the old file or the whole new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def read_json(path, default=None):
    try:
        with open(path) as f:
            return json.load(f)
    except FileNotFoundError:
        return default
    except json.JSONDecodeError:
        return default


def append_jsonl(path, record: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record, default=float) + "\n")
        f.flush()


def read_jsonl(path) -> list[dict]:
    """All complete records; a torn or garbled line (a job killed mid-write) is skipped."""
    out = []
    try:
        with open(path) as f:
            for line in f:
                if not line.endswith("\n"):
                    break  # torn last line: the writer was interrupted
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
    except FileNotFoundError:
        pass
    return out


def truncate_jsonl_after(path, key: str, last: int) -> None:
    """Drop records with record[key] > last (and any torn tail): used on resume so that the
    steps replayed after a checkpoint are not logged twice."""
    keep = [r for r in read_jsonl(path) if r.get(key, -1) <= last]
    if not Path(path).exists():
        return
    with atomic_file(path) as f:
        for r in keep:
            f.write(json.dumps(r, default=float) + "\n")


def read_status(run_dir) -> dict:
    return read_json(Path(run_dir) / STATUS, default={}) or {}


def update_status(run_dir, **fields) -> dict:
    """Merge fields into status.json (atomic). Returns the new status. The read-modify-write holds
    an advisory lock: the trainer's heartbeat and `ablate cancel` / submit write the same file, and
    neither may write back a state the other has just replaced."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / STATUS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read_status(run_dir)
        status.update(fields)
        status.setdefault("host", socket.gethostname())
        status["updated"] = time.time()
        write_json_atomic(run_dir / STATUS, status)
    return status


def state_of(run_dir) -> str:
    """'new' when there is no run dir / status, else the recorded state."""
    status = read_status(run_dir)
    return status.get("state", "new") if status else "new"
