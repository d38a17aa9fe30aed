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
"""
from __future__ import annotations

import subprocess
import time
from collections import defaultdict

from ablate.errors import AblateError
from ablate.launch import resources as res
from ablate.plan import rundir


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
    import submitit

    from ablate.launch.jobs import CellJob

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
                    cell.run_dir, state="queued", executor="slurm", job_id=str(job.job_id), attempt_id=attempt,
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
    """The sbatch script submitit would write for these resources (pinned by a golden-file test)."""
    from submitit.slurm.slurm import _make_sbatch_string

    params, _ = res.slurm_parameters(resources, grid_name, array_parallelism)
    return _make_sbatch_string(command="python -u -m submitit.core._submit FOLDER", folder=str(folder),
                               map_count=array_size, **params)
