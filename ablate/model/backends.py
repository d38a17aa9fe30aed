"""Attention kernels behind one call: `attend(q, k, v, scale=, window=, backend=)`.

Layout in and out is flash-attn's: q (B, T, H, hd), k and v (B, T, H_kv, hd) with H_kv
dividing H (GQA), output (B, T, H, hd). Attention is always causal; `window` W is the number
of keys a query sees INCLUDING itself (key j is visible from query i iff i - W < j <= i),
None = full causal. The predicate lives in one place per backend:

- sdpa (the reference, any device): `is_causal` for full attention and for W >= T (the same
  key set, and the fast kernels on CUDA), else a boolean (T, T) mask, True = keep. Never both.
  SDPA has no sliding-window kernel: with a mask it runs over all T keys (no compute saved).
- flex (FlexAttention): a block mask with the same predicate; blocks outside the window are
  skipped. Compiled on CUDA (eager flex materializes the whole score matrix). On CPU it is
  FORWARD ONLY: torch has no CPU backward, so a CPU forward that needs gradients raises
  AblateError. Use it on CPU for inference and for checking agreement with sdpa.
- flash (flash-attn 2, CUDA, fp16/bf16 only): imported lazily, never required.
  window_size=(W-1, 0): (W, 0) would show W+1 keys, the ngpt_plus fork's off-by-one.

Which SDPA kernel runs is PyTorch's choice, per call, and it fails silently to the slowest:
on CUDA, `enable_gqa=True` is honoured only by its flash kernel (torch 2.5 to 2.11 at least),
which takes no mask and no fp32, so GQA + a mask (or GQA in fp32) would run the math kernel,
the whole T x T score matrix in memory. `sdpa_args` therefore repeats K/V heads itself
wherever the flash kernel cannot take them, and `resolve_backend` sends sliding windows on
CUDA to a kernel that skips the masked blocks (flash-attn, else flex). `attention_kernel`
names the kernel that runs (e.g. "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math",
"flex", "flash"), asked of SDPA's own dispatcher; the trainer records it in summary.json.
"""
from __future__ import annotations

import functools
import importlib.util
from typing import Optional

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend
from torch.nn.attention.flex_attention import create_block_mask, flex_attention  # torch >= 2.5 (README)
from torch.profiler import ProfilerActivity, profile

from ablate.core.errors import AblateError, closest

BACKENDS = ("auto", "sdpa", "flex", "flash")
FLASH_WINDOW_VERSION = (2, 3)  # flash-attn gained window_size (sliding windows) in 2.3
HALF = (torch.float16, torch.bfloat16)


# ---------------------------------------------------------------- choosing a backend

@functools.lru_cache(maxsize=None)
def _flash_probe():
    """(flash_attn_func, version tuple) when flash-attn imports, else None."""
    try:
        import flash_attn  # optional and CUDA-only: it builds on CUDA machines, and importing it costs seconds
        from flash_attn import flash_attn_func  # the same optional package
    except Exception:  # not installed, or built against another torch/CUDA: treat as absent
        return None
    version = tuple(int(p) for p in flash_attn.__version__.split(".")[:2] if p.isdigit())
    return flash_attn_func, version


# ---------------------------------------------------------------- what this machine can run

def has_flex() -> bool:
    """Whether this torch has FlexAttention (torch >= 2.5)."""
    return importlib.util.find_spec("torch.nn.attention.flex_attention") is not None


def flash_attn_version() -> tuple | None:
    """flash-attn's (major, minor) when it imports here, else None (not installed, or built for
    another torch / CUDA)."""
    probe = _flash_probe()
    return probe[1] if probe is not None else None


def capabilities() -> dict:
    """The backends this machine can run, for a report or a test's skip: {"sdpa": True, "flex":
    bool, "flash": version string or None}."""
    version = flash_attn_version()
    return {"sdpa": True, "flex": has_flex(), "flash": ".".join(map(str, version)) if version else None}


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


