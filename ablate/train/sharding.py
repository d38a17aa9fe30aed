"""strategy: fsdp. FSDP2 (`fully_shard`, as torchtitan applies it) shards every parameter, its
gradient and its AdamW moments along dim 0 over the job's ranks:

    shard_model(raw, cfg)          # in place, before the optimizer is built
    weights = full_weights(raw)    # every rank calls it: the consolidated state_dict on rank 0

Units, each all-gathered when it runs and freed after (reshard_after_forward): a shared
attention module (ALBERT sharing) first, as a unit of its own, so it is sharded once however
many blocks use it and its gradient is the sum over its uses; then each block (its own
weights: MLP, norms, nGPT's scales, a plugin's parameters); then the root (wte, lm_head, which
tying makes one tensor, the final norm, s_z).

Numerics: FSDP2's MixedPrecisionPolicy is left at fp32 parameters and fp32 gradient
reductions; bf16 comes from the trainer's autocast, exactly as under ddp, so both strategies
compute the same function (the all-gather moves fp32 weights: twice the bytes of a bf16
gather, for results that do not depend on the strategy).

nGPT's normalize_ runs on the sharded parameters (DTensors): a row normalization along dim 1
(wte, lm_head, W_q/W_k/W_v, c_fc) is shard-local, since a rank holds whole rows; a column
normalization along dim 0 (W_o, c_proj) sums squares across the shards, which DTensor does
with one all-reduce per matrix. tests/train/test_train_fsdp.py checks both against one process.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from ablate.core.config import RunConfig


def shard_model(model: torch.nn.Module, cfg: RunConfig, mesh=None) -> None:
    """Apply FSDP2 to the model in place (a process group must exist: a world of 1 is allowed).
    mesh: the DeviceMesh to shard over (default: FSDP2's, the whole default group on this
    machine's accelerator); the memory simulation makes it before FakeTensorMode, where a mesh
    cannot be built (it reads its rank map back as numbers)."""
    policy = MixedPrecisionPolicy(param_dtype=None, reduce_dtype=torch.float32)
    kw = dict(reshard_after_forward=cfg.reshard_after_forward, mp_policy=policy, mesh=mesh)
    shared = {}
    for block in model.blocks:
        shared.setdefault(id(block.attn), block.attn)
    if len(shared) < len(model.blocks):  # ALBERT sharing: one unit per attention group, used by several blocks
        for attn in shared.values():
            fully_shard(attn, **kw)
    for block in model.blocks:
        fully_shard(block, **kw)
    # the root runs last in backward; nothing comes after it to overlap a reshard with
    fully_shard(model, **{**kw, "reshard_after_forward": False})


def full_weights(model: torch.nn.Module) -> dict | None:
    """The consolidated state_dict (CPU tensors) on rank 0, None elsewhere: a collective, every rank
    calls it. Tied weights come back as one tensor under both names, as the unsharded model's
    state_dict has them (so model.pt stores the matrix once)."""
    full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    if dist.get_rank() != 0:
        return None
    names = {}  # one parameter, several names (tying): the first name's tensor for all
    for name, p in model.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), name)
        full[name] = full[names[id(p)]]
    return full
