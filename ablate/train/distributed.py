"""torch.distributed setup from the environment: torchrun / Slurm env vars, or submitit.

WORLD_SIZE > 1 (RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT set by torchrun or the launcher)
means DDP; under a multi-task submitit job without those, submitit's
TorchDistributedEnvironment exports them. Backend: nccl on CUDA, gloo on CPU. Rank 0 is the
only process that writes files.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
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

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def _export_submitit_env() -> None:
    if "WORLD_SIZE" in os.environ or "SUBMITIT_EXECUTOR" not in os.environ:
        return
    try:
        env = TorchDistributedEnvironment()
        if env.world_size > 1:
            env.export(set_cuda_visible_devices=False)
    except Exception:  # not really inside a submitit job: single process
        pass


def env_rank() -> int:
    """This process's rank as the environment says, before (or without) init."""
    return int(os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")))


def resolve_device(pref: str, local_rank: int = 0) -> torch.device:
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise AblateError("key 'device': cuda requested but torch sees no CUDA device")
        return torch.device("cuda", local_rank)
    return torch.device("cpu")


def setup(device_pref: str, strategy: str = "ddp") -> Dist:
    """The process group and this rank's device. fsdp needs a group even for a world of one (the
    sharded code path on one GPU): a private in-memory store, no port."""
    _export_submitit_env()
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
    return Dist(rank, local_rank, world, device, cpu_group, sharded=strategy == "fsdp")


def teardown(d: Dist | None) -> None:
    if d is not None and (d.enabled or d.sharded) and dist.is_initialized():
        dist.destroy_process_group()


def any_rank(flag: bool, d: Dist) -> bool:
    """True on every rank when it is True on any: a CPU all-reduce (gloo), so asking every step
    (has a stop signal arrived?) never waits for the GPU."""
    if not d.enabled:
        return flag
    t = torch.tensor([1 if flag else 0], dtype=torch.int32)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=d.cpu_group)
    return bool(t.item())


def all_reduce(t: torch.Tensor, d: Dist, op=dist.ReduceOp.SUM) -> torch.Tensor:
    if d.enabled:
        dist.all_reduce(t, op=op)
    return t
