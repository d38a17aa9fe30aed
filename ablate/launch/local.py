"""Local execution: a runner process hands cells to free slots (one GPU group, or a share of the
CPU cores, each), one process per cell: forked from the runner, which imported torch once
(warm.py), or for a slot of several GPUs a submitit LocalExecutor job; `debug` runs cells in-process.

    ablate submit --executor local        -> runner (own session) -> forked child (or submitit) -> train(run_dir)
         | shows progress until done          | one job per free slot, CUDA_VISIBLE_DEVICES = slot,
         | Ctrl-C: the runner stops jobs      | OMP_NUM_THREADS = cores / slots
         | (they checkpoint: state pending)   | SIGTERM: stop starting, SIGTERM the jobs, wait
    ablate submit --detach                -> returns once the runner owns every cell

The runner runs in its own session, so a Ctrl-C in the terminal reaches only the foreground
command, which then asks the runner (SIGTERM) to stop the jobs cleanly: each saves a checkpoint
and the next submit resumes it. status.json records runner_pid while a cell waits for a slot,
then job_id (the forked child's pid, or the submitit controller's): `procs.local_view` checks both are alive.
The runner mints an attempt id per cell and writes a cell's state only while status.json still
names that attempt: a runner left over from an earlier submit never touches a retried cell.

LocalExecutor and DebugExecutor are this module's face to the rest of ablate (executor.py).

Run it by hand: python -m ablate.launch.local PLAN.json
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import submitit

from ablate.core import rundir
from ablate.core.errors import AblateError
from ablate.launch import resources as res
from ablate.launch import warm
from ablate.launch.executor import Executor, JobView
from ablate.launch.jobs import CellJob
from ablate.launch.procs import local_view, pid_alive, stop_or_kill
from ablate.launch.slots import MachineSlots
from ablate.launch.warm import ForkedJob

POLL_S = 0.5
WORKING = ("queued", "running")


class LocalRunner:
    """The submitting command's handle on its runner process."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.pid = proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, echo=print, timeout_s: float = 300) -> None:
        """Ask the runner to stop its jobs (they checkpoint) and wait for it."""
        stop_runner(self.proc, echo, timeout_s)


