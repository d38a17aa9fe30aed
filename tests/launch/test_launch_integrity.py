"""Launching without losing anything: a stale runner never writes over a retried cell, `cancel`
escalates to SIGKILL after its grace period, submit / run say (exit 3) when a cell ended badly."""
import os
import signal
import subprocess
import sys
import time

from ablate.launch.procs import pid_alive
from ablate.launch.submit import write_config
from ablate.core import rundir
from ablate.plan.grid import load_grid
from launch_helpers import ROOT, cli, run_dirs, states, wait_until
from launch_helpers import grid_file, no_leftover_jobs, one_thread  # noqa: F401  (fixtures)

LONG = dict(steps=10 ** 7, log_interval=50, eval_interval=500, ckpt_interval=500)


def test_a_leftover_runner_never_overwrites_the_retried_attempt(grid_file):
    """The issue's reproduction, made deterministic: the old runner is stopped (SIGSTOP) while its
    trainer is killed and the cell retried, then resumed once the new attempt runs. It must notice
    its job died and write nothing: the run is no longer its attempt's."""
    grid = grid_file(**LONG)
    r = cli("submit", grid, "--executor", "local", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    run_dir = wait_until(lambda: [d for d in run_dirs("g") if rundir.read_status(d).get("step", 0) >= 100], 90,
                         "step 100")[0]
    first = rundir.read_status(run_dir)
    old_runner, trainer, controller = int(first["runner_pid"]), int(first["pid"]), int(first["job_id"])
    os.kill(old_runner, signal.SIGSTOP)
    try:
        os.kill(trainer, signal.SIGKILL)
        wait_until(lambda: not pid_alive(controller), 30, "the dead trainer's job to end")
        r = cli("submit", grid, "--executor", "local", "--retry", "--detach")
        assert r.returncode == 0 and "submitted 1 cell" in r.stdout, r.stdout + r.stderr
        wait_until(lambda: rundir.read_status(run_dir).get("attempts") == 2
                   and rundir.read_status(run_dir).get("state") == "running", 90, "the retry to run")
        new_runner = int(rundir.read_status(run_dir)["runner_pid"])
        _signal(old_runner, signal.SIGCONT)
        wait_until(lambda: not pid_alive(old_runner), 60, "the old runner to notice its job ended and exit")
        status = rundir.read_status(run_dir)
        assert status["state"] == "running" and status["attempt_id"] != first.get("attempt_id"), status
        step = status.get("step", 0)
        wait_until(lambda: rundir.read_status(run_dir).get("step", 0) > step, 60, "the retried attempt to go on")
        assert rundir.read_status(run_dir)["state"] == "running"
    finally:  # whatever happened, nothing of this test keeps running
        _signal(old_runner, signal.SIGCONT)
        rundir.update_status(run_dir, state="running")  # so that cancel signals the live job
        cli("cancel", grid)
        for pid in {old_runner, int(rundir.read_status(run_dir).get("runner_pid") or old_runner)}:
            wait_until(lambda: not pid_alive(pid), 60, "the runners to exit")
    assert rundir.state_of(run_dir) == "cancelled" and new_runner != old_runner


def _signal(pid: int, signum) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:  # already gone (and reaped)
        pass


_STUBBORN = ("import signal, subprocess, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
             "child = subprocess.Popen([sys.executable, '-c', 'import signal, time; "
             "signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(600)']); "
             "print(child.pid, flush=True); time.sleep(600)")


def test_cancel_kills_a_job_that_ignores_sigterm_after_the_grace_period(grid_file):
    """A job in a step longer than the grace period (here: one that ignores SIGTERM, as a trainer in
    a long step does until the step ends) and its child process are SIGKILLed; the cell is cancelled."""
    grid = load_grid(grid_file())
    cell = grid.cells[0]
    write_config(grid, cell, "test")
    job = subprocess.Popen([sys.executable, "-c", _STUBBORN], stdout=subprocess.PIPE, text=True)
    child = int(job.stdout.readline())
    rundir.update_status(cell.run_dir, state="running", executor="local", job_id=str(job.pid), attempt_id="a",
                         started=time.time())
    try:
        t0 = time.time()
        r = cli("cancel", grid.path, "--grace", "2")
        assert r.returncode == 0, r.stderr
        assert "killed (SIGKILL)" in r.stdout and time.time() - t0 < 60, r.stdout
        assert job.wait(timeout=10) == -signal.SIGKILL
        wait_until(lambda: not pid_alive(child), 10, "the job's child to be killed too")
        assert rundir.state_of(cell.run_dir) == "cancelled"
    finally:
        for pid in (job.pid, child):
            _signal(pid, signal.SIGKILL)


def test_submit_and_run_exit_3_when_a_cell_ends_badly(grid_file):
    grid = grid_file(grid="{arch: [gpt, ngpt]}", extra=", diverge_loss: 0.5")  # every loss is above 0.5
    r = cli("submit", grid, "--executor", "debug")
    assert r.returncode == 3, r.stdout + r.stderr
    assert "2 cell(s) ended diverged" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert states("g") == ["diverged", "diverged"]
    r = cli("run", grid, "--executor", "debug", "--retry")
    assert r.returncode == 3 and "== report" in r.stdout, r.stdout + r.stderr
    ok = grid_file(name="ok", steps=5)
    r = cli("submit", ok, "--executor", "debug")
    assert r.returncode == 0, r.stdout + r.stderr
