"""The cache of simulated peak training memory per cell (`ablate plan --memory`), per shape on disk.

A cell's memory depends on its shape only (model, batch, dtype, knobs, micro-batches per
process, device type), not on its lr, budget or seed, so a 10,000-cell grid has a handful of
shapes. Each shape not in the cache is simulated once, in worker processes, by the function the
caller hands over as `Measure.step` (ablate.train.memtrack.simulate_config: one training step
under FakeTensorMode, tensor by tensor; the plan itself never imports torch); the result goes
to runs/.cache/memory-sim.json, keyed by the shape, the device type simulated, the torch
version and a hash of the code that decides what a step allocates. A plan whose shapes are all
cached never imports torch; the report reads the same cache for cells that have not run.

Device type: a cell that will run on a GPU (device cuda, or auto in a grid that asks for GPUs)
is simulated with fake CUDA tensors when this torch is a CUDA build; a CPU-only build can only
simulate CPU dispatch (CPU autocast, CPU attention kernels), which is said beside the figures.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import multiprocessing
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

from ablate.core import plugin_keys
from ablate.core.paths import runs_root
from ablate.core.rundir import read_json, write_json_atomic

CATEGORIES = ("params", "buffers", "grads", "optimizer", "activations", "temps", "other")  # memtrack's
# the fields that decide what one step allocates (lr, budget, seed, cadence do not), and the
# plugins a cell uses with their keys (plugin_keys.identity: the plugin's content id included)
MEMORY_SHAPE = ("arch", "n_layer", "n_head", "n_embd", "n_kv_head", "tie_embeddings", "share_attn", "window", "context",
              "vocab_size", "attn_backend", "batch_size", "dtype", "param_dtype", "act_ckpt", "loss_chunk",
              "strategy", "reshard_after_forward")
# the code whose change changes what a step allocates
CODE = ("model", "train/step.py", "train/memtrack.py", "train/optim.py", "train/build.py")
CACHE_VERSION = 3  # 2: entries record the torch state they were simulated under; 3: fsdp keys (strategy, world)
# the torch state every simulated step starts from (ablate.train.build.clean_torch_state sets it,
# and undoes whatever a part changes); an entry records it, and one without it is not trusted
TORCH_STATE = {"default_dtype": "float32", "grad_enabled": True, "deterministic_algorithms": False,
               "float32_matmul_precision": "highest"}

# GPU memory as torch reports it (total_memory, GiB), by a name found in resources' constraint or
# partition; first match wins, so longer names come first. Approximate: --gpu-mem overrides.
GPU_GIB = (("h200", 139.8), ("gh200", 94.5), ("b200", 178.4), ("h100nvl", 93.1), ("h100", 79.2),
           ("a100-80", 79.2), ("a100_80", 79.2), ("a100", 39.4), ("l40s", 44.4), ("l40", 44.4),
           ("a6000", 47.5), ("rtx6000", 47.5), ("a40", 44.4), ("4090", 23.6), ("3090", 23.6), ("a10", 22.0),
           ("l4", 22.0), ("v100-32", 31.7), ("v100", 15.8), ("t4", 14.6))
HEADROOM = 0.9  # a cell "fits" when its tensors take at most 90% of the GPU: the CUDA context and the allocator's rounding


class Measure(NamedTuple):
    """What the plan asks of the model and trainer for what no formula knows, handed over by the
    caller (the CLI wires ablate.train's functions in; the plan never imports torch itself):

        step(args) -> dict    one shape's simulated step, args = (config dict, device, world size):
                              {category: bytes, "total"} or {"error", ["plugin_error"]}; picklable,
                              it runs in worker processes
        sizes(cfg) -> dict    param_counts() + ckpt_bytes of a cell's model, built on the meta device
    """
    step: Callable[[tuple], dict]
    sizes: Callable[[object], dict]


def world_size(resources) -> int:
    """The processes of one job: GPUs per node x nodes (one process on a CPU-only grid)."""
    return max(1, resources.gpus) * max(1, resources.nodes)


def gpu_memory_gib(resources) -> tuple[float, str] | None:
    """(GiB, name) of the GPU a grid's resources name in constraint or partition, else None."""
    for text in (resources.constraint, resources.partition):
        flat = (text or "").lower().replace(" ", "").replace("_", "-")
        for name, gib in GPU_GIB:
            if name.replace("_", "-") in flat:
                return gib, name
    return None


def fits(total_bytes: float | None, capacity_gib: float | None) -> str:
    if total_bytes is None or not capacity_gib:
        return ""
    used = total_bytes / 2 ** 30 / capacity_gib
    return "yes" if used <= HEADROOM else ("tight" if used <= 1.0 else "no")


def cuda_build() -> bool:
    """Whether the installed torch has CUDA, without importing it (a plan stays torch-free)."""
    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    lib = Path(list(spec.submodule_search_locations)[0]) / "lib"
    return any(lib.glob("libtorch_cuda*")) or any(lib.glob("torch_cuda*"))


def target_device(config: dict, gpus: int) -> str:
    """Where the cell will run: cuda (device cuda, or auto in a grid that asks for GPUs) or cpu."""
    return "cuda" if config["device"] == "cuda" or (config["device"] == "auto" and gpus > 0) else "cpu"


def _code_hash() -> str:
    root = Path(__file__).resolve().parents[1]
    h = hashlib.sha256()
    for rel in CODE:
        for path in sorted((root / rel).glob("*.py")) if (root / rel).is_dir() else [root / rel]:
            h.update(path.name.encode() + path.read_bytes())
    return h.hexdigest()[:12]


def _torch_version() -> str:
    try:
        return importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        return "none"


def shape_of(config: dict) -> dict:
    """What decides a step's tensors: MEMORY_SHAPE and the plugins the cell uses (keys, content)."""
    return {**{k: config.get(k) for k in MEMORY_SHAPE}, **(plugin_keys.identity(config) if config.get("plugins") else {})}


class Cache:
    """runs/.cache/memory-sim.json: {key: breakdown}. Best effort: unreadable = empty, unwritable = not kept."""

    def __init__(self, path: Path | None = None):
        self.path = Path(path or runs_root() / ".cache" / "memory-sim.json")
        self.stamp = {"torch": _torch_version(), "code": _code_hash(), "v": CACHE_VERSION}
        data = read_json(self.path, default=None)
        self.entries = data if isinstance(data, dict) else {}

    def key(self, config: dict, world: int, device: str) -> str:
        """world: the job's processes (micro-batches per process; fsdp: the shards)."""
        micro = max(1, config["grad_accum"] // max(1, world))
        shape = {**shape_of(config), "micro": min(micro, 2),  # memtrack: 2 = any more
                 "clip": config["grad_clip"] > 0, "device": device, **self.stamp}
        if config.get("strategy") == "fsdp":  # ddp's memory per process does not depend on the world size
            shape["world"] = max(1, world)
        return hashlib.sha256(json.dumps(shape, sort_keys=True).encode()).hexdigest()[:16]

    def get(self, key: str) -> dict | None:
        entry = self.entries.get(key)
        ok = isinstance(entry, dict) and "total" in entry and entry.get("torch_state") == TORCH_STATE
        return {k: v for k, v in entry.items() if k != "torch_state"} if ok else None

    def save(self, new: dict) -> None:
        if not new:
            return
        merged = {**(read_json(self.path, default=None) or {}), **new}  # another plan may have added some
        try:
            write_json_atomic(self.path, merged)
        except OSError as e:
            print(f"warning: memory simulations not cached ({self.path}: {e.strerror or e})", file=sys.stderr)
        self.entries = merged


def simulate(cells, gpus: int, step: Callable[[tuple], dict] | None = None, workers: int | None = None,
             cache: Cache | None = None, log=None, world: int | None = None) -> dict:
    """{run_id: {category: bytes, "total", "device" (simulated), "target" (where it will run)}, or
    {"error", ...}} for the cells; shapes not cached are simulated by `step` (Measure.step, in
    parallel), then cached. Without `step`, only what the cache holds. gpus: per node (where the
    cells run); world: the job's processes (default max(1, gpus); world_size(resources))."""
    world = max(1, gpus) if world is None else world
    return simulate_configs({c.run_id: (c.config.to_dict(), gpus, world) for c in cells}, step, workers, cache, log)


def simulate_configs(configs: dict, step: Callable[[tuple], dict] | None = None, workers: int | None = None,
                     cache: Cache | None = None, log=None) -> dict:
    """simulate() for {name: (config dict, gpus per node, world size)}: each config at its own
    world size (plan --fit asks for a cell's fsdp variants at 2, 4 and 8 GPUs)."""
    cache = cache or Cache()
    can_cuda = cuda_build()
    keys, todo = {}, {}
    for name, (config, gpus, world) in configs.items():
        target = target_device(config, gpus)
        device = "cuda" if target == "cuda" and can_cuda else "cpu"
        key = cache.key(config, world, device)
        keys[name] = (key, device, target)
        if cache.get(key) is None and key not in todo:
            todo[key] = (config, device, world)
    results = {}
    if todo and step is not None:
        # a worker process costs a torch import (seconds): worth it from two shapes each
        n = max(1, min(len(todo) // 2, workers or os.cpu_count() or 1))
        t0 = time.perf_counter()
        if log:
            log(f"simulating {len(todo)} shape{'s' * (len(todo) > 1)} of {len({k[0] for k in keys.values()})} "
                f"under FakeTensorMode ({n} process{'es' * (n > 1)}) ...")
        if n == 1:
            results = {key: step(args) for key, args in todo.items()}
        else:
            with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn")) as pool:
                results = dict(zip(todo, pool.map(step, todo.values())))
        if log:
            log(f"simulated in {time.perf_counter() - t0:.0f} s; cached in {cache.path}")
        cache.save({k: v for k, v in results.items() if "total" in v})
        results = {k: {c: n for c, n in v.items() if c != "torch_state"} for k, v in results.items()}
    out = {}
    for run_id, (key, device, target) in keys.items():
        found = cache.get(key) or results.get(key)
        if found is not None:
            out[run_id] = {**found, "device": device, "target": target}
    return out
