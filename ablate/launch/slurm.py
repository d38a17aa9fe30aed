"""Slurm: one job array per resource signature, submitted held, recorded, then released.

    cells --group by resources--> [array 0: 700 cells] [array 1: 3 cells]     (one sbatch each,
                                   split at MaxArraySize)                      submitit batch())

Submitting never blocks: sbatch returns job ids at once. The array is submitted with --hold
and released only after every cell's status.json holds its job id (`12_3`: array 12, index 3),
so a job can never start before its cell says who owns it, and a crash in between leaves held
jobs that `ablate status` shows and the next submit does not duplicate.

submitit's folder (pickles, sbatch script, logs) is runs/<grid>/.submitit/<time>-<n>/, new for
every submission: Slurm reuses job ids after a reset, and a reused id in a reused folder would
read an old job's result. status.json points at each task's log files.

What Slurm says of a job: squeue (pending / running, and recently finished jobs), then sacct
for the final state of jobs squeue no longer lists; without sacct, "not in squeue" means ended.
SlurmExecutor is this module's face to the rest of ablate (launch/executor.py).
"""
from __future__ import annotations

import re
import shutil
import subprocess
import time
from collections import defaultdict

import submitit

from ablate.core import rundir
from ablate.core.errors import AblateError
from ablate.launch import resources as res
from ablate.launch.executor import Executor, JobView
from ablate.launch.jobs import CellJob

ACTIVE = {"PENDING", "RUNNING", "REQUEUED", "REQUEUE_FED", "REQUEUE_HOLD", "RESIZING", "SUSPENDED", "COMPLETING",
          "CONFIGURING", "STOPPED", "SIGNALING", "STAGE_OUT", "RESV_DEL_HOLD", "SPECIAL_EXIT"}
WORKING = ("queued", "running")  # file states that a live job owns


def group_by_resources(cells, resources_of) -> list[tuple[object, list]]:
    """[(resources, cells)] in first-seen order: one array per distinct signature."""
    groups: dict = defaultdict(list)
    first: dict = {}
    for cell in cells:
        r = resources_of(cell)
        first.setdefault(r.signature(), r)
        groups[r.signature()].append(cell)
    return [(first[sig], groups[sig]) for sig in groups]


def chunks(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), max(1, size))]


def _sbatch_error(e: Exception) -> str:
    lines = [l for l in str(e).splitlines() if l.strip() and "sbatch:" in l] or str(e).strip().splitlines()[-1:]
    return lines[-1].strip() if lines else repr(e)


def submit_arrays(grid, cells, folder, resources_of=None, array_parallelism=None, echo=print) -> list[str]:
    """Submit `cells` as job arrays; returns the array job ids. Every cell's status is recorded."""
    resources_of = resources_of or (lambda cell: grid.resources)
    limit = res.max_array_size()
    arrays = []
    for r, group in group_by_resources(cells, resources_of):
        res.check_gpus_available(r)
        params, ctor = res.slurm_parameters(r, grid.name, array_parallelism)
        threads = r.cpus or 1
        for part in chunks(group, limit):
            sub = folder / f"array{len(arrays)}"
            ex = submitit.SlurmExecutor(folder=str(sub), **ctor)
            ex.update_parameters(**params)
            attempts = [rundir.new_attempt() for _ in part]  # a requeued task stays the same attempt
            try:
                with ex.batch():
                    jobs = [ex.submit(CellJob(str(c.run_dir.resolve()), threads, a)) for c, a in zip(part, attempts)]
            except (submitit.core.utils.FailedJobError, subprocess.CalledProcessError, OSError) as e:
                raise AblateError(f"sbatch refused {len(part)} cell(s) of grid {grid.name} "
                                  f"({_describe(r)}): {_sbatch_error(e)}") from None
            base = jobs[0].job_id.split("_")[0]
            now = time.time()
            for i, (cell, job, attempt) in enumerate(zip(part, jobs, attempts)):
                rundir.update_status(
                    cell.run_dir, state="queued", executor=SlurmExecutor.name, job_id=str(job.job_id), attempt_id=attempt,
                    array_job_id=base,
                    array_index=i if "_" in job.job_id else None, submitit_folder=str(sub), submitted=now,
                    stdout=str(job.paths.stdout), stderr=str(job.paths.stderr), error=None, note=None, ended=None,
                    scheduler_state=None, runner_pid=None)
            release(base)
            arrays.append(base)
            kind = f"array {base} ({len(part)} tasks" + (f", {array_parallelism} at a time" if array_parallelism else "")
            echo(f"submitted {kind}, {_describe(r)}) -> {sub}/")
    return arrays


