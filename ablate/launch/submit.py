"""`ablate submit`: write run dirs for the cells that need running and hand them to submitit.

Which cells run: new ones; failed / diverged / oom / cancelled only with --retry; everything
with --force; a cell already queued or running never twice. Local runs are throttled to
`jobs` concurrent cells (one on a CPU-only machine) and show progress until done.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

from ablate import __version__
from ablate.errors import AblateError
from ablate.plan import rundir
from ablate.plan.grid import Cell, Grid

EXECUTORS = ("local", "slurm", "debug")


def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "-uno"], capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def default_executor() -> str:
    return "slurm" if shutil.which("sbatch") else "local"


def write_config(grid: Grid, cell: Cell, sha: str) -> None:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    rundir.write_json_atomic(cell.run_dir / rundir.CONFIG, {
        "config": cell.config.to_dict(), "grid": grid.name, "run_id": cell.run_id,
        "varied": cell.varied, "version": __version__, "git_sha": sha,
        "grid_file": str(grid.path), "resources": grid.resources.__dict__})


def select_cells(grid: Grid, cells, retry=(), force=False) -> tuple[list, dict]:
    """(cells to run, {cell run_id: reason skipped})."""
    run, skipped = [], {}
    for cell in cells:
        state = rundir.state_of(cell.run_dir)
        if force and state not in ("queued", "running"):
            run.append(cell)
        elif state in ("new", "pending"):
            run.append(cell)
        elif state in rundir.RETRYABLE and (state in retry or "all" in retry):
            run.append(cell)
        else:
            skipped[cell.run_id] = state
    return run, skipped


def reset_run_dir(run_dir: Path) -> None:
    """--force: start over (keeps config.json)."""
    for name in (rundir.STATUS, rundir.METRICS, rundir.EVALS, rundir.SUMMARY, rundir.CKPT, "model.pt"):
        (run_dir / name).unlink(missing_ok=True)


def make_executor(kind: str, folder: Path, grid: Grid, gpus_visible=None):
    import submitit

    r = grid.resources
    if kind == "debug":
        return submitit.DebugExecutor(folder=str(folder))
    if kind == "local":
        ex = submitit.LocalExecutor(folder=str(folder))
        params = dict(timeout_min=max(r.time_min, 1), gpus_per_node=r.gpus)
        if gpus_visible:
            params["visible_gpus"] = list(gpus_visible)
        ex.update_parameters(**params)
        return ex
    raise AblateError(f"executor '{kind}' is not available here; allowed: {', '.join(EXECUTORS)}")


def prepare_data(cells) -> None:
    """Prepare each data set once, here, so that concurrent cells never race to do it."""
    from ablate.train.data import prepare

    for key in sorted({(c.config.dataset, c.config.tokenizer) for c in cells}):
        prepare(*key)


def submit(grid: Grid, cells, executor: str = "local", retry=(), force=False, jobs: int = 1,
           wait: bool = True, echo=print) -> list[Cell]:
    """Submit the cells that need running; with wait, block (showing progress) until they end."""
    if executor not in EXECUTORS:
        raise AblateError(f"unknown executor '{executor}'; allowed: {', '.join(EXECUTORS)}")
    todo, skipped = select_cells(grid, cells, retry, force)
    for rid, state in skipped.items():
        echo(f"skip {rid}: {state}" + (" (use --retry to run again)" if state in rundir.RETRYABLE else ""))
    if not todo:
        echo("nothing to submit")
        return []
    prepare_data(todo)
    sha = git_sha()
    for cell in todo:
        write_config(grid, cell, sha)
        if force:
            reset_run_dir(cell.run_dir)
    pending = list(todo)
    running: dict = {}
    while pending or running:
        while pending and len(running) < max(1, jobs):
            cell = pending.pop(0)
            ex = make_executor(executor, cell.run_dir / "submitit", grid)
            from ablate.launch.jobs import CellJob

            job = ex.submit(CellJob(str(cell.run_dir)))
            rundir.update_status(cell.run_dir, state="queued" if executor != "debug" else "running",
                                 executor=executor, job_id=str(job.job_id))
            echo(f"submitted {cell.run_id} ({executor} job {job.job_id})")
            if executor == "debug":
                _finish(cell, job, echo)
                continue
            running[cell.run_id] = (cell, job)
        if not wait:
            break
        for rid, (cell, job) in list(running.items()):
            if job.done():
                _finish(cell, job, echo)
                del running[rid]
        if running:
            _progress(running, echo)
            time.sleep(2)
    return todo


def _finish(cell: Cell, job, echo) -> None:
    try:
        job.result()
    except Exception as e:  # the trainer records its own failure; this catches crashes before it could
        status = rundir.read_status(cell.run_dir)
        if status.get("state") not in rundir.TERMINAL:
            rundir.update_status(cell.run_dir, state="failed", error=str(e).strip().splitlines()[-1][:500])
    state = rundir.state_of(cell.run_dir)
    summary = rundir.read_json(cell.run_dir / rundir.SUMMARY) or {}
    loss = summary.get("final_val_loss")
    echo(f"{cell.run_id}: {state}" + (f", final val loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))


_last = [0.0]


def _progress(running: dict, echo) -> None:
    if time.time() - _last[0] < 15:
        return
    _last[0] = time.time()
    for rid, (cell, _) in running.items():
        last = rundir.read_jsonl(cell.run_dir / rundir.METRICS)[-1:] or [{}]
        m = last[0]
        if m:
            echo(f"  {rid}: step {m.get('step')}/{cell.config.max_iters} loss {m.get('loss', float('nan')):.3f} "
                 f"{m.get('tokens_per_s') or 0:,.0f} tok/s")
    sys.stdout.flush()
