"""ckpt.pt: everything a run needs to continue exactly where it stopped, replaced atomically.

Holds the model and optimizer state dicts, the step (which is also the data position: batches
are a pure function of the step, see batches.py), the RNG states (python, numpy, torch, cuda)
and a little bookkeeping (elapsed training seconds, the steps at which attempts started).
torch.save goes to a temp file in the run dir and os.replace puts it in place, so a job killed
mid-save leaves the previous checkpoint intact. Everything is plain tensors / lists, so the
file loads with weights_only=True.
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from ablate.core.rundir import atomic_file

FORMAT = 1


def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {"python": _to_lists(random.getstate()), "numpy": [kind, keys.tolist(), pos, has_gauss, gauss],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        # this process's device only: a requeued job may see fewer GPUs than the one that saved
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    random.setstate(_to_tuples(state["python"]))
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        cuda = state["cuda"]
        if isinstance(cuda, (list, tuple)):  # older checkpoints saved every visible GPU's state
            cuda = cuda[min(torch.cuda.current_device(), len(cuda) - 1)]
        torch.cuda.set_rng_state(cuda)


def _to_lists(x):
    return [_to_lists(v) for v in x] if isinstance(x, tuple) else x


def _to_tuples(x):
    return tuple(_to_tuples(v) for v in x) if isinstance(x, list) else x


def _atomic_save(obj, path: Path) -> None:
    with atomic_file(path, "wb") as f:
        torch.save(obj, f)


def save_checkpoint(path, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, **extra) -> None:
    """model: the raw module (not the DDP / compiled wrapper), so keys carry no prefixes."""
    _atomic_save({"format": FORMAT, "step": step, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                  "rng": rng_state(), **extra}, Path(path))


def read_checkpoint(path) -> dict:
    """The whole checkpoint, on CPU (RNG states must stay CPU tensors; load_state_dict copies
    weights and optimizer moments to the parameters' device)."""
    return torch.load(path, map_location="cpu", weights_only=True)


def restore(ckpt: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict:
    """Restore model, optimizer and RNG in place from read_checkpoint's dict; returns the rest
    (step and extras)."""
    ckpt = dict(ckpt)
    model.load_state_dict(ckpt.pop("model"))
    optimizer.load_state_dict(ckpt.pop("optimizer"))
    set_rng_state(ckpt.pop("rng"))
    return ckpt


def save_weights(path, model: torch.nn.Module) -> int:
    """model.pt: the final state_dict alone (tied tensors stored once); returns its size in bytes."""
    path = Path(path)
    _atomic_save(model.state_dict(), path)
    return path.stat().st_size


def remove_stale_temps(run_dir) -> None:
    """Temp files of saves interrupted by a kill (the real files are untouched)."""
    for name in ("ckpt.pt", "model.pt"):
        for p in Path(run_dir).glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