def release(job_id: str) -> None:
    out = subprocess.run(["scontrol", "release", job_id], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise AblateError(f"scontrol release {job_id} failed: {out.stderr.strip()} "
                          f"(the jobs are held; release them by hand or `ablate cancel`)")


def _describe(r) -> str:
    parts = [f"{name}={getattr(r, name)}" for name in res.TABLE if getattr(r, name) not in (None, 0, "")]
    return ", ".join(parts) or "default resources"


def sbatch_script(grid_name: str, resources, folder, array_size: int | None = None, array_parallelism=None) -> str:
    """The sbatch script submitit would write for these resources, from submitit's private
    `_make_sbatch_string` (the function its SlurmExecutor calls; no public API gives the text).
    The golden-file test (tests/launch/test_launch_slurm.py) pins it, so a submitit that renames
    or changes it fails there first, and here it is one line, not a traceback."""
    try:
        from submitit.slurm.slurm import _make_sbatch_string  # private API, guarded: only this function needs it
    except ImportError as e:
        raise AblateError(f"submitit {submitit.__version__} has no slurm._make_sbatch_string ({e}): "
                          "ablate/launch/slurm.py's sbatch_script needs updating") from None
    params, _ = res.slurm_parameters(resources, grid_name, array_parallelism)
    return _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=str(folder),
                               map_count=array_size, **params)


# ---------------------------------------------------------------- what Slurm says

def run_command(cmd: list[str]) -> subprocess.CompletedProcess | None:
    """A Slurm command's result, or None when it cannot run (not installed, timed out)."""
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None


def squeue(job_ids) -> dict[str, tuple[str, str]] | None:
    """{job id (array tasks as 12_3): (state, reason)} for these jobs; None if squeue can't answer."""
    bases = sorted({j.split("_")[0] for j in job_ids})
    if not bases:
        return {}
    out = run_command(["squeue", "-h", "-r", "-t", "all", "-j", ",".join(bases), "-o", "%i|%T|%r"])
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
    out = run_command(["sacct", "-X", "-n", "-P", "-j", ",".join(bases), "-o", "JobID,State"])
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


class SlurmExecutor(Executor):
    """Job arrays through sbatch; jobs asked about through squeue / sacct; scancel to stop them."""
    name = "slurm"

    def __init__(self, array_parallelism: int | None = None):
        self.array_parallelism = array_parallelism

    def check(self) -> None:
        if not shutil.which("sbatch"):
            raise AblateError("--executor slurm: sbatch is not on PATH (no Slurm here); use --executor local")

    @classmethod
    def for_submit(cls, grid, *, jobs=None, gpus=None, array_parallelism=None, echo=print) -> "SlurmExecutor":
        return cls(array_parallelism)

    def dispatch(self, grid, cells, folder, echo=print):
        submit_arrays(grid, cells, folder, array_parallelism=self.array_parallelism, echo=echo)
        return None

    def views(self, statuses: list[dict]) -> list[JobView | None]:
        # every job is looked up in squeue (a "done" one may still be exiting); only those whose
        # run dir has no final state need sacct
        ids = [s.get("job_id") for s in statuses]
        final_needed = {s["job_id"] for s in statuses if s.get("job_id") and s.get("state") in WORKING}
        found = slurm_views([j for j in ids if j], final_needed) if any(ids) else {}
        return [found.get(j) if j else None for j in ids]

    def cancel(self, jobs: list[tuple[str, dict]], grace_s: float, echo=print) -> list[str]:
        ids = [s["job_id"] for _, s in jobs if s.get("job_id")]
        if not ids:
            return []
        r = run_command(["scancel", *ids])
        if r is None or r.returncode != 0:
            return [f"warning: scancel: {r.stderr.strip() if r is not None else 'could not run'}"]
        return []
