"""Warm local jobs (ablate/launch/warm.py): the runner imports torch once and forks each cell, with
a fresh process's isolation: a cell killed (as the OOM killer kills) fails alone and its slot's
next cell runs; a cell that ended frees its slot at once, whatever its siblings still run;
ABLATE_WARM=0 starts every cell as a fresh submitit job, as before."""
import os
import signal

from ablate.core import rundir
from launch_helpers import cli, run_dirs, wait_until
from launch_helpers import grid_file, no_leftover_jobs, one_thread  # noqa: F401  (fixtures)

LONG = dict(log_interval=50, eval_interval=500, ckpt_interval=500)


def by_iters(grid_name: str) -> dict:
    return {rundir.read_config(d)[0].max_iters: d for d in run_dirs(grid_name)}


def test_cells_fork_from_the_runner_and_a_killed_cell_never_takes_the_next_with_it(grid_file):
    grid = grid_file(grid="{max_iters: [10000000, 20, 21]}", **LONG)  # one slot: in this order
    r = cli("submit", grid, "--executor", "local", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    cells = by_iters("g")
    victim = wait_until(lambda: (s := rundir.read_status(cells[10 ** 7])).get("step", 0) >= 50 and s, 300,
                        "the first cell to train")
    assert victim["pid"] == int(victim["job_id"])  # the job is the trainer itself: forked, no controller between
    os.kill(victim["pid"], signal.SIGKILL)  # as the kernel's OOM killer ends a process
    wait_until(lambda: all(rundir.read_status(cells[n]).get("state") == "done" for n in (20, 21)), 300,
               "the slot's next cells to run")
    dead = rundir.read_status(cells[10 ** 7])
    assert dead["state"] == "failed" and "SIGKILL" in dead["error"], dead
    for n in (20, 21):
        st = rundir.read_status(cells[n])
        assert st["pid"] == int(st["job_id"]) != victim["pid"] and st["stderr"].endswith("_0_log.err")
        assert "CUDA_VISIBLE_DEVICES=''" in open(st["stderr"]).read()  # a CPU slot sees no GPU, as submitit's did


def test_a_finished_cell_frees_its_slot_while_its_sibling_still_runs(grid_file):
    """Each child closes its copies of the other jobs' slot locks: otherwise the long cell, forked
    while the short one ran, would hold the short one's core until it ended, and the third cell
    would wait for it."""
    grid = grid_file(grid="{max_iters: [20, 10000000, 21]}", **LONG)  # the long one forks second
    r = cli("submit", grid, "--executor", "local", "--jobs", "2", "--detach")
    assert r.returncode == 0, r.stdout + r.stderr
    cells = by_iters("g")
    wait_until(lambda: rundir.read_status(cells[21]).get("state") == "done", 180, "the third cell to run")
    assert rundir.read_status(cells[10 ** 7])["state"] == "running"
    r = cli("cancel", grid, "--grace", "60")
    assert r.returncode == 0, r.stdout + r.stderr
    wait_until(lambda: rundir.read_status(cells[10 ** 7]).get("state") in ("cancelled", "pending"), 120,
               "the long cell to stop")


def test_warm_off_starts_each_cell_as_a_fresh_submitit_job(grid_file):
    grid = grid_file(grid="{arch: [gpt, ngpt]}")
    r = cli("submit", grid, "--executor", "local", env={"ABLATE_WARM": "0"})
    assert r.returncode == 0 and "grid g: 2 done" in r.stdout, r.stdout + r.stderr
    for d in run_dirs("g"):
        st = rundir.read_status(d)
        assert st["state"] == "done" and st["pid"] != int(st["job_id"])  # the trainer runs under submitit's controller
