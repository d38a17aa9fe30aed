"""`ablate submit`: decide which cells run, write their run dirs, hand them to an executor.

Which cells run (`select_cells`), decided on the reconciled state (scheduler.reconcile), so a
job that died without writing its state counts as failed and a live job is never doubled:

    new, pending (preempted / never started)   run
    failed, diverged, oom, cancelled           only with --retry (all) or --retry failed,oom
    done                                       only with --force (which also deletes its files)
    queued / running (a live job owns it)      never, whatever the flags

--retry resumes from the cell's checkpoint when it has one; --force starts over. A per-grid
lock makes two concurrent `ablate submit` of one grid take turns.

Executors (executor.py: one interface; executors.py: the names): slurm (job arrays, returns at
once; --wait to follow), local (a runner with one job per GPU slot or CPU share; shows progress,
--detach to return), debug (in-process).
"""
from __future__ import annotations

import shutil

import contextlib
import fcntl
import time
from pathlib import Path

from ablate import __version__
from ablate.core import rundir
from ablate.core.errors import AblateError
from ablate.core.provenance import git_sha
from ablate.data import corpora, prepare
from ablate.launch import state as st
from ablate.launch.executors import default_name, executor_class
from ablate.launch.status import watch
from ablate.plan import plugins
from ablate.plan.checks import check_splits
from ablate.plan.grid import Cell, Grid

ENDED_BADLY = ("failed", "oom", "diverged")  # `ablate submit` / `run` exit 3 when a cell it waited for ends so


class Submitted(list):
    """The cells submitted; `views`: how every cell the command waited for ended (empty when it
    returned at once: Slurm without --wait, --detach)."""
    views: list = []


def write_config(grid: Grid, cell: Cell, sha: str) -> None:
    cell.run_dir.mkdir(parents=True, exist_ok=True)
    if cell.config.plugins:  # the code of the plugins the cell uses, beside its config (plugins/<content id>.py)
        plugins.copy_sources(cell.config, cell.run_dir)
    rundir.write_json_atomic(cell.run_dir / rundir.CONFIG, {
        "config": cell.config.to_dict(), "grid": grid.name, "run_id": cell.run_id,
        "varied": cell.varied, "version": __version__, "git_sha": sha,
        "grid_file": str(grid.path), "resources": grid.resources.__dict__})


def parse_retry(retry) -> tuple:
    retry = tuple(retry or ())
    bad = [s for s in retry if s not in rundir.RETRYABLE and s != "all"]
    if bad:
        raise AblateError(f"--retry {','.join(bad)}: not a retryable state; allowed: all, {', '.join(rundir.RETRYABLE)}")
    return retry


def select_cells(views: list[st.CellState], retry=(), force=False) -> tuple[list[str], dict[str, str]]:
    """(run_ids to run, {run_id: why skipped}) from reconciled cells."""
    run, skipped = [], {}
    for v in views:
        if v.active:
            job = v.job.job_id if v.job else "?"
            skipped[v.run_id] = f"{v.state} (job {job}{', ' + v.note if v.note else ''}): never submitted twice"
        elif force or v.state in ("new", "pending"):
            run.append(v.run_id)
        elif v.state == rundir.BROKEN:
            skipped[v.run_id] = f"broken: {v.note} (--force deletes its files and starts it over)"
        elif v.state in rundir.RETRYABLE and (v.state in retry or "all" in retry):
            run.append(v.run_id)
        elif v.state in rundir.RETRYABLE:
            skipped[v.run_id] = f"{v.state} (use --retry to run it again)"
        else:
            skipped[v.run_id] = f"{v.state}" + (" (use --force to retrain)" if v.state == "done" else "")
    return run, skipped


def reset_run_dir(run_dir: Path) -> None:
    """--force: start over (keeps config.json)."""
    for name in (rundir.STATUS, rundir.METRICS, rundir.EVALS, rundir.SUMMARY, rundir.CKPT, "model.pt"):
        (run_dir / name).unlink(missing_ok=True)
    shutil.rmtree(run_dir / rundir.CKPT_SHARDS, ignore_errors=True)


