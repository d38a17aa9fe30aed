"""A cell's model, for whoever builds one: the trainer, the memory simulation, the plan's sizing.

    model = model_for(cfg, "cpu", run_dir)     # the parts of the plugins the cell uses, resolved here
    sizes = sizes_for(cfg)                     # its parameter counts and checkpoint bytes (meta device)
    backend = attention_for(cfg, "cuda")       # the attention backend it runs there ("eager": T x T scores)

The plugins a cell uses are loaded here, once per build (from the run dir's copies for a job:
ablate/plan/plugins.py `parts`), and their parts handed to ablate.model.build_model, which never
loads a plugin itself. An exception raised in a plugin's own code while building becomes one
line naming the plugin's file and line.
"""
from __future__ import annotations

import contextlib

import torch

from ablate.core import plugin_keys
from ablate.model import GPT, build_model, model_sizes
from ablate.model.gpt import attention_backend
from ablate.model.points import parts_of
from ablate.plan import plugins
from ablate.plan.simcache import TORCH_STATE


def _plugin_parts(cfg, run_dir=None) -> dict | None:
    return plugins.parts(cfg, run_dir) if cfg.plugins and plugin_keys.used(cfg) else None


def _blaming_plugins(cfg, parts, build):
    """build(), with an exception raised in a plugin's code turned into one line naming it."""
    try:
        return build()
    except Exception as e:
        blamed = plugins.blame(cfg, e, "building the model") if parts else None
        if blamed is None:
            raise
        raise blamed from None


def model_for(cfg, device_type: str | None = None, run_dir=None) -> GPT:
    """build_model(cfg, device_type) with the parts of the plugins cfg uses (from run_dir's copies
    when given)."""
    parts = _plugin_parts(cfg, run_dir)
    return _blaming_plugins(cfg, parts, lambda: build_model(cfg, device_type, parts))


def sizes_for(cfg) -> dict:
    """model_sizes (param counts and ckpt_bytes, built on the meta device) of cfg's model, plugins
    included: how the plan sizes a cell that no formula knows."""
    parts = _plugin_parts(cfg)
    with clean_torch_state():
        return _blaming_plugins(cfg, parts, lambda: model_sizes(cfg, parts))


def torch_state() -> dict:
    """The process-wide torch settings a model's parts could change, as plan/simcache.py names them."""
    return {"default_dtype": str(torch.get_default_dtype()).removeprefix("torch."),
            "grad_enabled": torch.is_grad_enabled(),
            "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
            "float32_matmul_precision": torch.get_float32_matmul_precision()}


@contextlib.contextmanager
def clean_torch_state():
    """Build or simulate a cell from torch's defaults (TORCH_STATE), in a long-lived process that
    builds many: whatever a part sets (a default dtype, grad mode, deterministic algorithms, the
    matmul precision, the RNG) is undone when the block ends, so it never reaches the next cell."""
    saved = (torch.get_default_dtype(), torch.is_grad_enabled(), torch.are_deterministic_algorithms_enabled(),
             torch.is_deterministic_algorithms_warn_only_enabled(), torch.get_float32_matmul_precision())
    with torch.random.fork_rng(devices=[]):  # the CPU generator; fake or meta tensors draw nothing on a GPU
        torch.set_default_dtype(getattr(torch, TORCH_STATE["default_dtype"]))
        torch.set_grad_enabled(TORCH_STATE["grad_enabled"])
        torch.use_deterministic_algorithms(TORCH_STATE["deterministic_algorithms"])
        torch.set_float32_matmul_precision(TORCH_STATE["float32_matmul_precision"])
        try:
            yield
        finally:
            torch.set_default_dtype(saved[0])
            torch.set_grad_enabled(saved[1])
            torch.use_deterministic_algorithms(saved[2], warn_only=saved[3])
            torch.set_float32_matmul_precision(saved[4])


def attention_for(cfg, device_type: str) -> str:
    """The attention backend cfg's model runs on device_type, plugins' score modifications
    included (sdpa, flex, flash, or eager: the exact fallback that holds the T x T scores)."""
    parts = _plugin_parts(cfg)
    return _blaming_plugins(cfg, parts, lambda: attention_backend(cfg, device_type, parts_of(cfg, parts)))