def resolve_backend(requested: str, device_type: str, dtype, window: Optional[int] = None,
                    context: Optional[int] = None) -> str:
    """The backend actually used for `requested` on this device/dtype/window/context.

    "auto" is flash-attn on CUDA when it is installed and can run the cell (bf16, window
    support); else, on CUDA, flex for a sliding window narrower than the context (sdpa would
    compute every masked score: no compute and no memory saved, and with GQA the math kernel);
    else sdpa. Without `context` every window counts as sliding. An explicit "flash" that
    cannot run is a one-line AblateError. An explicit "sdpa" is honoured even for a window on
    CUDA (to measure it); attention_kernel() then names the SDPA kernel that runs.
    "flex" is allowed on CPU for forward passes only (see the module docstring)."""
    if requested not in BACKENDS:
        raise AblateError(f"attn_backend {requested!r} is not one of {', '.join(BACKENDS)}{closest(requested, BACKENDS)}")
    if requested == "sdpa":
        return "sdpa"
    if requested == "flex":
        if not has_flex():
            raise AblateError(f"attn_backend flex needs torch >= 2.5 (FlexAttention), found {torch.__version__}; use sdpa")
        return "flex"
    problem = _flash_problem(device_type, dtype, window)
    if requested == "flash" and problem:
        raise AblateError(f"attn_backend flash: {problem}")
    if not problem:
        return "flash"
    sliding = window is not None and (context is None or window < context)
    return "flex" if device_type == "cuda" and sliding and has_flex() else "sdpa"


# ---------------------------------------------------------------- masks

def window_mask(T: int, window: int, device=None) -> torch.Tensor:
    """(T, T) bool, True = keep: key j visible from query i iff i - window < j <= i."""
    i = torch.arange(T, device=device)
    lag = i[:, None] - i[None, :]  # query index - key index
    return (lag >= 0) & (lag < window)