def prepare_data(cells) -> None:
    """Prepare each data set once, here, so that concurrent cells never race to do it; then check
    each cell against it as the plan does once it is prepared (a context longer than a split
    failed the cell, while the next plan refused it)."""
    for key in sorted({(c.config.dataset, c.config.tokenizer) for c in cells}):
        prepare.prepare(*key)
    for cell in cells:
        try:
            check_splits(cell.config, corpora.read_meta(cell.config.dataset, cell.config.tokenizer))
        except AblateError as e:
            raise AblateError(f"cell {cell.run_id}: {e}") from None


LOCK_WAIT_S = 300.0  # a second submit of a grid waits this long for the first to hand its cells over


@contextlib.contextmanager
def grid_lock(grid: Grid, echo=print, wait_s: float = LOCK_WAIT_S):
    """One `ablate submit` of a grid at a time (check-then-submit must not interleave): a second
    one waits its turn, saying so, for as long as the first takes to dispatch (not to train)."""
    grid.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(grid.runs_dir / ".submit.lock", "w") as f:
        deadline, told = time.monotonic() + wait_s, False
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise AblateError(f"another `ablate submit` of grid {grid.name} has held its lock for "
                                      f"{wait_s:.0f} s; try again when it has returned") from None
                if not told:
                    echo(f"waiting for another `ablate submit` of grid {grid.name} to hand its cells over...")
                    told = True
                time.sleep(0.2)
        yield


def submission_folder(grid: Grid) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    base = grid.runs_dir.resolve() / ".submitit"
    for n in range(1000):
        folder = base / (stamp if n == 0 else f"{stamp}-{n}")
        if not folder.exists():
            folder.mkdir(parents=True)
            return folder
    raise AblateError(f"could not make a new submission folder under {base}")


def _summarize_skips(skipped: dict, echo) -> None:
    """One line per skipped cell; one line per reason when more than three share it."""
    by_reason: dict = {}
    for rid, why in skipped.items():
        by_reason.setdefault(why, []).append(rid)
    for why, rids in by_reason.items():
        for line in ([f"skip {len(rids)} cells: {why}"] if len(rids) > 3 else [f"skip {r}: {why}" for r in rids]):
            echo(line)


def submit(grid: Grid, cells, executor: str | None = None, retry=(), force: bool = False, jobs: int | None = None,
           gpus: str | None = None, wait: bool | None = None, detach: bool = False,
           array_parallelism: int | None = None, echo=print) -> list[Cell]:
    """Submit the cells that need running. Slurm returns at once unless wait; local shows progress
    until done unless detach; debug runs them here. Returns the submitted cells."""
    kind = executor_class(executor or default_name())
    kind().check()
    for flag, value in (("--array-parallelism", array_parallelism), ("--jobs", jobs)):
        if value is not None and value < 1:
            raise AblateError(f"{flag} must be >= 1, got {value}")
    retry = parse_retry(retry)
    cells = list(cells)
    by_id = {c.run_id: c for c in cells}
    runner = None
    with grid_lock(grid, echo):
        grid.link_shared()  # cells another grid ran (or runs): their run dirs, seen from this grid's folder
        views = st.reconcile(cells)
        st.record_lost(views)
        todo_ids, skipped = select_cells(views, retry, force)
        _summarize_skips(skipped, echo)
        todo = [by_id[r] for r in todo_ids]
        live = [by_id[v.run_id] for v in views if v.active]
        if todo:
            ex = kind.for_submit(grid, jobs=jobs, gpus=gpus, array_parallelism=array_parallelism, echo=echo)
            runner = _dispatch(grid, todo, ex, force, echo)
        else:
            echo("nothing to submit")
    after = kind().after_dispatch(bool(wait), detach)
    out = Submitted(todo)
    if after == "watch" and (todo or live):  # live: cells that earlier submissions are still running
        out.views = watch(grid, todo + live, runner=runner, echo=echo)
    elif after == "ran":
        out.views = st.reconcile(todo)
    elif todo:
        echo(f"{'detached: ' if runner is not None else ''}submitted {len(todo)} cell(s); "
             f"`ablate status {grid.path}` shows progress")
    return out


def _dispatch(grid, todo, ex, force, echo):
    """Write the run dirs and hand the cells to the executor; returns its local runner, if any."""
    prepare_data(todo)
    sha = git_sha()
    for cell in todo:
        if force:
            reset_run_dir(cell.run_dir)
        write_config(grid, cell, sha)
    return ex.dispatch(grid, todo, submission_folder(grid), echo)
