"""What the scheduler says about a cell's job, and the state a cell is really in.

status.json is written by the job; a job that is killed hard (node failure, out of host memory,
SIGKILL after the time limit, a local process killed) never writes its final state. So every
decision that matters (`submit` never duplicating, `status`, `cancel`, `--wait`) goes through
`reconcile`, which asks the scheduler once for all cells:

    slurm   squeue (pending / running, and recently finished jobs), then sacct for the final
            state of jobs squeue no longer lists; without sacct, "not in squeue" means ended
    local   is the job's controller (or, before it starts, the local runner) still alive here
    debug   in-process: alive while the submitting process is

A job that ended while its status.json still says queued / running is shown (and recorded,
by `record_lost`) as failed with the scheduler's state; one that was preempted and not requeued
stays "pending": the next submit resumes it from its checkpoint.
"""
from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from dataclasses import dataclass

from ablate.plan import rundir

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "COMPLETING",
          "CONFIGURING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
WORKING = ("queued", "running")  # file states that a live job owns
NOT_SLURM = ("ALIVE", "GONE", "WAITING", "ENDED", "OTHER HOST")  # JobView states that are not Slurm's


@dataclass(frozen=True)
class JobView:
    """The scheduler's word on one job. active None: the scheduler could not be asked."""
    job_id: str
    state: str                    # Slurm state (RUNNING, TIMEOUT...), or ALIVE / GONE for local jobs
    active: bool | None
    reason: str = ""              # squeue's pending reason (Resources, JobHeldUser, BeginTime...)


@dataclass(frozen=True)
class Cell:
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


def _run(cmd: list[str]) -> subprocess.CompletedProcess | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None


def squeue(job_ids) -> dict[str, tuple[str, str]] | None:
    """{job id (array tasks as 12_3): (state, reason)} for these jobs; None if squeue can't answer."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return {}
    out = _run(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%T|%r"])
    if out is None:
        return None
    if out.returncode != 0:
        # every id already purged: "Invalid job id specified"; anything else: the controller is down
        return {} if "Invalid job id" in out.stderr else None
    jobs = {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) == 3:
            jobs[parts[0]] = (parts[1], parts[2])
    return jobs


def sacct(job_ids) -> dict[str, str] | None:
    """{job id: final state} from accounting; None without sacct (or slurmdbd)."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return {}
    out = _run(["sacct", "-X", "-n", "-P", "-j", ",".join(bases), "-o", "JobID,State"])
    if out is None or out.returncode != 0:
        return None
    states, ranges = {}, {}
    for line in out.stdout.splitlines():
        parts = line.strip().split("|")
        if len(parts) != 2 or not parts[0]:
            continue
        state = parts[1].split()[0] if parts[1] else "UNKNOWN"  # "CANCELLED by 0"
        m = re.match(r"^(\d+)_\[([\d,-]+)(?:%\d+)?\]$", parts[0])  # array tasks that never started: 12_[3-5%2]
        if m:
            for part in m.group(2).split(","):
                lo, _, hi = part.partition("-")
                for i in range(int(lo), int(hi or lo) + 1):
                    ranges[f"{m.group(1)}_{i}"] = state
        else:
            states[parts[0]] = state
    return {**ranges, **states}


def slurm_views(job_ids, final_needed=None) -> dict[str, JobView]:
    """Views of these jobs: squeue for all; sacct only for the ended ones in final_needed (default:
    all), the jobs whose run dir still waits for a final state."""
    job_ids = [j for j in job_ids if j]
    queue = squeue(job_ids)
    if queue is None:
        return {j: JobView(j, "UNREACHABLE", None, "squeue failed") for j in job_ids}
    views, ended = {}, []
    for j in job_ids:
        if j in queue and queue[j][0] in ACTIVE:
            views[j] = JobView(j, queue[j][0], True, queue[j][1])
        else:
            ended.append(j)
    asked = [j for j in ended if final_needed is None or j in final_needed]
    accounting = sacct(asked) if asked else {}
    for j in ended:
        if j not in asked:  # its run dir has its final state: which one Slurm has does not matter
            views[j] = JobView(j, queue[j][0] if j in queue else "ENDED", False)
            continue
        state = (accounting or {}).get(j) or (queue.get(j, ("",))[0]) or ("GONE" if accounting is None else "UNKNOWN")
        # sacct can lag squeue by a moment; an active state there is not to be trusted once squeue forgot the job
        views[j] = JobView(j, state, False)
    return views


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


def effective_state(status: dict, job: JobView | None, scheduler: str) -> tuple[str, str]:
    """(state, note): the recorded state, corrected by what the scheduler knows."""
    state = status.get("state", "new") if status else "new"
    if job is None:
        return state, ""
    if job.active is None:
        return state, f"{scheduler} unreachable ({job.reason})"
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
            return "cancelled", f"cancelled before it started ({scheduler} {job.state})"
        if scheduler != "slurm":
            return "pending", "never started: its local runner stopped"
    if job.state.startswith("CANCELLED"):
        return "cancelled", f"job {job.job_id} {job.state} without a final state"
    return "failed", f"job {job.job_id} ended {job.state} without writing a final state"


def reconcile(cells) -> list[Cell]:
    """Every cell's recorded status, its job as the scheduler sees it, and its effective state."""
    statuses = [(c, rundir.read_status(c.run_dir)) for c in cells]
    slurm = [s for _, s in statuses if s.get("executor") == "slurm" and s.get("job_id")]
    # every job is looked up in squeue (a "done" one may still be exiting); only those whose
    # run dir has no final state need sacct
    final_needed = {s["job_id"] for s in slurm if s.get("state") in WORKING}
    views = slurm_views([s["job_id"] for s in slurm], final_needed) if slurm else {}
    out = []
    for c, s in statuses:
        executor = s.get("executor")
        if executor == "slurm":
            job = views.get(s.get("job_id"))
        elif executor == "local" and s.get("state") != "done":
            job = local_view(s)
        elif executor == "debug" and s.get("state") in WORKING:  # its "job" is the submitting process
            job = local_view(s)
        else:
            job = None
        if job is not None and job.active is False and s.get("state") in WORKING:
            s = rundir.read_status(c.run_dir)  # read before asking: the job may have written its end since
        state, note = effective_state(s, job, executor or "")
        problem = rundir.identity_problem(c.run_dir, missing_ok=True)
        if problem:  # config.json is another run's: nothing in this dir is this cell's
            state, note = rundir.BROKEN, problem
        out.append(Cell(c.run_id, c.run_dir, s, state, job, note))
    return out


def record_lost(cells: list[Cell]) -> list[Cell]:
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
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 2048))
            lines = [l.strip() for l in f.read().decode(errors="replace").splitlines() if l.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""
