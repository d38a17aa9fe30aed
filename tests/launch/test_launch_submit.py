"""submit(): which cells run, idempotency, the debug executor in-process, and Slurm arrays
against a fake sbatch (no cluster needed: the real one is exercised in test_launch_slurm.py)."""
import json
import os
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.launch import state as scheduler
from ablate.launch.executor import JobView
from ablate.launch.submit import select_cells, submit
from ablate.core import rundir
from ablate.plan.grid import load_grid
from launch_helpers import steps_unbroken
from launch_helpers import fake_slurm, grid_file, one_thread  # noqa: F401  (fixtures)


def _view(rid, state, job=None):
    return scheduler.CellState(rid, Path("/nonexistent") / rid, {"state": state}, state, job)


def test_select_cells_rules():
    live = JobView("12_0", "RUNNING", True)
    views = [_view("new", "new"), _view("pend", "pending"), _view("done", "done"), _view("fail", "failed"),
             _view("oom", "oom"), _view("div", "diverged"), _view("canc", "cancelled"),
             _view("run", "running", live), _view("lostq", "queued", JobView("9", "GONE", False))]
    run, skipped = select_cells(views)
    assert run == ["new", "pend"]
    assert "use --retry" in skipped["fail"] and "use --force" in skipped["done"]
    assert "never submitted twice" in skipped["run"] and "12_0" in skipped["run"]
    assert select_cells(views, retry=("failed", "oom"))[0] == ["new", "pend", "fail", "oom"]
    assert select_cells(views, retry=("all",))[0] == ["new", "pend", "fail", "oom", "div", "canc"]
    # --force retrains everything except what a live job owns
    assert "run" not in select_cells(views, force=True)[0] and "done" in select_cells(views, force=True)[0]


def test_retry_names_are_checked(grid_file):
    grid = load_grid(grid_file())
    with pytest.raises(AblateError, match="--retry done: not a retryable state"):
        submit(grid, grid.cells, executor="debug", retry=("done",))


def test_debug_executor_runs_in_process_then_nothing_to_submit(grid_file, capsys):
    grid = load_grid(grid_file(grid="{arch: [gpt, ngpt]}"))
    assert len(submit(grid, grid.cells, executor="debug")) == 2
    for cell in grid.cells:
        st = rundir.read_status(cell.run_dir)
        assert (st["state"], st["executor"], st["attempts"]) == ("done", "debug", 1)
        steps_unbroken(cell.run_dir, rundir.METRICS, 5, 30)
    assert submit(grid, grid.cells, executor="debug") == []
    assert "nothing to submit" in capsys.readouterr().out


def test_failed_cells_rerun_only_with_retry_and_force_starts_over(grid_file, capsys):
    # flash attention (bf16) on a CPU-only machine: the plan accepts it (device auto), the job fails
    grid = load_grid(grid_file(grid="{attn_backend: [sdpa, flash]}", device="auto", extra=", dtype: bf16"))
    ok, bad = grid.cells
    submit(grid, grid.cells, executor="debug")
    assert rundir.state_of(ok.run_dir) == "done" and rundir.state_of(bad.run_dir) == "failed"
    assert "flash" in rundir.read_status(bad.run_dir)["error"]
    capsys.readouterr()
    assert submit(grid, grid.cells, executor="debug") == []
    assert "use --retry" in capsys.readouterr().out
    assert [c.run_id for c in submit(grid, grid.cells, executor="debug", retry=("oom",))] == []
    assert [c.run_id for c in submit(grid, grid.cells, executor="debug", retry=("failed",))] == [bad.run_id]
    assert rundir.read_status(bad.run_dir)["attempts"] == 2

    before = (ok.run_dir / rundir.METRICS).stat().st_mtime_ns
    assert [c.run_id for c in submit(grid, [ok], executor="debug", force=True)] == [ok.run_id]
    assert rundir.read_status(ok.run_dir)["attempts"] == 1  # files deleted: a fresh start
    assert (ok.run_dir / rundir.METRICS).stat().st_mtime_ns != before


def test_a_cell_owned_by_a_live_job_is_never_submitted_again(grid_file, capsys):
    grid = load_grid(grid_file())
    cell = grid.cells[0]
    cell.run_dir.mkdir(parents=True)
    # as if a local job (this very process) were running it; the file could even say "failed"
    for state in ("running", "queued", "failed"):
        rundir.update_status(cell.run_dir, state=state, executor="local", job_id=str(os.getpid()))
        assert submit(grid, grid.cells, executor="debug", retry=("all",), force=True) == []
        assert "never submitted twice" in capsys.readouterr().out


def test_a_job_that_died_without_a_word_counts_as_failed(grid_file, capsys):
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    grid = load_grid(grid_file())
    cell = grid.cells[0]
    cell.run_dir.mkdir(parents=True)
    rundir.update_status(cell.run_dir, state="running", executor="local", job_id=str(gone.pid), started=1.0)
    assert submit(grid, grid.cells, executor="debug") == []
    st = rundir.read_status(cell.run_dir)
    assert st["state"] == "failed" and "without writing a final state" in st["error"]
    assert len(submit(grid, grid.cells, executor="debug", retry=("failed",))) == 1
    assert rundir.state_of(cell.run_dir) == "done"