def block_mask(T: int, window: Optional[int], device=None):
    """FlexAttention's BlockMask for the same predicate as window_mask (None = causal)."""
    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def sliding(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    return create_block_mask(causal if window is None else sliding, None, None, T, T, device=device)


# Masks depend only on (T, window, device): build each once, not once per layer and step. Under
# torch.compile the uncached builders are traced instead (dynamo ignores lru_cache anyway).
_cached_window_mask = functools.lru_cache(maxsize=8)(window_mask)
_cached_block_mask = functools.lru_cache(maxsize=8)(block_mask)


def clear_mask_caches() -> None:
    """Forget every cached mask: a memory simulation builds fake ones that must not outlive it,
    and a real one must not enter it."""
    _cached_window_mask.cache_clear()
    _cached_block_mask.cache_clear()


def _mask(builder, cached, *args):
    return builder(*args) if torch.compiler.is_compiling() else cached(*args)


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    return torch.compile(flex_attention, dynamic=False)


# ---------------------------------------------------------------- kernels

def native_gqa(device_type: str, dtype: torch.dtype, masked: bool) -> bool:
    """Whether SDPA may broadcast the K/V heads itself (enable_gqa=True). On CUDA only its flash
    kernel honours enable_gqa, and it takes neither a mask nor fp32: anywhere else the call
    would silently run the math kernel. CPU's SDPA kernels take GQA with a mask and in fp32."""
    return device_type != "cuda" or (not masked and dtype in HALF)


def sdpa_args(q, k, v, window: Optional[int], device_type: Optional[str] = None):
    """(q, k, v, kwargs) of the SDPA call for (B, H, T, hd) inputs: is_causal OR a mask, never
    both, and K/V heads repeated (repeat_interleave: query head h reads K/V head h // (H/H_kv),
    enable_gqa's mapping) where native_gqa says SDPA's fast kernels would not take them.
    `device_type` defaults to q's (tests pass "cuda" to check the CUDA decision on CPU)."""
    T = q.size(2)
    masked = window is not None and window < T
    kwargs = {"attn_mask": _mask(window_mask, _cached_window_mask, T, window, q.device)} if masked \
        else {"is_causal": True}  # the cached mask is shared: never modify it
    gqa = k.size(1) != q.size(1)
    if gqa and not native_gqa(device_type or q.device.type, q.dtype, masked):
        repeat = q.size(1) // k.size(1)
        k, v = k.repeat_interleave(repeat, dim=1), v.repeat_interleave(repeat, dim=1)
        gqa = False
    return q, k, v, {**kwargs, "enable_gqa": gqa}


def _sdpa(q, k, v, scale, window):  # (B, H, T, hd) layout
    q, k, v, kwargs = sdpa_args(q, k, v, window)
    return F.scaled_dot_product_attention(q, k, v, scale=scale, **kwargs)


def _flex(q, k, v, scale, window):  # (B, H, T, hd) layout
    cpu = q.device.type == "cpu"
    if cpu and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise AblateError("attn_backend flex has no CPU backward in torch: train on CPU with sdpa (flex is forward-only there)")
    # inside a compiled model, flex_attention is traced into the model's graph; eager on CUDA, its own compiled kernel
    fn = flex_attention if cpu or torch.compiler.is_compiling() else _compiled_flex()
    return fn(q, k, v, block_mask=_mask(block_mask, _cached_block_mask, q.size(2), window, q.device), scale=scale,
              enable_gqa=k.size(1) != q.size(1))


def _flash(q, k, v, scale, window):  # (B, T, H, hd) layout, native to flash-attn
    probe = _flash_probe()
    if probe is None:
        raise AblateError("attn_backend flash: flash-attn is not installed")
    if q.dtype not in HALF:
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


# ---------------------------------------------------------------- which kernel runs

# SDPBackend value -> "sdpa-math", "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", ... (from torch's own enum)
SDPA_KERNELS = {int(b.value): "sdpa-" + name.split("_")[0].lower() for name, b in SDPBackend.__members__.items()
                if name != "ERROR"}


def attention_kernel(backend: str, cfg, device, grad: bool = True) -> Optional[str]:
    """The kernel attend() runs for a resolved config's training shapes: "flash", "flex", or
    "sdpa-<kernel>" as SDPA's dispatcher picks it (torch._fused_sdp_choice, the function SDPA
    itself consults: flags, priority order, device, dtypes, shapes, strides, grad mode) for
    the exact call attend() makes, on one sequence of empty tensors in the training layout.
    None when it cannot be asked (a torch without the function, or no memory left)."""
    if backend != "sdpa":
        return backend
    dtype = torch.bfloat16 if cfg.dtype == "bf16" else torch.float32  # autocast's activations

    def heads(n):  # (1, H, T, hd) with the strides of attend()'s transposed (1, T, H, hd) input
        return torch.empty(1, cfg.context, n, cfg.head_dim, device=device, dtype=dtype,
                           requires_grad=grad).transpose(1, 2)
    try:
        q, k, v, kwargs = sdpa_args(heads(cfg.n_head), heads(cfg.kv_heads), heads(cfg.kv_heads), cfg.window)
    except RuntimeError:  # OutOfMemoryError and kin
        return None
    with torch.set_grad_enabled(grad):
        return sdpa_kernel(q, k, v, **kwargs)


def sdpa_kernel(q, k, v, **kwargs) -> Optional[str]:
    """The kernel F.scaled_dot_product_attention(q, k, v, **kwargs) would run here, as SDPA's
    own dispatcher answers: "sdpa-flash", "sdpa-efficient", "sdpa-cudnn", "sdpa-math", ...

    The one use of a private torch function in the model, `torch._fused_sdp_choice` (there since
    torch 2.0, what SDPA itself calls): guarded, so a torch without it (or with another
    signature) answers None and nothing fails; tests/model/test_backends.py checks the name
    against the kernel the profiler sees run (kernels_seen)."""
    try:
        choice = torch._fused_sdp_choice(q, k, v, **kwargs)
    except (AttributeError, TypeError, RuntimeError):  # gone, another signature, no memory
        return None
    return SDPA_KERNELS.get(int(choice), f"sdpa-{int(choice)}")


def sdpa_priority_order() -> list[str] | None:
    """SDPA's kernel priority order on this torch ("FLASH_ATTENTION", ...), None when this torch
    cannot say (a private function, `torch._C._get_sdp_priority_order`, read for the record only)."""
    try:
        order = torch._C._get_sdp_priority_order()
    except (AttributeError, RuntimeError):
        return None
    names = {int(b.value): n for n, b in SDPBackend.__members__.items()}
    return [names.get(int(b), str(b)) for b in order]


# profiler op names -> kernel names, by prefix (forward and backward ops share it)
_KERNEL_OPS = (("aten::_scaled_dot_product_flash_attention", "sdpa-flash"),  # also CPU's "_for_cpu"
               ("aten::_scaled_dot_product_efficient_attention", "sdpa-efficient"),
               ("aten::_scaled_dot_product_cudnn_attention", "sdpa-cudnn"),
               ("aten::_scaled_dot_product_attention_math", "sdpa-math"),
               ("aten::_scaled_dot_product_fused_attention_overrideable", "sdpa-overrideable"),
               ("flash_attn::", "flash"))


def kernels_seen(fn) -> set:
    """The attention kernels that eager `fn()` really ran, from the profiler's op events: the
    check that attention_kernel() names what runs (tests on CPU, the GPU check on CUDA)."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return {kernel for e in prof.events() for prefix, kernel in _KERNEL_OPS if e.name.startswith(prefix)}
