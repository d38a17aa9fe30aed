"""Device facts for the record: name, memory counters, capacity, bf16 peak FLOP/s and MFU.

Memory numbers are CUDA caching-allocator counters (None on CPU, where there is no
equivalent that separates this run from the process). Peaks are reset after a few warm-up
steps, so they measure the steady state, not one-off start-up allocations (compile, cuDNN).
"""
from __future__ import annotations

import os
import platform

import torch

WARMUP_STEPS = 5  # steps excluded from peak memory and from the median throughput

# Dense bf16 tensor-core peaks (FLOP/s) by device-name substring; first match wins.
PEAK_BF16 = (
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L40", 181e12),  # before "L4", which it contains
    ("RTX 6000 Ada", 364e12),
    ("L4", 121e12),
    ("A10", 125e12),
)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, {os.cpu_count()} cores)"


def peak_flops(name: str) -> float | None:
    for key, flops in PEAK_BF16:
        if key in name:
            return flops
    return None


def capacity(device: torch.device) -> int | None:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return None


def current(device: torch.device) -> dict:
    """Bytes allocated and reserved now, and their peaks since the last reset (None on CPU)."""
    if device.type == "cuda":
        return {"mem_alloc": torch.cuda.memory_allocated(device), "mem_peak": torch.cuda.max_memory_allocated(device),
                "mem_reserved": torch.cuda.memory_reserved(device),
                "mem_peak_reserved": torch.cuda.max_memory_reserved(device)}
    return dict.fromkeys(("mem_alloc", "mem_peak", "mem_reserved", "mem_peak_reserved"))


def peaks(device: torch.device) -> dict:
    if device.type == "cuda":
        return {"peak_alloc": torch.cuda.max_memory_allocated(device),
                "peak_reserved": torch.cuda.max_memory_reserved(device)}
    return {"peak_alloc": None, "peak_reserved": None}


def max_peaks(*measured: dict | None) -> dict:
    """Key-wise maximum of peak dicts, ignoring missing ones and None values (None if none known)."""
    out = {}
    for key in ("peak_alloc", "peak_reserved"):
        values = [m[key] for m in measured if m and m.get(key) is not None]
        out[key] = max(values) if values else None
    return out


def reset_peaks(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def mfu(flops_per_token: float, tokens_per_s: float | None, name: str, world_size: int) -> float | None:
    """Model FLOP utilization per device; None when the device's peak is unknown (and on CPU)."""
    peak = peak_flops(name)
    if peak is None or not tokens_per_s:
        return None
    return flops_per_token * tokens_per_s / (peak * world_size)
