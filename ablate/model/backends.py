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
- eager: the exact fallback for a score modification (a layer's `scores` parts, points.py) that
  no kernel here can run: the (B, H, T, T) scores in fp32, score_mod and mask_mod on broadcast
  index tensors, softmax, times v. Any device, any dtype, with gradients; T x T memory.

A score modification (score_mod, mask_mod) runs where a kernel takes it, never silently dropped:
FlexAttention (score_mod / block_mask) on CUDA, flash-attn's native `softcap` where the
modification is a lone soft-cap (flash-attn >= 2.6), else eager (CPU: FlexAttention has no CPU
backward; SDPA takes no score_mod). Scores that are not modified keep the kernels above.

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
from torch.nn.attention.flex_attention import and_masks, create_block_mask, flex_attention  # torch >= 2.5 (README)
from torch.profiler import ProfilerActivity, profile

from ablate.core.errors import AblateError, closest
from ablate.model.ops import f32

BACKENDS = ("auto", "sdpa", "flex", "flash")  # what a config may ask for; "eager" is only ever a fallback
FLASH_WINDOW_VERSION = (2, 3)  # flash-attn gained window_size (sliding windows) in 2.3
FLASH_SOFTCAP_VERSION = (2, 6)  # ... and softcap in 2.6
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


def _flash_scores_problem(scores) -> Optional[str]:
    """Why flash-attn cannot run this score modification (a ScoreChain), or None when it can."""
    if scores.n_mask_mods or scores.softcap is None:
        return "flash-attn runs no score_mod or mask_mod, only a lone soft-cap (a scores part with softcap = c)"
    probe = _flash_probe()
    if probe is not None and probe[1] < FLASH_SOFTCAP_VERSION:
        return f"soft-capping needs flash-attn >= 2.6, found {'.'.join(map(str, probe[1]))}"
    return None


def _resolve_modified(requested: str, device_type: str, dtype, window: Optional[int], scores) -> str:
    """The backend for modified scores: flash-attn for a lone soft-cap it runs natively (auto, or
    asked), FlexAttention on CUDA (auto) or when asked, else the exact eager fallback (sdpa
    asked: SDPA takes no score_mod; CPU: FlexAttention has no CPU backward)."""
    problem = _flash_problem(device_type, dtype, window) or _flash_scores_problem(scores)
    if requested == "flash":
        if problem:
            raise AblateError(f"attn_backend flash: {problem}")
        return "flash"
    if requested == "auto" and not problem:
        return "flash"
    if requested == "flex" or (requested == "auto" and device_type == "cuda" and has_flex()):
        if not has_flex():
            raise AblateError(f"attn_backend flex needs torch >= 2.5 (FlexAttention), found {torch.__version__}")
        return "flex"
    return "eager"


def resolve_backend(requested: str, device_type: str, dtype, window: Optional[int] = None,
                    context: Optional[int] = None, scores=None) -> str:
    """The backend actually used for `requested` on this device/dtype/window/context.

    "auto" is flash-attn on CUDA when it is installed and can run the cell (bf16, window
    support); else, on CUDA, flex for a sliding window narrower than the context (sdpa would
    compute every masked score: no compute and no memory saved, and with GQA the math kernel);
    else sdpa. Without `context` every window counts as sliding. An explicit "flash" that
    cannot run is a one-line AblateError. An explicit "sdpa" is honoured even for a window on
    CUDA (to measure it); attention_kernel() then names the SDPA kernel that runs.
    "flex" is allowed on CPU for forward passes only (see the module docstring).
    `scores`: a layer's ScoreChain (points.py); where it modifies the scores, _resolve_modified
    decides, and "eager" is a possible answer."""
    if requested not in BACKENDS:
        raise AblateError(f"attn_backend {requested!r} is not one of {', '.join(BACKENDS)}{closest(requested, BACKENDS)}")
    if scores is not None and scores.modifies:
        return _resolve_modified(requested, device_type, dtype, window, scores)
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


def block_mask(T: int, window: Optional[int], device=None, mask_mod=None, B=None, H=None):
    """FlexAttention's BlockMask for the same predicate as window_mask (None = causal), and a
    scores part's mask_mod on top (then per batch row and head, B and H: it may depend on them)."""
    def causal(b, h, q_idx, kv_idx):
        return kv_idx <= q_idx

    def sliding(b, h, q_idx, kv_idx):
        return (kv_idx <= q_idx) & (q_idx - kv_idx < window)

    base = causal if window is None else sliding
    if mask_mod is None:
        return create_block_mask(base, None, None, T, T, device=device)
    return create_block_mask(and_masks(base, mask_mod), B, H, T, T, device=device)


# Masks depend only on (T, window, device): build each once, not once per layer and step. Under
# torch.compile the uncached builders are traced instead (dynamo ignores lru_cache anyway).
_cached_window_mask = functools.lru_cache(maxsize=8)(window_mask)
_cached_block_mask = functools.lru_cache(maxsize=64)(block_mask)  # with a mask_mod: one per layer


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


def _flex(q, k, v, scale, window, scores=None):  # (B, H, T, hd) layout
    cpu = q.device.type == "cpu"
    if cpu and torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad):
        raise AblateError("attn_backend flex has no CPU backward in torch: train on CPU with sdpa (flex is forward-only there)")
    # inside a compiled model, flex_attention is traced into the model's graph; eager on CUDA, its own compiled kernel
    fn = flex_attention if cpu or torch.compiler.is_compiling() else _compiled_flex()
    score_mod = scores.score_mod if scores is not None and scores.n_score_mods else None
    masked = () if scores is None or not scores.n_mask_mods else (scores.mask_mod, q.size(0), q.size(1))
    mask = _mask(block_mask, _cached_block_mask, q.size(2), window, q.device, *masked)
    return fn(q, k, v, score_mod=score_mod, block_mask=mask, scale=scale, enable_gqa=k.size(1) != q.size(1))


