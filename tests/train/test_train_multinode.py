"""Multi-node rendezvous: four `python -m ablate.train` processes whose environment holds only what
srun sets for a job of 2 nodes x 2 tasks (SLURM_*, and submitit's SUBMITIT_EXECUTOR), no RANK /
WORLD_SIZE / MASTER_*: the trainer derives its rendezvous from Slurm's variables, the four train as
one world, and compute what one process computes with the same global batch (ddp and fsdp)."""
import os
import random
import signal
import socket
import time

import pytest

from ablate.core import rundir
from ablate.core.errors import AblateError
from ablate.train import distributed
from train_helpers import assert_same_curves, log_of, train_subprocess

TORCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
NODES = ("localhost", "127.0.0.1")  # two names for this machine: the first is the master, as on a cluster
CFG = dict(max_iters=10, grad_accum=4, eval_interval=5, eval_iters=2, log_interval=5, ckpt_interval=0)


def _port_of(job_id: str) -> int:
    """The port submitit derives from a job id (what every task of the job computes alike)."""
    return random.Random(job_id).randint(20000, 60000)


def _free_job_id() -> str:
    """A job id whose derived port is free here (tests may run side by side)."""
    while True:
        job = str(random.randint(10_000, 10_000_000))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", _port_of(job)))
                return job
            except OSError:
                continue


def slurm_env(procid: int, job: str, nodelist: str = ",".join(NODES), nodes: int = 2, per_node: int = 2) -> dict:
    """What srun (in submitit's sbatch script) sets for task `procid` of a job of nodes x per_node tasks."""
    return {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": job, "SLURM_JOBID": job,
            "SLURM_JOB_NODELIST": nodelist, "SLURM_NODELIST": nodelist,
            "SLURM_JOB_NUM_NODES": str(nodes), "SLURM_NNODES": str(nodes),
            "SLURM_NTASKS": str(nodes * per_node), "SLURM_NPROCS": str(nodes * per_node),
            "SLURM_NTASKS_PER_NODE": str(per_node), "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
            "SLURM_PROCID": str(procid), "SLURM_LOCALID": str(procid % per_node),
            "SLURM_NODEID": str(procid // per_node),
            "SLURM_STEP_ID": "0", "SLURM_STEPID": "0"}


@pytest.fixture
def no_torch_env(monkeypatch):
    for var in TORCH_VARS + ("SUBMITIT_EXECUTOR",):
        monkeypatch.delenv(var, raising=False)


def _launch(run_dir, job: str):
    return [train_subprocess(run_dir, log_name=f"rank{r}", env=slurm_env(r, job)) for r in range(4)]


def test_rendezvous_from_slurm_variables(no_torch_env, monkeypatch):
    """Every task of one job agrees on the master (the first node) and port (seeded by the job id, so
    again the same after a requeue); ranks, local ranks and the world come from srun's variables."""
    seen = []
    for procid in range(4):
        for k, v in slurm_env(procid, "4242", nodelist="gpu-a[07,09]").items():
            monkeypatch.setenv(k, v)
        seen.append(distributed.slurm_rendezvous())
    assert [s["RANK"] for s in seen] == ["0", "1", "2", "3"] and [s["LOCAL_RANK"] for s in seen] == ["0", "1"] * 2
    assert {(s["MASTER_ADDR"], s["MASTER_PORT"], s["WORLD_SIZE"], s["LOCAL_WORLD_SIZE"]) for s in seen} == {
        ("gpu-a07", str(_port_of("4242")), "4", "2")}
    monkeypatch.setenv("MASTER_ADDR", "login-node")  # inherited from the submitting shell: not a node of the job
    monkeypatch.setenv("MASTER_PORT", "29400")  # given to the job: kept
    assert distributed.slurm_rendezvous()["MASTER_ADDR"] == "gpu-a07"
    assert distributed.slurm_rendezvous()["MASTER_PORT"] == "29400"
    for var in ("MASTER_PORT", "SLURM_JOB_ID", "SLURM_JOBID"):  # no port, and no job id to derive one from
        monkeypatch.delenv(var)
    with pytest.raises(AblateError, match=r"a Slurm job of 4 tasks \(SLURM_NTASKS\), but its rendezvous cannot"):
        distributed.slurm_rendezvous()  # never four single-process runs of one cell
    monkeypatch.setenv("WORLD_SIZE", "4")  # torchrun (or a launcher) said it all
    assert distributed.slurm_rendezvous() == {}


def test_env_rank_is_the_task_rank_under_either_submitit_executor(no_torch_env, monkeypatch):
    """Only rank 0 takes the run dir's lock and writes its files: which one that is, before init."""
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "local")
    monkeypatch.setenv("SUBMITIT_LOCAL_GLOBALID", "1")
    assert distributed.env_rank() == 1
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_PROCID", "3")
    assert distributed.env_rank() == 3


@pytest.mark.parametrize("strategy", ["ddp", "fsdp"])
def test_two_nodes_of_two_tasks_equal_one_process(make_run, no_torch_env, strategy):
    from ablate.train.job import train

    single = make_run(f"single-{strategy}", strategy=strategy, **CFG)
    assert train(single) == "done"
    run_dir = make_run(f"nodes-{strategy}", strategy=strategy, **CFG)
    job = _free_job_id()
    procs = _launch(run_dir, job)
    for r, p in enumerate(procs):
        assert p.wait(timeout=300) == 0, log_of(run_dir, f"rank{r}")
    assert "step 10/10" in log_of(run_dir, "rank0")
    assert all("step 10/10" not in log_of(run_dir, f"rank{r}") for r in (1, 2, 3))  # rank 0 alone reports
    status, summary = rundir.read_status(run_dir), rundir.read_json(run_dir / rundir.SUMMARY)
    assert (status["state"], status["attempts"], status["world_size"], summary["world_size"]) == ("done", 1, 4, 4)
    assert_same_curves(single, run_dir, [0, 5, 10], [s * 4 * 8 * 32 for s in (5, 10)])


def test_a_stop_signal_to_a_rank_of_the_second_node_reaches_rank_0(make_run, no_torch_env):
    """Slurm signals every task, but not at the same moment, and a signal may reach one task only: all
    ranks stop at one step, and rank 0 (the task whose submitit handler requeues the whole job: one
    `scontrol requeue` per job) acts on the signal another rank got, here SIGUSR2 to rank 3."""
    run_dir = make_run("nodes-stop", max_iters=100000, grad_accum=4, eval_interval=100000, eval_iters=2,
                       log_interval=5, ckpt_interval=0)
    procs = _launch(run_dir, _free_job_id())
    deadline = time.time() + 240
    while rundir.read_status(run_dir).get("step", 0) < 5:
        assert time.time() < deadline and all(p.poll() is None for p in procs), log_of(run_dir, "rank0")
        time.sleep(0.05)
    procs[3].send_signal(signal.SIGUSR2)
    assert [p.wait(timeout=120) for p in procs] == [75] * 4, log_of(run_dir, "rank0") + log_of(run_dir, "rank3")
    status = rundir.read_status(run_dir)
    assert (status["state"], status["note"]) == ("pending", "preempted") and status["ckpt_step"] >= 5
    rank0 = log_of(run_dir, "rank0")
    assert f"signal {int(signal.SIGUSR2)}: checkpoint saved at step {status['ckpt_step']}" in rank0
    assert "stopped by SIGUSR2" in rank0, rank0
    assert os.path.exists(run_dir / rundir.CKPT)
