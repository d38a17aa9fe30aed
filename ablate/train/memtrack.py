"""Exact tensor accounting of one training step, real or simulated: the one place that touches
torch's private `torch.distributed._tools.mem_tracker.MemTracker`.

MemTracker is a TorchDispatchMode that sees every tensor an op creates and sorts its storage
bytes into categories (parameters, gradients, optimizer state, activations kept for backward,
temporaries of the backward pass, ...); its "peak" is the per-category breakdown at the moment
the total was highest, so the categories add up to the peak. It counts tensors, not the
allocator: on CUDA the caching allocator's rounding and fragmentation come on top (the trainer
records `max_memory_allocated` / `reserved` beside it), and tensors made outside ATen (DDP's
gradient buckets) are not seen.

    with StepTracker(model, optimizer) as tracker:      # a real step, on any device
        optimizer_step(..., batch=tracker.each_micro_batch(batch), ...)
    tracker.peak()  # {"params": bytes, ..., "total": bytes}

    simulate_step(cfg, "cpu")   # the same step under FakeTensorMode: no memory, no compute
    simulate_step(cfg, "cpu", 4)  # strategy fsdp: rank 0 of 4, sharded over a fake process group

`simulate_step` builds the model with fake tensors, takes one untracked step (so AdamW's state
exists, as in a running job) and tracks the next, through the trainer's own step function
(step.py). A CPU-only torch build can only simulate CPU dispatch (autocast and the attention
kernels differ on CUDA); a CUDA build simulates fake CUDA tensors, which is the real GPU
dispatch minus the allocator's rounding.

strategy fsdp: the step of rank 0 of `world_size` ranks, sharded as the trainer shards it
(sharding.shard_model) over torch's fake process group, as torchtitan's memory estimator does:
its collectives return at once and move nothing, but FSDP2 allocates its all-gather and
reduce-scatter buffers as for real, so the tracker counts them (a real 2-rank gloo step tracks
the same bytes: tests/train/test_memtrack.py). The fake group lives for the simulation only.

If a torch upgrade changes what MemTracker reports (its categories, its API), `check_torch`
raises at the first use, and tests/train/test_memtrack.py fails, rather than numbers silently
going wrong.
"""
from __future__ import annotations

import contextlib
import functools

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import init_device_mesh
from torch._subclasses.fake_tensor import FakeTensorMode  # private module: tests/train/test_memtrack.py pins it

from ablate.core.config import make_config
from ablate.core.errors import AblateError
from ablate.model import backends
from ablate.plan import plugins
from ablate.train import sharding
from ablate.train.build import attention_for, clean_torch_state, model_for, torch_state
from ablate.train.optim import build_optimizer
from ablate.train.step import optimizer_step

# MemTracker's category names (its _MemRefType values) -> ours, in display order
CATEGORY_OF = {"Parameter": "params", "Buffer": "buffers", "Gradient": "grads", "Optstate": "optimizer",
               "Activation": "activations", "Temp": "temps", "Other": "other"}
CATEGORIES = tuple(CATEGORY_OF.values())
TOTAL = "Total"  # MemTracker's key for the sum of the categories


@functools.lru_cache(maxsize=1)
def check_torch():
    """The tracker class, after checking that this torch's MemTracker reports what we were
    written for: a MemTracker that keeps only the global peak (see _global_peak_tracker)."""
    try:
        from torch.distributed._tools import mem_tracker  # guarded: a torch without it is one line, not a crash
    except ImportError as e:
        raise AblateError(f"torch {torch.__version__} has no torch.distributed._tools.mem_tracker ({e}): "
                          "memory tracking needs torch >= 2.5") from e
    names = {m.value for m in mem_tracker._MemRefType}
    if names != set(CATEGORY_OF) or mem_tracker._TOTAL_KEY != TOTAL:
        raise AblateError(f"torch {torch.__version__} changed MemTracker's categories to {sorted(names)} "
                          f"(total key {mem_tracker._TOTAL_KEY!r}); ablate/train/memtrack.py maps "
                          f"{sorted(CATEGORY_OF)}: update CATEGORY_OF")
    for method in ("track_external", "get_tracker_snapshot", "reset_mod_stats"):
        if not callable(getattr(mem_tracker.MemTracker, method, None)):
            raise AblateError(f"torch {torch.__version__}: MemTracker.{method} is gone; update ablate/train/memtrack.py")
    return _global_peak_tracker(mem_tracker.MemTracker)


