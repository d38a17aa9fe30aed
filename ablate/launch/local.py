"""Local execution: a runner process hands cells to free slots (one GPU group, or a share of the
CPU cores, each), one submitit LocalExecutor job per cell; `debug` runs cells in-process.

    ablate submit --executor local        -> runner (own session) -> submitit controller -> train(run_dir)
         | shows progress until done          | one job per free slot, CUDA_VISIBLE_DEVICES = slot,
         | Ctrl-C: the runner stops jobs      | OMP_NUM_THREADS = cores / slots
         | (they checkpoint: state pending)   | SIGTERM: stop starting, SIGTERM the jobs, wait
    ablate submit --detach                -> returns once the runner owns every cell

The runner runs in its own session, so a Ctrl-C in the terminal reaches only the foreground
command, which then asks the runner (SIGTERM) to stop the jobs cleanly: each saves a checkpoint
and the next submit resumes it. status.json records runner_pid while a cell waits for a slot,
then job_id (the submitit controller's pid): `scheduler.local_view` checks both are alive.

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

from ablate.errors import AblateError
from ablate.launch import resources as res
from ablate.plan import rundir

POLL_S = 0.5


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


def finish(run_dir: Path, job, echo=print) -> str:
    """Record a failure the trainer could not record itself (it died before, or was killed)."""
    status = rundir.read_status(run_dir)
    if status.get("state") in ("queued", "running"):
        try:
            error = job.exception()
            text = str(error).strip() if error is not None else "the job ended without writing a final state"
        except Exception as e:  # no result pickle at all: the process was killed
            text = f"the job ended without a result ({type(e).__name__}: {str(e).strip()[-300:]})"
        rundir.update_status(run_dir, state="failed", ended=time.time(),
                             error=status.get("error") or "\n".join(text.splitlines()[-15:]))
        if echo:
            echo(f"{run_dir.name}: failed: {text.splitlines()[-1] if text else ''}")
    return rundir.state_of(run_dir)


class Runner:
    """The runner process: queue -> free slot -> LocalExecutor job; SIGTERM stops cleanly."""

    def __init__(self, plan: dict):
        self.folder = Path(plan["folder"])
        self.queue = [Path(c["run_dir"]) for c in plan["cells"]]
        self.slots = [res.Slot(tuple(s["gpus"]), s["threads"]) for s in plan["slots"]]
        self.running: dict[int, tuple[Path, object]] = {}  # slot index -> (run dir, job)
        self.stopping = False

    def _on_signal(self, signum, frame) -> None:
        self.stopping = True

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        me = os.getpid()
        for run_dir in self.queue:
            rundir.update_status(run_dir, state="queued", executor="local", runner_pid=me, job_id=None,
                                 submitit_folder=str(self.folder), submitted=time.time(), error=None, note=None,
                                 ended=None, scheduler_state=None)
        (self.folder / "ready").touch()
        log(f"runner {me}: {len(self.queue)} cells, slots: {', '.join(s.label() for s in self.slots)}")
        signalled = False
        while (self.queue and not self.stopping) or self.running:
            if self.stopping and not signalled:
                self._stop_all()
                signalled = True
            for i, slot in enumerate(self.slots):
                if i not in self.running and self.queue and not self.stopping:
                    self._start(i, slot, self.queue.pop(0))
            for i, (run_dir, job) in list(self.running.items()):
                if job.done():
                    log(f"{run_dir.name}: {finish(run_dir, job, echo=log)}")
                    del self.running[i]
            time.sleep(POLL_S)
        for run_dir in self.queue:  # stopped before their turn: nothing ran, resumable as before
            if rundir.read_status(run_dir).get("state") == "queued":
                rundir.update_status(run_dir, state="pending", note="not started: the local runner was stopped",
                                     runner_pid=None)
        log(f"runner {me}: done")
        return 0

    def _start(self, i: int, slot: res.Slot, run_dir: Path) -> None:
        import submitit

        from ablate.launch.jobs import CellJob

        if rundir.read_status(run_dir).get("state") != "queued":  # cancelled while it waited
            log(f"{run_dir.name}: no longer queued, skipped")
            return
        ex = submitit.LocalExecutor(folder=str(self.folder / run_dir.name), max_num_timeout=_max_requeue(run_dir))
        params = dict(timeout_min=res.LOCAL_TIMEOUT_MIN, gpus_per_node=len(slot.gpus),
                      tasks_per_node=max(1, len(slot.gpus)))
        if slot.gpus:
            params["visible_gpus"] = list(slot.gpus)
        ex.update_parameters(**params)
        job = ex.submit(CellJob(str(run_dir), slot.threads))
        rundir.update_status(run_dir, job_id=str(job.job_id), slot=slot.label(),
                             stdout=str(job.paths.stdout), stderr=str(job.paths.stderr))
        self.running[i] = (run_dir, job)
        log(f"{run_dir.name}: started job {job.job_id} on {slot.label()}")

    def _stop_all(self) -> None:
        log("stopping: SIGTERM to running jobs")
        for run_dir, job in self.running.values():
            if job._process is not None and job._process.poll() is None:
                job._process.send_signal(signal.SIGTERM)  # the controller forwards it to the trainer


def _max_requeue(run_dir: Path) -> int:
    doc = rundir.read_json(run_dir / rundir.CONFIG) or {}
    return int((doc.get("resources") or {}).get("max_requeue", 3))


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def run_debug(cells, folder: Path, echo=print) -> None:
    """`--executor debug`: submitit's in-process executor, one cell after the other."""
    import submitit

    from ablate.launch.jobs import CellJob

    for cell in cells:
        ex = submitit.DebugExecutor(folder=str(folder / cell.run_id))
        job = ex.submit(CellJob(str(cell.run_dir.resolve())))
        # job_id: this process, which is where the cell runs (scheduler.local_view checks it is alive)
        rundir.update_status(cell.run_dir, state="queued", executor="debug", job_id=str(os.getpid()),
                             runner_pid=None, submitit_folder=str(ex.folder),
                             submitted=time.time(), error=None, note=None, ended=None, scheduler_state=None)
        echo(f"running {cell.run_id} in-process (debug)")
        try:
            job.submission().result()  # not job.result(): that opens pdb on an exception
        except Exception as e:
            if rundir.state_of(cell.run_dir) in ("queued", "running"):
                rundir.update_status(cell.run_dir, state="failed", ended=time.time(), error=str(e)[-3000:])
        echo(f"{cell.run_id}: {rundir.state_of(cell.run_dir)}")


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    plan = json.loads(Path(argv[0]).read_text())
    return Runner(plan).run()


if __name__ == "__main__":
    sys.exit(main())
