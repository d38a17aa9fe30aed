"""Against a real single-node Slurm (scripts/start-slurm.sh; .ci/run starts one with two fake GPUs).
Skipped, with the reason, only when no Slurm controller answers here.

Every job trains a 2-layer, 32-wide character model for tens to thousands of steps on one core."""
import json
import os
import subprocess
import time
from pathlib import Path

import pytest

from ablate.launch import resources as res
from ablate.launch.submit import submit
from ablate.core import rundir
from ablate.plan.grid import load_grid
from launch_helpers import cli, sacct_state, settle, slurm_skip_reason, steps_unbroken, wait_until
from launch_helpers import grid_file, one_thread  # noqa: F401  (fixtures)

SKIP = slurm_skip_reason()
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(SKIP is not None, reason=SKIP or "")]


def status_of(cell) -> dict:
    return rundir.read_status(cell.run_dir)


def test_three_cells_as_one_array_run_to_done_and_are_never_submitted_twice(grid_file):
    path = grid_file(name="arr", grid="{seed: [1, 2, 3]}")
    t0 = time.time()
    r = cli("submit", path, "--executor", "slurm", "--array-parallelism", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert time.time() - t0 < 20  # returns at once: no waiting for the jobs
    assert "(3 tasks, 2 at a time" in r.stdout and "ablate status" in r.stdout
    grid = load_grid(path)
    ids = [status_of(c)["job_id"] for c in grid.cells]
    base = ids[0].split("_")[0]
    assert ids == [f"{base}_0", f"{base}_1", f"{base}_2"]
    r = cli("submit", path, "--executor", "slurm", "--retry", "--force")  # while queued / running
    assert "nothing to submit" in r.stdout and r.stdout.count("never submitted twice") == 3, r.stdout

    cells = settle(path)
    assert [c.state for c in cells] == ["done"] * 3
    wait_until(lambda: [sacct_state(i) for i in ids] in (["COMPLETED"] * 3, ["?"] * 3), 30,
               "sacct to say COMPLETED")  # "?": a cluster without accounting
    r = cli("status", path)
    assert r.returncode == 0 and r.stdout.startswith("grid arr: 3 done"), r.stdout
    r = cli("report", path, "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    report = Path(os.environ["ABLATE_REPORTS_DIR"]) / "arr"
    assert (report / "loss_curves.png").stat().st_size > 1000 and (report / "index.html").exists()
    assert "3 runs in the store (3 done)" in (report / "summary.md").read_text()
    r = cli("submit", path, "--executor", "slurm")
    assert "nothing to submit" in r.stdout and r.stdout.count("done (use --force to retrain)") == 3


def test_arrays_split_at_max_array_size(grid_file, monkeypatch):
    monkeypatch.setattr(res, "max_array_size", lambda: 2)
    path = grid_file(name="split", grid="{seed: [1, 2, 3]}", steps=10)
    grid = load_grid(path)
    submit(grid, grid.cells, executor="slurm")
    arrays = [status_of(c)["array_job_id"] for c in grid.cells]
    assert arrays[0] == arrays[1] != arrays[2]
    assert [c.state for c in settle(path)] == ["done"] * 3


def test_a_failing_job_is_shown_failed_with_its_error(grid_file):
    # flash attention (bf16) on a GPU-less node: the plan accepts it (device auto), the trainer refuses
    path = grid_file(name="fail", grid="{attn_backend: [flash]}", device="auto", extra=", dtype: bf16")
    r = cli("submit", path, "--executor", "slurm", "--wait", timeout=180)
    assert r.returncode == 3, r.stdout + r.stderr  # a cell it waited for ended failed
    assert "grid fail: 1 failed" in r.stdout  # --wait returned once the job had ended
    assert "1 cell(s) ended failed" in r.stderr
    job = status_of(load_grid(path).cells[0])["job_id"]
    assert sacct_state(job) in ("FAILED", "?")
    r = cli("status", path)
    assert r.stdout.startswith("grid fail: 1 failed")
    row = [l for l in r.stdout.splitlines() if " failed " in l][0]
    assert job in row and "flash" in row, r.stdout
    assert "use --retry" in cli("submit", path, "--executor", "slurm").stdout


def test_a_job_killed_without_a_word_is_shown_with_its_scheduler_state(grid_file):
    path = grid_file(name="killed", steps=20000, log_interval=100, eval_interval=5000, ckpt_interval=5000)
    assert cli("submit", path, "--executor", "slurm").returncode == 0
    cell = load_grid(path).cells[0]
    wait_until(lambda: status_of(cell).get("step", 0) >= 100, 60, "step 100")
    os.kill(int(status_of(cell)["pid"]), 9)  # the trainer dies at once (think: the kernel's OOM killer)
    cells = settle(path, timeout=60)
    assert cells[0].state == "failed" and "without writing a final state" in cells[0].note
    r = cli("status", path)
    row = [l for l in r.stdout.splitlines() if " failed " in l][0]
    assert "FAILED" in row and "without writing a final state" in row, r.stdout
    st = status_of(cell)
    assert st["state"] == "failed" and st["scheduler_state"] == "FAILED"  # recorded by `ablate status`


def test_cancel_running_and_pending_cells(grid_file):
    path = grid_file(name="canc", grid="{seed: [1, 2]}", steps=20000, log_interval=100, eval_interval=5000,
                     ckpt_interval=5000)
    assert cli("submit", path, "--executor", "slurm", "--array-parallelism", "1").returncode == 0
    grid = load_grid(path)
    running = wait_until(lambda: [c for c in grid.cells if status_of(c).get("step", 0) >= 100], 60, "step 100")[0]
    waiting = [c for c in grid.cells if c is not running][0]
    r = cli("status", path)
    assert "1 running, 1 queued" in r.stdout and "JobArrayTaskLimit" in r.stdout, r.stdout
    r = cli("cancel", path)
    assert r.returncode == 0 and r.stdout.count("cancelled ") == 2, r.stdout
    cells = settle(path, timeout=60)
    assert [c.state for c in cells] == ["cancelled", "cancelled"]
    st = status_of(running)
    assert st["ckpt_step"] >= 100 and st["note"] == "cancelled"  # the trainer saved on scancel's SIGTERM
    assert sacct_state(st["job_id"]) in ("CANCELLED", "?") and sacct_state(status_of(waiting)["job_id"]) in ("CANCELLED", "?")
    assert "2 cancelled" in cli("status", path).stdout
    assert "nothing to cancel" in cli("cancel", path).stdout


def test_time_limit_checkpoints_requeues_and_finishes_with_an_unbroken_curve(grid_file):
    """time_min 1: Slurm sends SIGUSR2 10 s (+ up to 30 s) before the limit; the trainer saves,
    submitit requeues; the job resumes from ckpt.pt, as often as it takes (max_requeue)."""
    # ~60 s of training at this machine's ~250 steps/s, more than the first attempt gets
    path = grid_file(name="requeue", steps=14000, log_interval=100, eval_interval=2000, ckpt_interval=4000,
                     resources="{time_min: 1, max_requeue: 20}")  # as many as a loaded machine needs
    assert cli("submit", path, "--executor", "slurm").returncode == 0
    cells = settle(path, timeout=400, nudge_requeued=True)
    cell = load_grid(path).cells[0]
    st = status_of(cell)
    assert cells[0].state == "done" and st["attempts"] >= 2, st
    steps_unbroken(cell.run_dir, rundir.METRICS, 100, 14000)
    steps_unbroken(cell.run_dir, rundir.EVALS, 2000, 14000)
    losses = [json.loads(l)["loss"] for l in (cell.run_dir / rundir.METRICS).read_text().splitlines()]
    assert all(isinstance(x, float) for x in losses) and losses[-1] < losses[0]
    log = open(st["stdout"]).read() + open(st["stderr"]).read()
    assert "Requeued job" in log and "resumed from" in log and "timed-out" in log
    # the job writes "done" a moment before its process exits and accounting catches up (slurmdbd
    # on a loaded 2-core machine, now shared with the two-node cluster, took over 60 s once)
    wait_until(lambda: sacct_state(st["job_id"]) in ("COMPLETED", "?"), 240, "sacct to say COMPLETED", poll=1.0)


def _cluster_gpus() -> int:
    out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=30).stdout
    return max([int(g.rsplit(":", 1)[1].split("(")[0]) for g in out.split() if g.startswith("gpu")] or [0])


def test_gpus_use_fake_gres_or_give_a_clear_error(grid_file):
    path = grid_file(name="gpu", resources="{gpus: 1}")
    r = cli("submit", path, "--executor", "slurm")
    if _cluster_gpus() == 0:
        assert r.returncode == 2 and "no node of this cluster has GPUs" in r.stderr and "SLURM_FAKE_GPUS" in r.stderr
        return
    assert r.returncode == 0, r.stdout + r.stderr
    assert [c.state for c in settle(path)] == ["done"]
    st = status_of(load_grid(path).cells[0])
    script = (Path(st["submitit_folder"]) / f"{st['job_id']}_submission.sh").read_text()
    assert "#SBATCH --gpus-per-node=1" in script  # and Slurm scheduled it on the node's (fake) GPUs
    # another seed: the same cell under another grid is the run already done above, shared, not resubmitted
    path = grid_file(name="gpus", grid="{seed: [2]}", resources=f"{{gpus: {_cluster_gpus() + 1}}}")
    r = cli("submit", path, "--executor", "slurm")
    assert r.returncode == 2 and f"at most {_cluster_gpus()} GPUs" in r.stderr, r.stderr
