"""ckpt.pt: everything a run needs to continue exactly where it stopped, replaced atomically.

Holds the model and optimizer state dicts, the step (which is also the data position: batches
are a pure function of the step, see batches.py), the RNG states (python, numpy, torch, cuda)
and a little bookkeeping (elapsed training seconds, the steps at which attempts started).
torch.save goes to a temp file in the run dir and os.replace puts it in place, so a job killed
mid-save leaves the previous checkpoint intact. Everything is plain tensors / lists, so the
file loads with weights_only=True.

Under strategy fsdp the model and AdamW state are sharded: every rank writes its own shards with
torch.distributed.checkpoint (DCP) into ckpt.shards/<tag>/, and only then does rank 0 replace
ckpt.pt, which holds everything else plus the name of that shard dir. ckpt.pt is the commit: a
kill mid-save leaves the previous ckpt.pt naming the previous, complete shards (the new dir is
removed as stale at the next start). DCP reshards on load, so a run resumes on another world size.
"""
from __future__ import annotations

import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict

from ablate.core.rundir import CKPT, CKPT_SHARDS, atomic_file

FORMAT = 1
SHARDS = CKPT_SHARDS  # strategy fsdp: one DCP directory per saved step, named by ckpt.pt


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


def restore(ckpt: dict, model: torch.nn.Module, optimizer: torch.optim.Optimizer, run_dir=None) -> dict:
    """Restore model, optimizer and RNG in place from read_checkpoint's dict; returns the rest
    (step and extras). A sharded checkpoint (fsdp) loads its shards from run_dir: every rank."""
    ckpt = dict(ckpt)
    if "sharded" in ckpt:
        _load_shards(Path(run_dir) / ckpt.pop("sharded"), model, optimizer)
    else:
        model.load_state_dict(ckpt.pop("model"))
        optimizer.load_state_dict(ckpt.pop("optimizer"))
    set_rng_state(ckpt.pop("rng"))
    return ckpt


def save_sharded(run_dir, model: torch.nn.Module, optimizer: torch.optim.Optimizer, step: int, tag: str,
                 is_main: bool, **extra) -> None:
    """Every rank: its shards of the model and AdamW state into ckpt.shards/<tag> (tag: the same
    on every rank, new for every save), then rank 0 commits ckpt.pt and removes older shard dirs."""
    run_dir = Path(run_dir)
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optim_state}, checkpoint_id=run_dir / SHARDS / tag)
    dist.barrier()  # every rank's shards are on disk before the commit names them
    if is_main:
        _atomic_save({"format": FORMAT, "step": step, "sharded": f"{SHARDS}/{tag}", "rng": rng_state(), **extra},
                     run_dir / CKPT)
        remove_stale_shards(run_dir, keep=tag)
    dist.barrier()  # nobody starts the next step (or exits) before the commit


def _load_shards(where: Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model_state, optim_state = get_state_dict(model, optimizer)  # the shapes this world size shards to
    state = {"model": model_state, "optimizer": optim_state}
    dcp.load(state, checkpoint_id=where)  # reshards from whatever world size saved it
    set_state_dict(model, optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"])


def committed_shards(run_dir) -> str | None:
    """The shard dir ckpt.pt names (None: no checkpoint, or an unsharded one)."""
    path = Path(run_dir) / CKPT
    if not path.exists():
        return None
    return read_checkpoint(path).get("sharded")


def remove_stale_shards(run_dir, keep: str | None = None) -> None:
    """Shard dirs that ckpt.pt does not name: older saves, and saves a kill interrupted."""
    root = Path(run_dir) / SHARDS
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
        return
    for p in root.glob("*") if root.is_dir() else ():
        if p.name != Path(keep).name:
            shutil.rmtree(p, ignore_errors=True)


def save_weights(path, model: torch.nn.Module | dict) -> int:
    """model.pt: the final state_dict alone (tied tensors stored once); returns its size in bytes.
    model: the module, or its consolidated state_dict (fsdp: sharding.full_weights)."""
    path = Path(path)
    _atomic_save(model if isinstance(model, dict) else model.state_dict(), path)
    return path.stat().st_size


def remove_stale_temps(run_dir) -> None:
    """Temp files of saves interrupted by a kill (the real files are untouched)."""
    for name in ("ckpt.pt", "model.pt"):
        for p in Path(run_dir).glob(f".{name}.*.tmp"):
            p.unlink(missing_ok=True)
