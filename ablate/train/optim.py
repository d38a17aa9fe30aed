"""The optimizer and its schedule, as every run and the memory simulation build them.

    optimizer = build_optimizer(model, cfg, device)   # AdamW over model.optimizer_groups
    lr = lr_at(step, cfg)                             # warmup, then cosine to min_lr
"""
from __future__ import annotations

import math

import torch

from ablate.core.config import RunConfig


def lr_at(it: int, cfg: RunConfig) -> float:
    """LR for the update at 0-based step `it`: linear warmup, then cosine to min_lr (nanoGPT).
    With no warmup (nGPT) lr(0) = lr."""
    if it < cfg.warmup_iters:
        return cfg.lr * (it + 1) / (cfg.warmup_iters + 1)
    if it >= cfg.lr_decay_iters:
        return cfg.min_lr
    ratio = (it - cfg.warmup_iters) / max(1, cfg.lr_decay_iters - cfg.warmup_iters)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (cfg.lr - cfg.min_lr)


def build_optimizer(model: torch.nn.Module, cfg: RunConfig, device: torch.device) -> torch.optim.AdamW:
    """AdamW over the model's own groups (which decay, which not: GPT.optimizer_groups); fused on CUDA."""
    groups = model.optimizer_groups(cfg.weight_decay)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=device.type == "cuda")
