"""Attention kernels behind one call: `attend(q, k, v, scale=, window=, backend=)`.

Layout in and out is flash-attn's: q (B, T, H, hd), k and v (B, T, H_kv, hd) with H_kv
dividing H (GQA, native in every backend), output (B, T, H, hd). Attention is always causal;
`window` W is the number of keys a query sees INCLUDING itself (key j is visible from query i
iff i - W < j <= i), None = full causal. The predicate lives in one place per backend:

- sdpa (the reference, any device): `is_causal` for full attention and for W >= T (the same
  key set, and the fast kernels on CUDA), else a boolean (T, T) mask, True = keep. Never both.
- flex (FlexAttention): a block mask with the same predicate. Compiled on CUDA (eager flex
  materializes the whole score matrix). On CPU it is FORWARD ONLY: torch 2.13 has no CPU
  backward, so a CPU forward that needs gradients raises AblateError. Use it on CPU for
  inference and for checking agreement with sdpa, not for training.
- flash (flash-attn 2, CUDA, fp16/bf16 only): imported lazily, never required.
  window_size=(W-1, 0): (W, 0) would show W+1 keys, the ngpt_plus fork's off-by-one.

`resolve_backend` turns the config's request ("auto" | "sdpa" | "flex" | "flash") into the
backend actually used; the trainer records that name with the run.
"""
from __future__ import annotations

import functools
from typing import Optional

import torch
import torch.nn.functional as F

from ablate.errors import AblateError, closest

BACKENDS = ("auto", "sdpa", "flex", "flash")
FLASH_WINDOW_VERSION = (2, 3)  # flash-attn gained window_size (sliding windows) in 2.3


# ---------------------------------------------------------------- choosing a backend

@functools.lru_cache(maxsize=None)
def _flash_probe():
    """(flash_attn_func, version tuple) when flash-attn imports, else None. Imported lazily:
    it only builds on CUDA machines, and importing it costs seconds."""
    try:
        import flash_attn
        from flash_attn import flash_attn_func
    except Exception:  # not installed, or built against another torch/CUDA: treat as absent
        return None
    version = tuple(int(p) for p in flash_attn.__version__.split(".")[:2] if p.isdigit())
    return flash_attn_func, version


def _has_flex() -> bool:
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401  (torch >= 2.5)
    except ImportError:
        return False
    return True


def _flash_problem(device_type: str, dtype, window: Optional[int]) -> Optional[str]:
    """Why flash-attn cannot run this cell, or None when it can."""
    if device_type != "cuda":
        return f"flash-attn needs CUDA, but the device is {device_type} (use sdpa or auto)"
    if str(dtype).replace("torch.", "") not in ("bf16", "bfloat16", "fp16", "float16"):
        return f"flash-attn runs in fp16/bf16 only, but dtype is {dtype} (set dtype: bf16)"
    probe = _flash_probe()
    if probe is None:
        return "flash-attn is not installed (pip install 'ablate[flash]' on a CUDA machine) or failed to import"
    if window is not None and probe[1] < FLASH_WINDOW_VERSION:
        return f"sliding windows need flash-attn >= 2.3, found {'.'.join(map(str, probe[1]))}"
    return None


def resolve_backend(requested: str, device_type: str, dtype, window: Optional[int] = None) -> str:
    """The backend actually used for `requested` on this device/dtype/window.

    "auto" is flash-attn on CUDA when it is installed and can run the cell (bf16, window
    support), else sdpa. An explicit "flash" that cannot run is a one-line AblateError.
    "flex" is allowed on CPU for forward passes only (see the module docstring)."""
    if requested not in BACKENDS:
        raise AblateError(f"attn_backend {requested!r} is not one of {', '.join(BACKENDS)}{closest(requested, BACKENDS)}")
    if requested == "sdpa":
        return "sdpa"
    if requested == "flex":
        if not _has_flex():
            raise AblateError(f"attn_backend flex needs torch >= 2.5 (FlexAttention), found {torch.__version__}; use sdpa")
        return "flex"
    problem = _flash_problem(device_type, dtype, window)
    if requested == "flash" and problem:
        raise AblateError(f"attn_backend flash: {problem}")
    return "sdpa" if problem else "flash"


# ---------------------------------------------------------------- masks

def window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) bool, True = keep: key j visible from query i iff i - window < j <= i."""
    i = torch.arange(T, device=device)
    lag = i[:, None] - i[None, :]  # query index - key index
    return (lag >= 0) & (lag < window)


def block_mask(T: int, window: Optional[int], device=None):
    """FlexAttention's BlockMask for the same predicate as window_mask (None = causal)."""
    from torch.nn.attention.flex_attention import create_block_mask

    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def sliding(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return create_block_mask(causal if window is None else sliding, None, None, T, T, device=device)


# Masks depend only on (T, window, device): build each once, not once per layer and step. Under
# torch.compile the uncached builders are traced instead (dynamo ignores lru_cache anyway).
_cached_window_mask = functools.lru_cache(maxsize=8)(window_mask)
_cached_block_mask = functools.lru_cache(maxsize=8)(block_mask)


def _mask(builder, cached, *args):
    return builder(*args) if torch.compiler.is_compiling() else cached(*args)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention
    return torch.compile(flex_attention, dynamic=False)


# ---------------------------------------------------------------- kernels

def _sdpa(q, k, v, scale, window):  # (B, H, T, hd) layout
    T = q.size(2)
    gqa = k.size(1) != q.size(1)
    if window is None or window >= T:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, enable_gqa=gqa)
    mask = _mask(window_mask, _cached_window_mask, T, window, q.device)  # shared: never modify
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=scale, enable_gqa=gqa)


def _flex(q, k, v, scale, window):  # (B, H, T, hd) layout
    from torch.nn.attention.flex_attention import flex_attention

    cpu = q.device.type == "cpu"
    if cpu and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise AblateError("attn_backend flex has no CPU backward in torch: train on CPU with sdpa (flex is forward-only there)")
    fn = flex_attention if cpu else _compiled_flex()
    return fn(q, k, v, block_mask=_mask(block_mask, _cached_block_mask, q.size(2), window, q.device), scale=scale,
              enable_gqa=k.size(1) != q.size(1))


def _flash(q, k, v, scale, window):  # (B, T, H, hd) layout, native to flash-attn
    probe = _flash_probe()
    if probe is None:
        raise AblateError("attn_backend flash: flash-attn is not installed")
    if q.dtype not in (torch.float16, torch.bfloat16):
        raise AblateError(f"attn_backend flash needs fp16/bf16 activations, got {q.dtype} (set dtype: bf16)")
    window_size = (-1, -1) if window is None else (window - 1, 0)
    return probe[0](q, k, v, softmax_scale=scale, causal=True, window_size=window_size)


def attend(q, k, v, *, scale: float, window: Optional[int] = None, backend: str = "sdpa") -> torch.Tensor:
    """Causal (optionally sliding-window) attention. q (B, T, H, hd), k/v (B, T, H_kv, hd) -> (B, T, H, hd)."""
    if backend == "flash":
        return _flash(q, k, v, scale, window)
    if backend not in ("sdpa", "flex"):
        raise AblateError(f"unknown attention backend {backend!r} (expected sdpa, flex or flash)")
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd): SDPA's and flex's layout
    y = (_sdpa if backend == "sdpa" else _flex)(q, k, v, scale, window)
    return y.transpose(1, 2)  # (B, T, H, hd)
