"""Activation checkpointing per block: trade recomputation in backward for activation memory.

    h = run_blocks(model.blocks, h, rope, mode)

none       every block keeps what autograd saves (the fastest, the most memory)
blocks     each block keeps only its input; backward reruns its forward (torch.utils.checkpoint,
           non-reentrant): activations fall from ~L blocks' worth to one block's plus L inputs,
           for about one more forward pass of compute
selective  each block keeps the outputs of its matmuls and attention and recomputes only the
           cheap element-wise ops (norms, RoPE, SiLU, nGPT's normalizations and scales) in
           backward: torch's selective activation checkpointing, a smaller saving for a small cost

Recomputation runs the same ops on the same inputs (no dropout, no randomness in a block), so
the loss and the gradients are those of `none`; only memory and time change.
"""
from __future__ import annotations

import contextlib
import functools

import torch
from torch.utils.checkpoint import CheckpointPolicy, checkpoint, create_selective_checkpoint_contexts

MODES = ("none", "blocks", "selective")


@functools.lru_cache(maxsize=1)
def _saved_ops() -> frozenset:
    """The ops whose outputs `selective` keeps: matmuls and every attention kernel."""
    aten = torch.ops.aten
    names = ("mm", "addmm", "bmm", "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
             "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
             "_flash_attention_forward", "_efficient_attention_forward")
    ops = {getattr(aten, n).default for n in names if hasattr(aten, n)}
    flash = getattr(torch.ops, "flash_attn", None)  # flash-attn's custom op, when it is installed
    for n in ("_flash_attn_forward",):
        if flash is not None and hasattr(flash, n):
            ops.add(getattr(flash, n).default)
    return frozenset(ops)


def _policy(ctx, op, *args, **kwargs):
    return CheckpointPolicy.MUST_SAVE if op in _saved_ops() else CheckpointPolicy.PREFER_RECOMPUTE


def _selective():
    return create_selective_checkpoint_contexts(_policy)


def _no_weight_cache(device_type: str):
    """Inside selective regions, autocast casts a weight at each use instead of reusing its cast
    from the cache. Selective recompute replays a region's ops one for one, and the cache makes
    the forward and the replay differ: a weight shared across blocks (share_attn) is cast by its
    first block only in the forward, by every block in the replay (the cache is gone by then).
    The casts are the same bf16 values, so the math is unchanged; the cost is one cast per
    shared use."""
    if not torch.is_autocast_enabled(device_type):
        return contextlib.nullcontext()
    return torch.autocast(device_type, dtype=torch.get_autocast_dtype(device_type), cache_enabled=False)


def run_blocks(blocks, h: torch.Tensor, rope, mode: str = "none") -> torch.Tensor:
    """h through every block; with mode blocks/selective, each block is a checkpointed region
    (only when gradients are being recorded: evaluation runs the plain blocks)."""
    if mode not in MODES:
        raise ValueError(f"act_ckpt {mode!r}: expected one of {', '.join(MODES)}")
    plain = mode == "none" or not torch.is_grad_enabled()
    for i, block in enumerate(blocks):
        first = i == 0  # nGPT: the first block normalizes its input (wte rows), see Block.forward
        if plain:
            h = block(h, rope, first=first)
        elif mode == "blocks":
            h = checkpoint(block, h, rope, first=first, use_reentrant=False)
        else:
            with _no_weight_cache(h.device.type):
                h = checkpoint(block, h, rope, first=first, use_reentrant=False, context_fn=_selective)
    return h
