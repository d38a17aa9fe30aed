"""`ablate status`, `ablate cancel` and the progress view of `submit --wait` / local submit.

Every view starts from `state.reconcile`: status.json corrected by what each executor says of
its jobs (squeue / sacct, the local pids), so a job that died without a word shows as failed
with its scheduler state (TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, CANCELLED...), and `status`
records that in status.json.
"""
from __future__ import annotations

import collections
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from ablate.core import rundir
from ablate.core.paths import runs_root
from ablate.launch import state as st
from ablate.launch.executor import OWN_STATES
from ablate.launch.executors import executor
from ablate.plan.grid import Grid

SHOWN = ("queued", "running", "pending", "failed", "diverged", "oom", "cancelled", rundir.BROKEN)
ORDER = ("running", "queued", "pending", "failed", "oom", "diverged", "cancelled", rundir.BROKEN, "done", "new")


class _RunDir:
    def __init__(self, run_dir: Path):
        self.run_dir, self.run_id = run_dir, f"{run_dir.parent.name}/{run_dir.name}"


def _cells(grid: Grid | None) -> list:
    if grid is not None:
        return list(grid.cells)
    return [_RunDir(p) for p in sorted(runs_root().glob("*/*")) if (p / rundir.CONFIG).exists()]


def _last_metrics(run_dir) -> dict:
    """The last valid metrics line, read from the end of the file (it can be long)."""
    try:
        f = rundir.open_regular(Path(run_dir) / rundir.METRICS)
        if f is None:
            return {}
        with f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 4096))
            lines = f.read().decode(errors="replace").splitlines(keepends=True)
    except OSError:
        return {}
    for line in reversed(lines):
        if line.endswith("\n"):
            try:
                record = rundir.valid_record(json.loads(line), rundir.METRIC_FIELDS)
            except json.JSONDecodeError:
                continue
            if record is not None:
                return record
    return {}


def _max_iters(run_dir) -> object:
    doc = rundir.read_json(Path(run_dir) / rundir.CONFIG) or {}
    return (doc.get("config") or {}).get("max_iters", "?")


def _elapsed(s: dict) -> str:
    """Wall time over every attempt (the trainer's wall_s, and the time since its last word while
    it runs); a status without it (a job that never reported): since its last start."""
    running = s.get("state") in ("running", "queued")
    if isinstance(s.get("wall_s"), (int, float)):
        since = time.time() - float(s.get("heartbeat") or s.get("updated") or time.time()) if running else 0
        secs = s["wall_s"] + max(0.0, since)
    elif s.get("started"):
        end = s.get("ended") if not running else None
        secs = max(0, (end or time.time()) - s["started"])
    else:
        return "-"
    return f"{int(secs // 3600)}:{int(secs % 3600 // 60):02d}:{int(secs % 60):02d}"


def last_line(c: st.CellState) -> str:
    """What the table says about a cell: its error's last line, else the reconciliation note,
    else (failed without a word) the last line its job wrote to stderr."""
    err = (c.status.get("error") or "").strip().splitlines()
    if c.state in ("failed", "oom", "diverged", "cancelled") and err:
        return err[-1].strip()
    if c.note:
        return c.note
    if c.state == "failed":
        return st.stderr_tail(c.status.get("stderr"))
    return c.status.get("note") or "" if c.state == "cancelled" else ""


def _fmt(x, spec: str, dash: str = "-") -> str:
    return format(x, spec) if isinstance(x, (int, float)) and not (isinstance(x, float) and math.isnan(x)) else dash


def table(cells: list[st.CellState], states=SHOWN, width: int | None = None) -> list[str]:
    """One line per cell in `states`, columns as wide as their widest value (a run id without a
    grid is grid/run_id), the note last and unpadded; lines cut at `width`."""
    rows = []
    for c in sorted(cells, key=lambda c: (ORDER.index(c.state) if c.state in ORDER else 99, c.run_id)):
        if c.state not in states:
            continue
        s, m = c.status, _last_metrics(c.run_dir)
        job = s.get("job_id") or (c.job.job_id if c.job else "-")
        sched = c.job.state if c.job is not None and c.job.state not in OWN_STATES else ""
        at = m.get("step", s.get("step", s.get("ckpt_step")))  # no log line yet: where the job said it was
        step = f"{_fmt(at, 'd')}/{_max_iters(c.run_dir)}"
        final = (rundir.read_json(Path(c.run_dir) / rundir.SUMMARY) or {}).get("final_val_loss") if c.state == "done" \
            else None
        rows.append([c.run_id, c.state, step, _fmt(s.get("ckpt_step"), "d"), _fmt(m.get('loss'), '.3f'),
                     _fmt(final, ".4f"), _fmt(m.get('tokens_per_s'), ',.0f'), _elapsed(s), str(job),
                     sched or s.get('scheduler_state') or '', last_line(c)])
    if not rows:
        return []
    head = ["run_id", "state", "step/max", "ckpt", "loss", "val loss", "tok/s", "elapsed", "job", "scheduler",
            "note / last error"]
    right = {3, 4, 5, 6, 7}  # numbers
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head) - 1)]

    def line(r):
        cols = [r[i].rjust(w) if i in right else r[i].ljust(w) for i, w in enumerate(widths)]
        return " ".join([*cols, r[-1]]).rstrip()[:width or None]
    return [line(head), *map(line, rows)]