def _global_peak_tracker(base):
    """MemTracker also keeps a peak snapshot per module, scanning every module it has seen on
    every op: half the time of a simulated step, for numbers we never read. This subclass keeps
    the global peak only, exactly as the base class computes it (tests/train/test_memtrack.py
    checks both agree). If this torch's internals differ, the base class is used unchanged."""
    probe = base()
    if not all(hasattr(probe, a) for a in ("_update_peak_stats", "_curr_mem_snap", "_peak_mem", "_peak_mem_snap")):
        return base

    class GlobalPeakTracker(base):
        def _update_peak_stats(self, peak_state) -> None:
            for dev, snap in self._curr_mem_snap.items():
                if self._peak_mem.get(dev, 0) < snap[TOTAL]:
                    self._peak_mem[dev] = snap[TOTAL]
                    self._peak_mem_snap[dev] = dict(snap)  # {category: int}: a shallow copy is a copy

    return GlobalPeakTracker


class StepTracker:
    """Tracks the tensors of one step. `external`: what exists before it (model, optimizer)."""

    def __init__(self, *external):
        self._tracker = check_torch()()
        self._tracker.track_external(*external)
        self._peak = None

    def __enter__(self) -> "StepTracker":
        self._tracker.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._tracker.__exit__(*exc)
        self._peak = self._breakdown(self._tracker.get_tracker_snapshot("peak"))

    def each_micro_batch(self, batch):
        """Wrap step.py's `batch(i)`: MemTracker refuses a second forward of the root module
        unless its per-module stats are reset (they are not what we read)."""
        def tracked(i):
            self._tracker.reset_mod_stats()
            return batch(i)
        return tracked

    @staticmethod
    def _breakdown(snapshot: dict) -> dict:
        """{category: bytes, "total": bytes} over every device the step touched (one, here)."""
        out = dict.fromkeys(CATEGORIES, 0)
        out["total"] = 0
        for per_device in snapshot.values():
            for key, nbytes in per_device.items():
                name = getattr(key, "value", key)
                if name == TOTAL:
                    out["total"] += int(nbytes)
                elif name in CATEGORY_OF:
                    out[CATEGORY_OF[name]] += int(nbytes)
                else:
                    raise AblateError(f"MemTracker reported an unknown category {name!r} (torch {torch.__version__})")
        return out

    def peak(self) -> dict:
        """Bytes per category at the step's peak; they sum to "total"."""
        if self._peak is None:
            raise RuntimeError("StepTracker.peak() before the tracked step ended")
        return dict(self._peak)


# ---------------------------------------------------------------- simulation

def _to_fake_device(model: torch.nn.Module, device_type: str) -> None:
    """Replace every parameter and buffer (a plugin's, say) by an (uninitialized, fake) one on
    device_type, keeping tied and shared tensors shared. `.to("cuda")` would need a CUDA runtime
    even for fake tensors."""
    new = {}
    for module in model.modules():
        for name, p in list(module.named_parameters(recurse=False)):
            if id(p) not in new:
                new[id(p)] = torch.nn.Parameter(torch.empty_like(p, device=device_type), requires_grad=p.requires_grad)
            setattr(module, name, new[id(p)])  # nn.Module registers a Parameter it is given
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None:
                new.setdefault(id(b), torch.empty_like(b, device=device_type))
                setattr(module, name, new[id(b)])  # a registered buffer stays one (and keeps its persistence)


@contextlib.contextmanager
def _fake_process_group(world_size: int, device_type: str):
    """Rank 0 of a fake process group of world_size ranks, and its DeviceMesh (built before
    FakeTensorMode, which cannot build one), destroyed when the block ends."""
    if dist.is_initialized():
        raise AblateError("simulating strategy fsdp needs a process without a process group (this one has one)")
    try:
        from torch.testing._internal.distributed.fake_pg import FakeStore  # private, guarded: one line if it moved
    except ImportError as e:
        raise AblateError(f"torch {torch.__version__} has no fake process group "
                          f"(torch.testing._internal.distributed.fake_pg: {e}): strategy fsdp cannot be simulated") from e
    dist.init_process_group("fake", rank=0, world_size=world_size, store=FakeStore())
    try:
        yield init_device_mesh(device_type, (world_size,))
    finally:
        dist.destroy_process_group()


