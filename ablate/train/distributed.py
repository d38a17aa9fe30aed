"""torch.distributed setup from the environment: torchrun / Slurm env vars, or submitit.

WORLD_SIZE > 1 (RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set by torchrun or the launcher)
means DDP; under a multi-task submitit Slurm job without those (one task per GPU on each of
`nodes` nodes), they are derived from srun's SLURM_* variables by submitit's
TorchDistributedEnvironment: RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK =
SLURM_LOCALID, MASTER_ADDR = the first host of SLURM_JOB_NODELIST, MASTER_PORT = the job's
MASTER_PORT if set, else a port in 20000-60000 seeded by the job id (the same on every node, and
again after a requeue). A multi-task job whose rendezvous cannot be derived is an error, never N
independent single-process runs. Backend: nccl on CUDA, gloo on CPU. Rank 0 is the only process
that writes files.
"""
from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from submitit import JobEnvironment
from submitit.helpers import TorchDistributedEnvironment

from ablate.core.errors import AblateError


@dataclass
class Dist:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    device: torch.device = torch.device("cpu")
    cpu_group: Any = None  # gloo group for host-side flags under NCCL (None: the default group is gloo)
    sharded: bool = False  # strategy fsdp: FSDP2 over the default group (which exists even for one process)
    stop: Any = None       # the job's StopFlag: any_rank shares its signal number (see any_rank)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def slurm_rendezvous() -> dict[str, str]:
    """RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT for a task of a
    multi-task submitit job (Slurm: from its SLURM_* variables, see the module docstring; local:
    from submitit's SUBMITIT_LOCAL_*); {} for any other process (WORLD_SIZE already set, not under
    submitit, a single task). MASTER_ADDR is always the job's first node (one inherited from the
    submitting shell names a machine outside the job); a MASTER_PORT the job was given is kept."""
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return {}
    try:
        env = TorchDistributedEnvironment()
    except Exception as e:  # e.g. no SLURM_JOB_ID, or a SLURM_JOB_NODELIST submitit cannot parse
        tasks = os.environ.get("SLURM_NTASKS", "1")
        if tasks.isdigit() and int(tasks) > 1:
            raise AblateError(f"a Slurm job of {tasks} tasks (SLURM_NTASKS), but its rendezvous cannot be derived "
                              f"from SLURM_* (SLURM_JOB_ID={os.environ.get('SLURM_JOB_ID')!r}, SLURM_JOB_NODELIST="
                              f"{os.environ.get('SLURM_JOB_NODELIST')!r}): {type(e).__name__}: {e}") from None
        return {}  # not really inside a submitit job of several tasks: one process
    if env.world_size <= 1:
        return {}
    return dict(MASTER_ADDR=env.master_addr, MASTER_PORT=str(env.master_port), RANK=str(env.rank),
                WORLD_SIZE=str(env.world_size), LOCAL_RANK=str(env.local_rank),
                LOCAL_WORLD_SIZE=str(env.local_world_size))


def env_rank() -> int:
    """This process's rank as the environment says, before (or without) init: RANK, else the
    task's global rank under submitit, else SLURM_PROCID."""
    if "RANK" in os.environ:
        return int(os.environ["RANK"])
    if "SUBMITIT_EXECUTOR" in os.environ:
        try:
            return JobEnvironment().global_rank  # Slurm's SLURM_PROCID, or the local executor's variable
        except Exception:  # not really inside a submitit job
            pass
    return int(os.environ.get("SLURM_PROCID", "0"))


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise AblateError("key 'device': cuda requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_pref: str, strategy: str = "ddp", stop=None) -> Dist:
    """The process group and this rank's device. fsdp needs a group even for a world of one (the
    sharded code path on one GPU): a private in-memory store, no port. stop: the job's StopFlag."""
    os.environ.update(slurm_rendezvous())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = resolve_device(device_pref, local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    cpu_group = None
    backend = "nccl" if device.type == "cuda" else "gloo"
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    elif strategy == "fsdp" and not dist.is_initialized():
        dist.init_process_group(backend=backend, store=dist.HashStore(), rank=0, world_size=1)
    if world > 1 and device.type == "cuda":
        cpu_group = dist.new_group(backend="gloo")  # every rank calls it, in the same order
    return Dist(rank, local_rank, world, device, cpu_group, sharded=strategy == "fsdp", stop=stop)


def teardown(d: Dist | None) -> None:
    """Destroy the process group, after the trainer let go of its DDP wrapper (Trainer.close).
    DDP's Reducer holds the group from C++. Were it the last holder, ~ProcessGroupGloo would run
    inside a Python dealloc with the GIL held and join gloo's worker threads, while a worker still
    freeing the last collective's tensors waits for that GIL: a deadlock (one rank of four hung
    after its job was done). Freed here, the last holder is the Python group object, whose
    destructor releases the GIL. gc: a cycle through the DDP module would keep its Reducer alive."""
    if d is not None and (d.enabled or d.sharded) and dist.is_initialized():
        gc.collect()
        dist.destroy_process_group()


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when it is True on any: a CPU all-reduce (gloo), so asking every step
    (has a stop signal arrived?) never waits for the GPU. The signal number travels with it: a rank
    that got none adopts the one another rank got, so that rank 0, whose chained submitit handler
    is the one that requeues the job (submitit requeues from global rank 0 only), requeues it
    after a SIGUSR2 that reached any rank (one job, one `scontrol requeue`, however many tasks)."""
    if not d.enabled:
        return flag
    mine = (d.stop.signum or 0) if d.stop is not None else 0
    t = torch.tensor([1 if flag else 0, mine], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.cpu_group)
    if d.stop is not None and d.stop.signum is None and t[1].item() > 0:
        d.stop.signum = int(t[1].item())
    return bool(t[0].item())


def all_reduce(t: torch.Tensor, d: Dist, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=op)
    return t