def test_slurm_arrays_split_at_max_array_size_recorded_then_released(grid_file, fake_slurm, capsys):
    grid = load_grid(grid_file(grid="{seed: [1, 2, 3, 4, 5]}", resources="{time_min: 5, cpus: 2}"))
    submitted = submit(grid, grid.cells, executor="slurm", array_parallelism=1)
    assert len(submitted) == 5
    out = capsys.readouterr().out
    assert "submitted array 42 (2 tasks, 1 at a time" in out and "array 44 (1 tasks" in out
    assert (fake_slurm / "scontrol.log").read_text().split("\n")[:3] == ["release 42", "release 43", "release 44"]
    ids = [rundir.read_status(c.run_dir)["job_id"] for c in grid.cells]
    assert ids == ["42_0", "42_1", "43_0", "43_1", "44"]
    st = rundir.read_status(grid.cells[1].run_dir)
    assert (st["state"], st["executor"], st["array_job_id"], st["array_index"]) == ("queued", "slurm", "42", 1)
    assert st["stderr"].endswith("array0/42_1_0_log.err") and ".submitit" in st["submitit_folder"]
    script = (fake_slurm / "script.42").read_text()
    assert "#SBATCH --array=0-1%1" in script and "#SBATCH --hold" in script and "--cpus-per-task=2" in script
    assert "#SBATCH --signal=USR2@50" in script and "#SBATCH --job-name=ablate-g" in script
    # each array's pickles hold a CellJob with nothing but the absolute run dir and its threads
    import cloudpickle

    job = cloudpickle.loads((Path(st["submitit_folder"]) / "42_1_submitted.pkl").read_bytes()).function
    assert type(job).__name__ == "CellJob" and job.run_dir == str(grid.cells[1].run_dir.resolve()) and job.threads == 2
    assert json.loads((grid.cells[0].run_dir / rundir.CONFIG).read_text())["resources"]["cpus"] == 2


def test_sbatch_refusal_is_one_clear_line(grid_file, fake_slurm):
    (fake_slurm / "sbatch").write_text("#!/bin/sh\necho 'sbatch: error: Batch job submission failed: "
                                       "Invalid generic resource (gres) specification' >&2\nexit 1\n")
    grid = load_grid(grid_file())
    with pytest.raises(AblateError) as e:
        submit(grid, grid.cells, executor="slurm")
    assert "sbatch refused 1 cell(s) of grid g" in str(e.value) and "Invalid generic resource" in str(e.value)
    assert "\n" not in str(e.value) and rundir.state_of(grid.cells[0].run_dir) == "new"


def test_gpus_on_a_cluster_without_gpus_is_a_clear_error(grid_file, fake_slurm):
    (fake_slurm / "sinfo").write_text("#!/bin/sh\necho '(null)'\n")
    grid = load_grid(grid_file(resources="{gpus: 1}"))
    with pytest.raises(AblateError, match="resources.gpus is 1 but no node of this cluster has GPUs.*SLURM_FAKE_GPUS"):
        submit(grid, grid.cells, executor="slurm")


@pytest.mark.parametrize("ping, expected", [
    ("Slurmctld(primary) at vm is UP", "slurm"),
    ("Slurmctld(primary) at vm is DOWN", "no Slurm controller answers (scontrol ping: Slurmctld(primary) at vm is DOWN)"),
])
def test_default_executor_is_slurm_only_where_its_controller_answers(fake_slurm, ping, expected):
    from ablate.launch.executors import default_name as default_executor

    (fake_slurm / "scontrol").write_text(f"#!/bin/sh\necho '{ping}'\n")
    if expected == "slurm":
        assert default_executor() == "slurm"
    else:  # installed but silent: an error naming the way out, never a quiet local run on a login node
        with pytest.raises(AblateError, match="--executor local") as e:
            default_executor()
        assert expected in str(e.value) and "\n" not in str(e.value)


def test_default_executor_is_local_without_slurm(monkeypatch, tmp_path):
    from ablate.launch.executors import default_name as default_executor

    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch anywhere
    assert default_executor() == "local"


def test_a_second_submit_of_a_grid_waits_its_turn(grid_file, capsys):
    """Two submits of one grid at once take turns on its lock (as README says): the second waits,
    saying so, and then finds the cells the first took (nothing to submit twice)."""
    import fcntl
    import threading

    grid = load_grid(grid_file())
    grid.runs_dir.mkdir(parents=True, exist_ok=True)
    with open(grid.runs_dir / ".submit.lock", "w") as held:  # the first submit, dispatching
        fcntl.flock(held, fcntl.LOCK_EX)
        second = threading.Thread(target=submit, args=(grid, grid.cells), kwargs={"executor": "debug"})
        second.start()
        second.join(timeout=2)
        assert second.is_alive()  # waiting, not failed
        fcntl.flock(held, fcntl.LOCK_UN)
    second.join(timeout=300)
    out = capsys.readouterr().out
    assert f"waiting for another `ablate submit` of grid {grid.name} to hand its cells over..." in out
    assert rundir.state_of(grid.cells[0].run_dir) == "done"
