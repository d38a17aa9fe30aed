"""Local processes: is a job's process alive, what is its view, and stopping it for good.

Local and debug jobs are processes on this machine; their status.json records the pid of the
process that owns the cell (the submitit controller's, or the runner's while the cell waits for
a slot), and these helpers answer for them what squeue answers for Slurm jobs.
"""
from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path

from ablate.launch.executor import JobView


def pid_alive(pid) -> bool:
    """A live process of ours: exists, not a zombie, and a Python program (guards against pid reuse)."""
    try:
        pid = int(pid)
        os.kill(pid, 0)
    except (TypeError, ValueError, ProcessLookupError):
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                return False
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"python" in f.read()
    except OSError:
        return True  # no /proc: trust kill(0)


def local_view(status: dict) -> JobView | None:
    """Local / debug jobs: the process that owns the cell (its job, or the runner before it starts)."""
    job_id, owner = status.get("job_id"), status.get("runner_pid")
    pid = job_id if job_id and str(job_id).isdigit() else None
    if pid is None and owner is None:
        return None
    if status.get("host") not in (None, socket.gethostname()):
        recent = time.time() - float(status.get("heartbeat") or status.get("updated") or 0) < 600
        return JobView(str(job_id or owner), "OTHER HOST", True if recent else False, status.get("host", ""))
    if pid is not None and pid_alive(pid):
        return JobView(str(pid), "ALIVE", True)
    if status.get("state") == "queued" and not job_id and owner is not None and pid_alive(owner):
        return JobView(f"runner {owner}", "WAITING", True, "waiting for a free slot")
    return JobView(str(job_id or owner), "GONE", False)


def stop_or_kill(jobs: list[tuple[str, int]], grace_s: float, echo) -> list[str]:
    """Wait up to grace_s for signalled local jobs to exit; SIGKILL the process tree of the rest."""
    deadline, told = time.time() + grace_s, False
    alive = list(jobs)
    while alive and time.time() < deadline:
        alive = [(rid, pid) for rid, pid in alive if pid_alive(pid)]
        if alive and not told and time.time() > deadline - grace_s + 1:
            echo(f"waiting up to {grace_s:.0f}s for {len(alive)} job(s) to finish a step and save a checkpoint...")
            told = True
        time.sleep(0.2)
    out = []
    for rid, pid in alive:
        if pid_alive(pid):
            for p in [*_descendants(pid), pid]:  # the trainer runs in a child of the submitit controller
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            out.append(f"{rid}: job {pid} was still running {grace_s:.0f}s after SIGTERM (a long step): killed "
                       "(SIGKILL); it resumes from its last checkpoint")
    return out


def _descendants(pid: int) -> list[int]:
    """Every process below pid, deepest first (Linux /proc; none elsewhere)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").glob("[0-9]*"):
        try:
            stat = (entry / "stat").read_text()
            children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    out, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            out.append(child)
            todo.append(child)
    return out[::-1]
