"""DDP: two gloo processes on CPU compute the same run as one process with the same global batch."""
import os
import subprocess
from pathlib import Path

import pytest

from ablate.core import rundir
from ablate.train.job import train
from train_helpers import ROOT, assert_same_curves, launch_ranks, log_of, read_lines

CFG = dict(max_iters=20, grad_accum=2, eval_interval=10, eval_iters=4, log_interval=5, ckpt_interval=10)


_launch = launch_ranks


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_two_gloo_processes_equal_one_process(make_run, arch):
    single = make_run("single", arch=arch, **CFG)
    assert train(single) == "done"
    ddp = make_run("ddp", arch=arch, **CFG)
    procs = _launch(ddp, 2)
    for r, p in enumerate(procs):
        assert p.wait(timeout=180) == 0, log_of(ddp, f"rank{r}")
    assert "step 20/20" in log_of(ddp, "rank0") and "step 20/20" not in log_of(ddp, "rank1")  # rank 0 reports

    assert_same_curves(single, ddp, [0, 10, 20], [s * 2 * 8 * 32 for s in (5, 10, 15, 20)])
    e2 = read_lines(ddp / rundir.EVALS)
    assert e2[-1]["val_loss"] < e2[0]["val_loss"] - 0.3  # it learned (in step with the single process)
    status = rundir.read_status(ddp)
    assert (status["state"], status["attempts"], status["world_size"]) == ("done", 1, 2)
    assert rundir.read_json(ddp / rundir.SUMMARY)["world_size"] == 2


def test_every_rank_exits_when_done_ddp_lets_go_of_the_group_before_it_is_destroyed(make_run):
    """One rank of four once hung after its job was done (two-node Slurm): DDP's Reducer, freed
    after the process group was destroyed, was its last holder, and ~ProcessGroupGloo joined gloo's
    threads with the GIL held while a thread waited for the GIL (see distributed.teardown). The probe
    (teardown_probe/sitecustomize.py) counts the DDP modules alive when the group is destroyed:
    none (the race needs one), and both ranks exit."""
    run_dir = make_run("teardown", max_iters=4, grad_accum=2, eval_interval=2, eval_iters=2, log_interval=2,
                       ckpt_interval=2)
    probe = Path(__file__).with_name("teardown_probe")
    procs = _launch(run_dir, 2, env={"ABLATE_TEST_PROBE": str(run_dir), "PYTHONPATH": f"{probe}{os.pathsep}{ROOT}"})
    try:
        codes = [p.wait(timeout=120) for p in procs]
    except subprocess.TimeoutExpired:
        codes = "hung"
    finally:
        for p in procs:
            p.kill()
    alive = [Path(f"{run_dir}.rank{r}.ddp_alive").read_text() for r in range(2)]
    assert (codes, alive) == ([0, 0], ["0", "0"]), log_of(run_dir, "rank1")[-2000:]
    assert rundir.read_status(run_dir)["state"] == "done"


def test_grad_accum_must_divide_over_processes(make_run):
    run_dir = make_run("odd", max_iters=4, grad_accum=3)
    procs = _launch(run_dir, 2)
    assert [p.wait(timeout=180) for p in procs] == [2, 2]
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and "grad_accum': 3 is not divisible by the 2 processes" in status["error"]


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(make_run):
    """Slurm may signal the ranks at different moments: the flag is shared (a CPU all-reduce every
    step), so all ranks save at one step and exit 75; a restart resumes from that checkpoint."""
    import signal
    import time

    import torch

    run_dir = make_run("ddp-stop", max_iters=400, grad_accum=2, eval_interval=100, eval_iters=2, log_interval=5, ckpt_interval=0)
    procs = _launch(run_dir, 2)
    deadline = time.time() + 120
    while rundir.read_status(run_dir).get("step", 0) < 10:
        assert time.time() < deadline and all(p.poll() is None for p in procs), log_of(run_dir, "rank0")
        time.sleep(0.01)
    procs[1].send_signal(signal.SIGUSR2)  # rank 1 only
    assert [p.wait(timeout=120) for p in procs] == [75, 75], log_of(run_dir, "rank0") + log_of(run_dir, "rank1")
    status = rundir.read_status(run_dir)
    step = torch.load(run_dir / rundir.CKPT, weights_only=True)["step"]
    assert (status["state"], status["ckpt_step"]) == ("pending", step) and 10 <= step < 400
    procs = _launch(run_dir, 2)
    assert [p.wait(timeout=300) for p in procs] == [0, 0], log_of(run_dir, "rank0")
    assert f"resumed from {run_dir / rundir.CKPT} at step {step}" in log_of(run_dir, "rank0")
    assert [e["step"] for e in read_lines(run_dir / rundir.EVALS)] == [0, 100, 200, 300, 400]
