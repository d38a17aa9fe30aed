"""The state a cell is really in: its status.json, corrected by what its executor's scheduler says.

status.json is written by the job; a job that is killed hard (node failure, out of host memory,
SIGKILL after the time limit, a local process killed) never writes its final state. So every
decision that matters (`submit` never duplicating, `status`, `cancel`, `--wait`) goes through
`reconcile`, which asks each executor once about all of its cells (executor.views: squeue and
sacct for Slurm, the local pids for local and debug jobs).

A job that ended while its status.json still says queued / running is shown (and recorded,
by `record_lost`) as failed with the scheduler's state; one that was preempted and not requeued
stays "pending": the next submit resumes it from its checkpoint.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass

from ablate.core import rundir
from ablate.launch.executor import Executor, JobView
from ablate.launch.executors import EXECUTORS, executor

WORKING = ("queued", "running")  # file states that a live job owns


@dataclass(frozen=True)
class CellState:
    """A cell as `reconcile` sees it: the recorded status and the effective state."""
    run_id: str
    run_dir: object
    status: dict
    state: str                    # effective state: a rundir state, or "new"
    job: JobView | None
    note: str = ""

    @property
    def active(self) -> bool:
        """Owned by a live (or unreachable) job: never submit it again."""
        return self.job is not None and self.job.active is not False


def effective_state(status: dict, job: JobView | None, ex: Executor | None) -> tuple[str, str]:
    """(state, note): the recorded state, corrected by what the executor's scheduler knows."""
    state = status.get("state", "new") if status else "new"
    if job is None or ex is None:
        return state, ""
    if job.active is None:
        return state, f"{ex.name} unreachable ({job.reason})"
    if job.active:
        if state == "pending" and status.get("note") == "preempted":
            return "queued", f"requeued after preemption ({job.state.lower()})"
        if state in WORKING:
            if job.state in ("ALIVE", "WAITING"):  # a local process: nothing to add but a wait
                return state, job.reason
            reason = job.reason if job.reason and job.reason != "None" else ""
            shown = "running" if job.state == "RUNNING" else state
            note = job.state.lower() if job.state.lower() != shown else ""
            return shown, ": ".join(x for x in (note, reason) if x)
        return state, f"job still {job.state.lower()}"
    if state not in WORKING:
        return state, ""  # a final state, or pending after a preemption that was not requeued: resumable
    if state == "queued" and not status.get("started"):
        if job.state.startswith("CANCELLED"):
            return "cancelled", f"cancelled before it started ({ex.name} {job.state})"
        if ex.unstarted == "pending":
            return "pending", "never started: its local runner stopped"
    if job.state.startswith("CANCELLED"):
        return "cancelled", f"job {job.job_id} {job.state} without a final state"
    return "failed", f"job {job.job_id} ended {job.state} without writing a final state"


def reconcile(cells) -> list[CellState]:
    """Every cell's recorded status, its job as its executor sees it, and its effective state."""
    statuses = [rundir.read_status(c.run_dir) for c in cells]
    jobs: list = [None] * len(statuses)
    for name in EXECUTORS:  # one question per executor, about all of its cells
        mine = [i for i, s in enumerate(statuses) if s.get("executor") == name]
        if mine:
            for i, view in zip(mine, executor(name).views([statuses[i] for i in mine])):
                jobs[i] = view
    out = []
    for c, s, job in zip(cells, statuses, jobs):
        if job is not None and job.active is False and s.get("state") in WORKING:
            s = rundir.read_status(c.run_dir)  # read before asking: the job may have written its end since
        ex = executor(s["executor"]) if s.get("executor") in EXECUTORS else None
        state, note = effective_state(s, job, ex)
        problem = rundir.identity_problem(c.run_dir, missing_ok=True)
        if problem:  # config.json is another run's: nothing in this dir is this cell's
            state, note = rundir.BROKEN, problem
        out.append(CellState(c.run_id, c.run_dir, s, state, job, note))
    return out


def record_lost(cells: list[CellState]) -> list[CellState]:
    """Write the effective state of cells whose job ended without recording one (status.json said
    queued / running, the scheduler says it is over). Returns the cells it updated."""
    lost = [c for c in cells if c.job is not None and c.job.active is False and c.status.get("state") in WORKING
            and c.state not in (c.status.get("state"), rundir.BROKEN)]
    for c in lost:
        fields = dict(state=c.state, note=c.note, scheduler_state=c.job.state)
        if c.state in ("failed", "cancelled"):
            tail = stderr_tail(c.status.get("stderr"))
            fields.update(ended=time.time(), error=c.status.get("error") or c.note + (f"; its stderr ends: {tail}"
                                                                                       if tail else ""))
        # compare-and-set: only if nobody (a new submission, the job itself) has written since we looked
        expect = {"attempt_id": c.status.get("attempt_id"), "state": c.status.get("state")}
        rundir.update_status(c.run_dir, expect=expect, **fields)
    return lost


def stderr_tail(path) -> str:
    """The last non-empty line a job wrote to its stderr ('' when there is none)."""
    if not path:
        return ""
    try:
        f = rundir.open_regular(path)
        if f is None:
            return ""
        with f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 2048))
            lines = [l.strip() for l in f.read().decode(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