def start_runner(grid, cells, slots, folder: Path, timeout_s: float = 120) -> subprocess.Popen:
    """Start the runner for these cells; returns once it has marked every cell queued."""
    folder.mkdir(parents=True, exist_ok=True)
    plan = {"grid": grid.name, "folder": str(folder.resolve()),
            "cells": [{"run_id": c.run_id, "run_dir": str(c.run_dir.resolve())} for c in cells],
            "slots": [{"gpus": list(s.gpus), "threads": s.threads} for s in slots]}
    plan_path = folder / "plan.json"
    rundir.write_json_atomic(plan_path, plan)
    log = open(folder / "runner.log", "ab")
    proc = subprocess.Popen([sys.executable, "-m", "ablate.launch.local", str(plan_path)], stdin=subprocess.DEVNULL,
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    log.close()
    deadline = time.time() + timeout_s
    while not (folder / "ready").exists():
        if proc.poll() is not None:
            tail = (folder / "runner.log").read_text(errors="replace").strip().splitlines()[-3:]
            raise AblateError(f"the local runner exited ({proc.returncode}) before starting: {' | '.join(tail)}")
        if time.time() > deadline:
            proc.terminate()
            raise AblateError(f"the local runner did not start within {timeout_s:.0f}s (see {folder}/runner.log)")
        time.sleep(0.05)
    return proc


def stop_runner(proc: subprocess.Popen, echo=print, timeout_s: float = 300) -> None:
    """Ask the runner to stop its jobs (they checkpoint) and wait for it."""
    if proc.poll() is None:
        echo("stopping: running cells save a checkpoint (state pending, resumed by the next submit)...")
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()


def finish(run_dir: Path, job, attempt: str | None = None, echo=print) -> str:
    """Record a failure the trainer could not record itself (it died before, or was killed), if
    the run is still this attempt's and still queued / running (compare-and-set)."""
    status = rundir.read_status(run_dir)
    mine = attempt is None or status.get("attempt_id") == attempt
    if mine and status.get("state") in ("queued", "running"):
        try:
            error = job.exception()
            text = str(error).strip() if error is not None else "the job ended without writing a final state"
        except Exception as e:  # no result pickle at all: the process was killed
            text = f"the job ended without a result ({type(e).__name__}: {str(e).strip()[-300:]})"
        written = rundir.update_status(
            run_dir, expect={"attempt_id": status.get("attempt_id"), "state": status.get("state")},
            state="failed", ended=time.time(), error=status.get("error") or "\n".join(text.splitlines()[-15:]))
        if echo and written:
            echo(f"{run_dir.name}: failed: {text.splitlines()[-1] if text else ''}")
    return rundir.state_of(run_dir)


class Runner:
    """The runner process: queue -> free slot -> a job forked from this warm runner (one process
    per cell, warm.py), or a LocalExecutor job for a slot of several GPUs; SIGTERM stops cleanly."""

    def __init__(self, plan: dict):
        self.folder = Path(plan["folder"])
        self.queue = [(Path(c["run_dir"]), rundir.new_attempt()) for c in plan["cells"]]  # (run dir, attempt)
        self.slots = [res.Slot(tuple(s["gpus"]), s["threads"]) for s in plan["slots"]]
        self.running: dict[int, tuple[Path, object, str, object]] = {}  # slot -> (run dir, job, attempt, held)
        self.machine = MachineSlots()  # this runner's slots are also the machine's: other runners share them
        self.stopping = False
        self.warm = False

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        me = os.getpid()
        for run_dir, attempt in self.queue:
            rundir.update_status(run_dir, state="queued", executor=LocalExecutor.name, runner_pid=me, job_id=None,
                                 attempt_id=attempt, submitit_folder=str(self.folder), submitted=time.time(),
                                 error=None, note=None, ended=None, scheduler_state=None)
        (self.folder / "ready").touch()
        log(f"runner {me}: {len(self.queue)} cells, slots: {', '.join(s.label() for s in self.slots)}")
        self.warm = warm.enabled() and any(len(s.gpus) <= 1 for s in self.slots) and self._warm_up()
        signalled = False
        while (self.queue and not self.stopping) or self.running:
            if self.stopping and not signalled:
                self._stop_all()
                signalled = True
            for i, slot in enumerate(self.slots):
                if i not in self.running and self.queue and not self.stopping:
                    held = self.machine.take(slot, f"runner {me}: {self.queue[0][0]}\n")
                    if held is not None:  # else another runner's jobs hold the machine: wait
                        self._start(i, slot, self.queue.pop(0), held)
            for i, (run_dir, job, attempt, held) in list(self.running.items()):
                if job.done():
                    log(f"{run_dir.name}: {finish(run_dir, job, attempt, echo=log)}")
                    held.release()
                    del self.running[i]
            time.sleep(POLL_S)
        for run_dir, attempt in self.queue:  # stopped before their turn: nothing ran, resumable as before
            rundir.update_status(run_dir, expect={"attempt_id": attempt, "state": "queued"}, state="pending",
                                 note="not started: the local runner was stopped", runner_pid=None)
        log(f"runner {me}: done")
        return 0

    def _warm_up(self) -> bool:
        """Import torch here once, so that single-process cells fork from this runner (warm.py)."""
        t0 = time.perf_counter()
        try:
            warm.warm_up()
        except Exception as e:  # a broken torch install: every job a fresh process, as before
            log(f"warm start unavailable ({type(e).__name__}: {e}); each cell starts a fresh process")
            return False
        log(f"warm: torch imported in {time.perf_counter() - t0:.1f}s; single-process cells fork from this runner")
        return True

    def _start(self, i: int, slot: res.Slot, cell: tuple[Path, str], held) -> None:
        run_dir, attempt = cell
        status = rundir.read_status(run_dir)
        if status.get("state") != "queued" or status.get("attempt_id") != attempt:  # cancelled, or taken over
            log(f"{run_dir.name}: no longer queued for this runner, skipped")
            held.release()
            return
        cell_job = CellJob(str(run_dir), slot.threads, attempt)
        if self.warm and len(slot.gpus) <= 1:
            others = [fd for *_, other in self.running.values() for fd in other.fds]
            job = ForkedJob(self.folder / run_dir.name, cell_job, slot.gpus, close=others)
        else:  # a process per GPU (or ABLATE_WARM=0): submitit starts them
            ex = submitit.LocalExecutor(folder=str(self.folder / run_dir.name), max_num_timeout=_max_requeue(run_dir))
            params = dict(timeout_min=res.LOCAL_TIMEOUT_MIN, gpus_per_node=len(slot.gpus),
                          tasks_per_node=max(1, len(slot.gpus)))
            if slot.gpus:
                params["visible_gpus"] = list(slot.gpus)
            ex.update_parameters(**params)
            job = ex.submit(cell_job)
        rundir.update_status(run_dir, expect={"attempt_id": attempt}, job_id=str(job.job_id), slot=slot.label(),
                             stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
        self.running[i] = (run_dir, job, attempt, held)
        log(f"{run_dir.name}: started job {job.job_id} on {slot.label()} (machine: {', '.join(held.names)})")

    def _stop_all(self) -> None:
        log("stopping: SIGTERM to running jobs")
        for run_dir, job, _, _ in self.running.values():
            if pid_alive(job.job_id):  # a local job's id is its controller's pid
                try:
                    os.kill(int(job.job_id), signal.SIGTERM)  # the controller forwards it to the trainer
                except ProcessLookupError:
                    pass


def _max_requeue(run_dir: Path) -> int:
    doc = rundir.read_json(run_dir / rundir.CONFIG) or {}
    return int((doc.get("resources") or {}).get("max_requeue", 3))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_debug(cells, folder: Path, echo=print) -> None:
    """`--executor debug`: submitit's in-process executor, one cell after the other."""
    for cell in cells:
        attempt = rundir.new_attempt()
        ex = submitit.DebugExecutor(folder=str(folder / cell.run_id))
        job = ex.submit(CellJob(str(cell.run_dir.resolve()), None, attempt))
        # job_id: this process, which is where the cell runs (procs.local_view checks it is alive)
        rundir.update_status(cell.run_dir, state="queued", executor=DebugExecutor.name, job_id=str(os.getpid()),
                             runner_pid=None, attempt_id=attempt, submitit_folder=str(ex.folder),
                             submitted=time.time(), error=None, note=None, ended=None, scheduler_state=None)
        echo(f"running {cell.run_id} in-process (debug)")
        try:
            job.submission().result()  # not job.result(): that opens pdb on an exception
        except Exception as e:
            rundir.update_status(cell.run_dir, expect={"attempt_id": attempt, "state": ("queued", "running")},
                                 state="failed", ended=time.time(), error=str(e)[-3000:])
        echo(f"{cell.run_id}: {rundir.state_of(cell.run_dir)}")


class LocalExecutor(Executor):
    """A runner process on this machine hands cells to free slots (GPU groups or CPU shares)."""
    name = "local"
    unstarted = "pending"  # the runner stopped before the cell's turn: nothing ran, resumable

    def __init__(self, slots: list | None = None):
        self.slots = slots

    @classmethod
    def for_submit(cls, grid, *, jobs=None, gpus=None, array_parallelism=None, echo=print) -> "LocalExecutor":
        res.check_one_node(grid.resources, cls.name)
        return cls(res.local_slots(grid.resources, res.parse_gpus(gpus), jobs, warn=echo))

    def dispatch(self, grid, cells, folder, echo=print) -> LocalRunner:
        runner = LocalRunner(start_runner(grid, cells, self.slots, folder))
        echo(f"started {len(cells)} cell(s) on {len(self.slots)} local slot(s) "
             f"({', '.join(s.label() for s in self.slots[:8])}); runner pid {runner.pid}, log {folder}/runner.log")
        return runner

    def after_dispatch(self, wait: bool, detach: bool) -> str:
        return "return" if detach else "watch"

    def views(self, statuses: list[dict]) -> list[JobView | None]:
        return [local_view(s) if s.get("state") != "done" else None for s in statuses]

    def cancel(self, jobs: list[tuple[str, dict]], grace_s: float, echo=print) -> list[str]:
        """SIGTERM each live job (it checkpoints), then SIGKILL what still runs grace_s later."""
        signalled = []
        for run_id, s in jobs:
            job = s.get("job_id")
            if job and str(job).isdigit() and pid_alive(job):
                try:
                    os.kill(int(job), signal.SIGTERM)  # the submitit controller forwards it to the trainer
                    signalled.append((run_id, int(job)))
                except ProcessLookupError:
                    pass
        return stop_or_kill(signalled, grace_s, echo)


class DebugExecutor(Executor):
    """In this process, one cell after the other (submitit's DebugExecutor): for tests and pdb."""
    name = "debug"
    unstarted = "pending"

    @classmethod
    def for_submit(cls, grid, *, jobs=None, gpus=None, array_parallelism=None, echo=print) -> "DebugExecutor":
        res.check_one_node(grid.resources, cls.name)
        return cls()

    def dispatch(self, grid, cells, folder, echo=print) -> None:
        run_debug(cells, folder, echo=echo)

    def after_dispatch(self, wait: bool, detach: bool) -> str:
        return "ran"

    def views(self, statuses: list[dict]) -> list[JobView | None]:
        # its "job" is the submitting process: alive while a cell it runs says queued / running
        return [local_view(s) if s.get("state") in WORKING else None for s in statuses]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(argv[0]).read_text())
    return Runner(plan).run()


if __name__ == "__main__":
    sys.exit(main())
