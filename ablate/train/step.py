"""One optimizer step, as every run takes it: the trainer's loop and the memory simulation
(memtrack.simulate_step) run these same lines, so what the plan simulates is what a job does.

    loss = optimizer_step(model, raw, optimizer, batch, micro, autocast=..., grad_clip=1.0)

`batch(i)` returns micro-batch i (0 .. micro-1) of this process as (x, y), fetched when it is
needed, so a step never holds more than one micro-batch's inputs.
"""
from __future__ import annotations

import contextlib
from typing import Callable

import torch


def optimizer_step(model: torch.nn.Module, raw: torch.nn.Module, optimizer: torch.optim.Optimizer,
                   batch: Callable[[int], tuple], micro: int, *, autocast, grad_clip: float,
                   ddp: bool = False) -> torch.Tensor:
    """grad_accum micro-batches, clip, AdamW step, zero the grads, nGPT's normalize_();
    returns the mean micro-batch loss (a device tensor: reading it is the caller's sync).
    model: what runs forward (maybe compiled or DDP-wrapped); raw: the module underneath."""
    device = next(raw.parameters()).device
    total = torch.zeros((), device=device)
    for i in range(micro):
        x, y = batch(i)
        # DDP all-reduces gradients on the last micro-batch only
        sync = model.no_sync() if ddp and i < micro - 1 else contextlib.nullcontext()
        with sync:
            with autocast():
                _, loss = model(x, y)
            (loss / micro).backward()
        total += loss.detach().float()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(raw.parameters(), grad_clip)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    raw.normalize_()  # nGPT: back onto the hypersphere after every step (GPT: no-op)
    return total / micro