@contextlib.contextmanager
def _fresh_attention_masks():
    """Attention masks are cached per (T, window, device): a fake mask must not outlive the
    simulation, and a real one must not enter it."""
    backends.clear_mask_caches()
    try:
        yield
    finally:
        backends.clear_mask_caches()


def simulate_step(cfg, device_type: str = "cpu", world_size: int = 1) -> dict:
    """Peak tensor memory of one steady-state training step of the resolved RunConfig `cfg`, per
    process, by category: {"params", "buffers", "grads", "optimizer", "activations", "temps",
    "other", "total"} in bytes. Nothing is allocated and nothing is computed (FakeTensorMode).

    device_type "cuda" needs a CUDA build of torch (a CPU-only build cannot run CUDA autocast).
    The step is eager even when cfg.compile is set, and DDP's gradient buckets (one more copy
    of the gradients when world_size > 1) are not counted. strategy fsdp: rank 0's step, with
    parameters, gradients and AdamW state sharded over world_size ranks (a fake process group). It starts from torch's defaults and
    leaves the process as it found it (build.clean_torch_state), whatever a plugin's part sets."""
    if device_type == "cuda" and not torch.backends.cuda.is_built():
        raise AblateError(f"simulating CUDA needs a CUDA build of torch; this one ({torch.__version__}) is CPU-only")
    if device_type not in ("cpu", "cuda"):
        raise AblateError(f"device_type {device_type!r}: expected cpu or cuda")
    if cfg.vocab_size is None:
        raise AblateError("simulate_step needs a resolved config (vocab_size is not set)")
    device = torch.device(device_type)
    micro = max(1, cfg.grad_accum // max(1, world_size))
    # micro-batches after the second repeat its memory exactly (same tensors, gradients already there)
    micro = min(micro, 2)
    B, T = cfg.batch_size, cfg.context
    autocast = (lambda: torch.autocast(device_type, dtype=torch.bfloat16)) if cfg.dtype == "bf16" \
        else contextlib.nullcontext

    def batch(i):
        # as batches.py makes them: (B, T+1) int64 windows, split into inputs and targets
        buf = torch.zeros((B, T + 1), dtype=torch.long, device=device)
        return buf[:, :-1].contiguous(), buf[:, 1:].contiguous()

    group = _fake_process_group(max(1, world_size), device_type) if cfg.strategy == "fsdp" \
        else contextlib.nullcontext()
    with clean_torch_state(), _fresh_attention_masks(), group as mesh, FakeTensorMode():
        model = model_for(cfg, device_type)
        _to_fake_device(model, device_type)
        if mesh is not None:  # fsdp: shards before AdamW sees the parameters, as the trainer does
            sharding.shard_model(model, cfg, mesh)
        optimizer = build_optimizer(model, cfg, device)
        model.normalize_()
        step = functools.partial(optimizer_step, model, model, optimizer, micro=micro, autocast=autocast,
                                 grad_clip=cfg.grad_clip)
        step(batch=batch)  # warm-up: AdamW's moments now exist, gradients are None again
        with StepTracker(model, optimizer) as tracker:
            step(batch=tracker.each_micro_batch(batch))
    return tracker.peak()


def simulate_config(args: tuple) -> dict:
    """One shape for the plan's simulation cache (ablate/plan/simcache.py), in a worker process or
    in this one: args = (config dict, device type, world size). Returns simulate_step's breakdown
    and "attention", the attention backend the step ran ("eager": a score modification no kernel
    of this device takes, with its (B, H, T, T) scores in the breakdown), or {"error": one line}
    for a cell this device cannot run, or {"error", "plugin_error": True} when a plugin's own code
    failed (the plan then refuses the grid, naming the plugin's line)."""
    config, device, world_size = args
    cfg = None
    try:
        cfg = make_config(config)
        with clean_torch_state():
            state = torch_state()  # what the step is simulated under: recorded with the figures
            return {**simulate_step(cfg, device, world_size), "attention": attention_for(cfg, device),
                    "torch_state": state}
    except Exception as e:
        blamed = plugins.blame(cfg, e, "a simulated training step") if cfg is not None and cfg.plugins else None
        if blamed is not None:
            return {"error": str(blamed), "plugin_error": True}
        if not isinstance(e, (AblateError, NotImplementedError, RuntimeError)):
            raise
        return {"error": str(e).splitlines()[0][:200] if str(e) else type(e).__name__}  # a cell this device cannot run