def counts_line(cells: list[st.CellState]) -> str:
    counts = collections.Counter(c.state for c in cells)
    return ", ".join(f"{counts[s]} {s}" for s in ORDER if counts[s]) or "no runs"


DONE_SHOWN = 20  # finished cells listed: the best final val losses; `ablate report` has them all


def status_report(grid: Grid | None) -> str:
    """Counts per state, then a table of the active and failed cells and of the best finished
    ones with their final val loss; elapsed is over every attempt, ckpt the step a resume starts at."""
    cells = st.reconcile(_cells(grid))
    st.record_lost(cells)
    lines = [f"grid {grid.name}: {counts_line(cells)}" if grid is not None else counts_line(cells)]
    if any(c.job is not None and c.job.active is None for c in cells):
        lines.append("warning: the scheduler did not answer (squeue failed): states are as the run dirs last said")
    done = [c for c in cells if c.state == "done"]
    loss = {c.run_id: (rundir.read_json(Path(c.run_dir) / rundir.SUMMARY) or {}).get("final_val_loss") for c in done}
    best = sorted(done, key=lambda c: loss[c.run_id] if isinstance(loss[c.run_id], (int, float)) else math.inf)
    shown = {c.run_id for c in best[:DONE_SHOWN]}
    rows = table([c for c in cells if c.state != "done" or c.run_id in shown], states=(*SHOWN, "done"))
    more = [f"... and {len(done) - DONE_SHOWN} more done (`ablate report` has them all)"] if len(done) > DONE_SHOWN else []
    return "\n".join(lines + rows + more)


CANCEL_GRACE_S = 60.0  # a local job gets this long after SIGTERM to finish its step and checkpoint


def cancel(grid: Grid, cells, grace_s: float = CANCEL_GRACE_S, echo=print) -> list[str]:
    """Cancel the queued / running cells among `cells`: mark them cancelled (only if nobody wrote
    their status since we looked), then have each executor stop their jobs: scancel (Slurm
    escalates to SIGKILL after its KillWait); SIGTERM to local jobs, and SIGKILL to the job and
    its processes when one is still alive `grace_s` later (a step longer than that; it resumes
    from its last checkpoint)."""
    out, jobs = [], collections.defaultdict(list)  # executor name -> [(run_id, status)]
    for c in st.reconcile(cells):
        if not (c.active or c.status.get("state") in st.WORKING) or c.status.get("state") == "done":
            continue
        s = c.status
        expect = {"attempt_id": s.get("attempt_id"), "state": s.get("state")}  # unchanged since we looked
        if rundir.update_status(c.run_dir, expect=expect, state="cancelled", note="cancelled by ablate cancel",
                                ended=time.time()) is None:
            out.append(f"{c.run_id}: its state changed while cancelling (now {rundir.state_of(c.run_dir)}); "
                       "run `ablate cancel` again if it is still running")
            continue
        if s.get("executor"):
            jobs[s["executor"]].append((c.run_id, s))
        out.append(f"cancelled {c.run_id} (was {c.state}, {s.get('executor')} job {s.get('job_id') or '-'})")
    for line in out or ["nothing to cancel"]:
        echo(line)
    for name, pairs in jobs.items():
        for line in executor(name).cancel(pairs, grace_s, echo):
            echo(line)
            out.append(line)
    return out or ["nothing to cancel"]


def watch(grid: Grid, cells, runner=None, echo=print, interval: float = 2.0) -> list[st.CellState]:
    """Show progress until no cell is queued or running (and the local runner, if any, has exited).
    A terminal gets a table redrawn in place; a log gets a line whenever the counts change.
    Ctrl-C: a local runner is asked to stop its jobs (they checkpoint); Slurm jobs keep running."""
    tty = sys.stdout.isatty() and echo is print
    last, last_print, drawn = None, 0.0, 0
    try:
        while True:
            views = st.reconcile(cells)
            active = [v for v in views if v.active or (v.state in st.WORKING and v.job is None)]
            runner_alive = runner is not None and runner.alive()
            line = counts_line(views)
            if tty:
                width = shutil.get_terminal_size().columns
                text = [f"grid {grid.name}: {line}", *table(views, states=("running", "queued", "failed"), width=width)]
                sys.stdout.write(("\x1b[F\x1b[2K" * drawn) + "\n".join(text) + "\n")
                sys.stdout.flush()
                drawn = len(text)
            elif line != last or time.time() - last_print > 60:
                running = [v for v in views if v.state == "running"]
                extra = "; ".join(f"{v.run_id} step {v.status.get('step', 0)}" for v in running[:4])
                echo(f"[{time.strftime('%H:%M:%S')}] {line}" + (f" ({extra})" if extra else ""))
                last, last_print = line, time.time()
            if not active and not runner_alive:
                break
            time.sleep(interval)
    except KeyboardInterrupt:
        if runner is not None:
            runner.stop(echo=echo)
        else:
            echo("stopped watching; the jobs keep running (`ablate cancel` stops them)")
        raise
    st.record_lost(views)
    views = st.reconcile(cells)
    for line in table(views, states=("failed", "oom", "diverged", "cancelled", "pending")):
        echo(line)
    done = [v for v in views if v.state == "done"]
    for v in done[:20]:
        summary = rundir.read_json(Path(v.run_dir) / rundir.SUMMARY) or {}
        loss = summary.get("final_val_loss")
        echo(f"{v.run_id}: done" + (f", final val loss {loss:.4f}" if isinstance(loss, (int, float)) else ""))
    echo(f"grid {grid.name}: {counts_line(views)}")
    return views
