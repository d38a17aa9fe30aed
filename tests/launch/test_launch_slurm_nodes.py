"""Multi-node against a real Slurm of two nodes: `resources: {nodes: 2, gpus: 2}` runs 2 x 2 ranks
through submitit, which meet from Slurm's environment and train as one world; a stop signal to a
task of the second node requeues the whole job once.

The cluster is ci2 (scripts/slurm-two-nodes.sh; `SLURM_TWO_NODES=1 scripts/start-slurm.sh`): two
slurmd, each in its own network namespace with its own address, so Slurm, srun and gloo see two
hosts; the GPUs are fake (device: cpu, gloo). Skipped, saying why, when ci2 does not answer.
A 2-layer, 32-wide character model; every step of the 4 ranks shares this machine's cores."""
import os
import signal
import subprocess
from pathlib import Path

import pytest

from ablate.core import rundir
from ablate.plan.grid import load_grid
from launch_helpers import cli, settle, slurm_skip_reason, steps_unbroken, wait_until
from launch_helpers import grid_file, one_thread  # noqa: F401  (fixtures)

CONF = str(Path(os.environ.get("SLURM_STATE_DIR", "/tmp/slurm")) / "two-nodes" / "slurm.conf")
SKIP = slurm_skip_reason(CONF, start="SLURM_TWO_NODES=1 scripts/start-slurm.sh")
pytestmark = [pytest.mark.slurm, pytest.mark.skipif(SKIP is not None, reason=f"two-node cluster ci2: {SKIP}")]

TWO_NODES = "{nodes: 2, gpus: 2, partition: two, time_min: 10, max_requeue: 2}"
EXTRA = ", grad_accum: 4"  # the global batch: one micro-batch per rank of 4, four for one process


@pytest.fixture(autouse=True)
def cluster(monkeypatch):
    """Every Slurm command of the test and of the jobs it submits asks ci2. Afterwards, a job a failed
    test left is cancelled: its other ranks would wait for the killed one in a collective."""
    monkeypatch.setenv("SLURM_CONF", CONF)
    yield
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    ids = {(rundir.read_json(p) or {}).get("job_id") for p in runs.glob("*/*/" + rundir.STATUS)} - {None}
    if ids:
        subprocess.run(["scancel", *sorted(ids)], capture_output=True, timeout=60)


def task_logs(status: dict) -> list[str]:
    """Each task's stdout + stderr: submitit writes one log per task (%t), beside task 0's, which
    status.json names (submitit's own lines go to stdout, the trainer's to stderr)."""
    out = []
    for t in range(4):
        paths = [status[k][:-len("0_log.xxx")] + f"{t}_log.{k[3:]}" for k in ("stdout", "stderr")]
        out.append("".join(Path(p).read_text() for p in paths))
    return out


def test_two_nodes_of_two_tasks_train_as_one_world_equal_to_one_process(grid_file, tmp_path):
    from ablate.train.job import train  # torch: only this test needs it

    path = grid_file(name="nodes", grid="{strategy: [ddp, fsdp]}", steps=10, eval_interval=5, ckpt_interval=0,
                     resources=TWO_NODES, extra=EXTRA)
    r = cli("submit", path, "--executor", "slurm", "--wait", timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    for cell in load_grid(path).cells:
        st = rundir.read_status(cell.run_dir)
        assert (st["state"], st["world_size"], rundir.read_json(cell.run_dir / rundir.SUMMARY)["world_size"]) == (
            "done", 4, 4)
        logs = task_logs(st)
        for t, log in enumerate(logs):  # where srun put each task: two per node
            assert f"(node ablnode{1 + t // 2}, task {t} of 4)" in log, log
        assert "step 10/10" in logs[0] and not any("step 10/10" in log for log in logs[1:])  # rank 0 reports
        # rank 0 alone writes the run dir: one line per logged step, not four
        steps_unbroken(cell.run_dir, rundir.METRICS, 5, 10)
        steps_unbroken(cell.run_dir, rundir.EVALS, 5, 10)

        single = tmp_path / f"single-{cell.run_id}"  # the same config, one process, the same global batch
        single.mkdir()
        rundir.write_json_atomic(single / rundir.CONFIG, rundir.read_json(cell.run_dir / rundir.CONFIG))
        assert train(single) == "done"
        for name, keys in ((rundir.METRICS, ("loss",)), (rundir.EVALS, ("val_loss", "train_loss"))):
            one, four = rundir.read_jsonl(single / name), rundir.read_jsonl(cell.run_dir / name)
            assert [x["step"] for x in one] == [x["step"] for x in four]
            for a, b in zip(one, four):
                for k in keys:
                    assert b[k] == pytest.approx(a[k], abs=2e-6), (cell.run_id, name, a["step"], k)


def _task_pid(status: dict, task: int) -> int | None:
    """The pid of one task of a cell's running job (its python process), from /proc."""
    if status.get("array_index") is None:  # an array of one is a plain job
        want = {f"SLURM_JOB_ID={status['job_id']}", f"SLURM_PROCID={task}"}
    else:
        want = {f"SLURM_ARRAY_JOB_ID={status['array_job_id']}", f"SLURM_ARRAY_TASK_ID={status['array_index']}",
                f"SLURM_PROCID={task}"}
    for proc in Path("/proc").iterdir():
        try:
            if b"submitit.core._submit" not in (proc / "cmdline").read_bytes():
                continue
            env = set((proc / "environ").read_bytes().decode(errors="replace").split("\0"))
        except (OSError, ValueError):
            continue
        if want <= env:
            return int(proc.name)
    return None


def test_a_preemption_signal_to_a_task_of_the_second_node_requeues_the_whole_job_once(grid_file):
    """SIGUSR2 to task 3 only: every rank saves at one step, rank 0 (the only task whose submitit
    handler requeues) requeues the job once, and all four tasks resume from the checkpoint."""
    path = grid_file(name="nodesq", steps=1500, log_interval=50, eval_interval=500, ckpt_interval=0,
                     resources=TWO_NODES, extra=EXTRA)
    assert cli("submit", path, "--executor", "slurm").returncode == 0
    cell = load_grid(path).cells[0]
    wait_until(lambda: rundir.read_status(cell.run_dir).get("step", 0) >= 50, 300, "step 50")
    st = rundir.read_status(cell.run_dir)
    pid = wait_until(lambda: _task_pid(st, 3), 30, "task 3's pid")
    os.kill(pid, signal.SIGUSR2)
    cells = settle(path, timeout=600, nudge_requeued=True)
    st = rundir.read_status(cell.run_dir)
    assert (cells[0].state, st["attempts"], st["world_size"]) == ("done", 2, 4), st
    logs = task_logs(st)
    assert "signal 12: checkpoint saved at step" in logs[0] and logs[0].count("Requeued job") == 1, logs[0]
    assert not any("Requeued job" in log for log in logs[1:])
    assert "resumed from" in logs[0] and "Caught signal SIGUSR2" in logs[3]
    steps_unbroken(cell.run_dir, rundir.METRICS, 50, 1500)
    steps_unbroken(cell.run_dir, rundir.EVALS, 500, 1500)