def _flash(q, k, v, scale, window, softcap=None):  # (B, T, H, hd) layout, native to flash-attn
    probe = _flash_probe()
    if probe is None:
        raise AblateError("attn_backend flash: flash-attn is not installed")
    if q.dtype not in HALF:
        raise AblateError(f"attn_backend flash needs fp16/bf16 activations, got {q.dtype} (set dtype: bf16)")
    window_size = (-1, -1) if window is None else (window - 1, 0)
    capped = {"softcap": softcap} if softcap else {}  # flash-attn: softcap * tanh(q.k * scale / softcap)
    return probe[0](q, k, v, softmax_scale=scale, causal=True, window_size=window_size, **capped)


def eager_attention(q, k, v, scale: float, window: Optional[int] = None, scores=None) -> torch.Tensor:
    """The exact fallback, (B, H, T, hd) layout: the (B, H, T, T) scores q.k * scale in fp32 (also
    under autocast), a ScoreChain's score_mod and mask_mod called on broadcast index tensors (the
    same elementwise code FlexAttention calls on scalars), causal and window masking, softmax,
    times v. A query left with no key gets zeros, as in FlexAttention."""
    B, H, T, _ = q.shape
    if k.size(1) != H:  # query head h reads K/V head h // (H / H_kv), as enable_gqa does
        k, v = k.repeat_interleave(H // k.size(1), dim=1), v.repeat_interleave(H // k.size(1), dim=1)
    keep = _mask(window_mask, _cached_window_mask, T, window or T, q.device)  # (T, T): causal, within the window
    with torch.autocast(q.device.type, enabled=False):
        s = torch.matmul(f32(q), f32(k).transpose(-2, -1)) * scale  # (B, H, T, T)
        if scores is not None and scores.modifies:
            idx = [torch.arange(n, device=q.device, dtype=torch.int32).view([n if d == i else 1 for d in range(4)])
                   for i, n in enumerate((B, H, T, T))]  # b (B,1,1,1), h (1,H,1,1), q_idx (1,1,T,1), kv_idx (1,1,1,T)
            if scores.n_score_mods:
                s = torch.broadcast_to(scores.score_mod(s, *idx), s.shape)
            if scores.n_mask_mods:
                keep = keep & scores.mask_mod(*idx)
        p = torch.softmax(s.masked_fill(~keep, float("-inf")), dim=-1)
        if scores is not None and scores.n_mask_mods:
            p = p.masked_fill(~keep.any(-1, keepdim=True), 0.0)  # softmax over no key is NaN: zeros instead
        return torch.matmul(p.to(v.dtype), v)


def attend(q, k, v, *, scale: float, window: Optional[int] = None, backend: str = "sdpa",
           scores=None) -> torch.Tensor:
    """Causal (optionally sliding-window) attention. q (B, T, H, hd), k/v (B, T, H_kv, hd) -> (B, T, H, hd).
    scores: the layer's ScoreChain (points.py); its modification needs backend flex, flash (a lone
    soft-cap) or eager, which resolve_backend picks."""
    modified = scores is not None and scores.modifies
    if backend == "flash":
        if modified and _flash_scores_problem(scores):
            raise AblateError(f"attn_backend flash: {_flash_scores_problem(scores)}")
        return _flash(q, k, v, scale, window, scores.softcap if modified else None)
    if backend not in ("sdpa", "flex", "eager"):
        raise AblateError(f"unknown attention backend {backend!r} (expected sdpa, flex, flash or eager)")
    if backend == "sdpa" and modified:
        raise AblateError("attn_backend sdpa takes no score modification: resolve_backend picks flex, flash or eager")
    q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # (B, H, T, hd): SDPA's and flex's layout
    if backend == "sdpa":
        y = _sdpa(q, k, v, scale, window)
    else:
        y = (_flex if backend == "flex" else eager_attention)(q, k, v, scale, window, scores if modified else None)
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
