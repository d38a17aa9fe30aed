"""Attention kernels against an explicit-softmax reference; backend resolution and the kernel
that runs (MODEL_SPEC 3, 6.6, 6.8, 6.10, 7)."""
import contextlib

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.model import backends
from ablate.model.backends import attend, resolve_backend, window_mask
from model_helpers import single_thread, tiny_cfg  # noqa: F401  (autouse fixture)

CPU_BACKENDS = ["sdpa"] + (["flex"] if backends.has_flex() else [])
T, H, HD = 16, 4, 8


def reference(q, k, v, scale, window):
    """Plain MHA written out: each K/V head repeated for its H/H_kv query heads, key j visible
    from query i iff i - window < j <= i."""
    rep = q.size(2) // k.size(2)
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    i, j = torch.arange(q.size(1))[:, None], torch.arange(q.size(1))[None, :]
    visible = (j <= i) & (i - j < (window or q.size(1)))
    scores = scores.masked_fill(~visible, float("-inf"))
    return torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)


def qkv(kv_heads, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(2, T, H, HD, generator=g)
    k = torch.randn(2, T, kv_heads, HD, generator=g)
    v = torch.randn(2, T, kv_heads, HD, generator=g)
    return (t.to(device=device, dtype=dtype) for t in (q, k, v))


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 1, 3, T, T + 5])
def test_backend_matches_reference(backend, kv_heads, window):
    q, k, v = qkv(kv_heads)
    y = attend(q, k, v, scale=0.37, window=window, backend=backend)
    assert y.shape == q.shape
    torch.testing.assert_close(y, reference(q, k, v, 0.37, window), atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("window", [None, 4])
def test_gqa_equals_mha_with_repeated_kv_heads(backend, window):
    q, k, v = qkv(2)
    gqa = attend(q, k, v, scale=0.5, window=window, backend=backend)
    mha = attend(q, k.repeat_interleave(2, dim=2), v.repeat_interleave(2, dim=2), scale=0.5, window=window, backend=backend)
    torch.testing.assert_close(gqa, mha, atol=1e-6, rtol=1e-6)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_window_covering_the_sequence_equals_causal(backend):
    q, k, v = qkv(2)
    causal = attend(q, k, v, scale=0.5, window=None, backend=backend)
    for w in (T, T + 1, 10 * T):
        torch.testing.assert_close(attend(q, k, v, scale=0.5, window=w, backend=backend), causal, atol=1e-6, rtol=1e-6)
    # the sliding path itself (sdpa's boolean mask), not only the is_causal shortcut
    assert torch.equal(window_mask(T, T), torch.ones(T, T, dtype=torch.bool).tril())
    sliding = torch.nn.functional.scaled_dot_product_attention(
        *(t.transpose(1, 2) for t in (q, k.repeat_interleave(2, 2), v.repeat_interleave(2, 2))),
        attn_mask=window_mask(T, T), scale=0.5).transpose(1, 2)
    torch.testing.assert_close(sliding, causal, atol=1e-6, rtol=1e-6)


def test_window_mask_sees_exactly_w_keys_including_self():
    for w in (1, 2, 5):
        m = window_mask(T, w)
        assert m.sum(1).tolist() == [min(i + 1, w) for i in range(T)]
        i, j = torch.nonzero(m, as_tuple=True)
        assert bool(((j <= i) & (i - j < w)).all())
    assert torch.equal(window_mask(T, 1), torch.eye(T, dtype=torch.bool))


@pytest.mark.skipif("flex" not in CPU_BACKENDS, reason="FlexAttention needs torch >= 2.5")
def test_flex_on_cpu_refuses_backward_with_one_line():
    q, k, v = qkv(4)
    q.requires_grad_(True)
    with pytest.raises(AblateError, match="sdpa") as err:
        attend(q, k, v, scale=0.5, backend="flex")
    assert "\n" not in str(err.value)


def _flash_available():
    return torch.cuda.is_available() and backends.flash_attn_version() is not None


@pytest.mark.cuda
@pytest.mark.skipif(not _flash_available(), reason="flash-attn needs CUDA and the flash_attn package (not importable here)")
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 1, 5])
def test_flash_matches_sdpa(kv_heads, window):
    q, k, v = qkv(kv_heads, dtype=torch.bfloat16, device="cuda")
    y = attend(q, k, v, scale=0.3, window=window, backend="flash")
    ref = attend(q, k, v, scale=0.3, window=window, backend="sdpa")
    torch.testing.assert_close(y.float(), ref.float(), atol=2e-2, rtol=2e-2)


# ---------------------------------------------------------------- resolve_backend

@pytest.fixture
def flash(monkeypatch):
    """Pretend flash-attn of a given version is (or is not, None) installed."""
    def install(version):
        monkeypatch.setattr(backends, "_flash_probe", lambda: None if version is None else (object(), version))
    return install


def test_auto_picks_flash_only_where_it_runs(flash):
    flash((2, 6))
    assert resolve_backend("auto", "cuda", "bf16", None) == "flash"
    assert resolve_backend("auto", "cuda", "bf16", 128) == "flash"
    assert resolve_backend("auto", "cpu", "bf16", None) == "sdpa"
    assert resolve_backend("auto", "cuda", "fp32", None) == "sdpa"  # flash-attn has no fp32
    flash((2, 2))
    assert resolve_backend("auto", "cuda", "bf16", None) == "flash"
    assert resolve_backend("auto", "cuda", "bf16", 128) != "flash"  # no window_size before 2.3
    flash(None)
    assert resolve_backend("auto", "cuda", "bf16", None) == "sdpa"


@pytest.mark.skipif("flex" not in CPU_BACKENDS, reason="FlexAttention needs torch >= 2.5")
@pytest.mark.parametrize("flash_version", [None, (2, 2)])
def test_auto_on_cuda_never_gives_a_sliding_window_to_sdpa(flash, flash_version):
    """SDPA has no sliding-window kernel: its mask makes it compute every score (and with GQA
    run the math kernel). Without a flash-attn that can window, auto sends windows to flex."""
    flash(flash_version)
    for dtype in ("bf16", "fp32"):
        assert resolve_backend("auto", "cuda", dtype, 1024, 8192) == "flex"
        assert resolve_backend("auto", "cuda", dtype, 1024) == "flex"  # context unknown: assume sliding
        assert resolve_backend("auto", "cuda", dtype, 8192, 8192) == "sdpa"  # W >= T is full causal
        assert resolve_backend("auto", "cpu", dtype, 1024, 8192) == "sdpa"  # flex cannot train on CPU
    assert resolve_backend("auto", "cuda", "fp32", None, 8192) == "sdpa"  # full causal: SDPA's fused kernels
    assert resolve_backend("auto", "cuda", "bf16", None, 8192) == ("sdpa" if flash_version is None else "flash")
    assert resolve_backend("sdpa", "cuda", "bf16", 1024, 8192) == "sdpa"  # an explicit choice is kept
    flash((2, 6))
    assert resolve_backend("auto", "cuda", "bf16", 1024, 8192) == "flash"
    assert resolve_backend("auto", "cuda", "fp32", 1024, 8192) == "flex"  # flash-attn has no fp32


@pytest.mark.parametrize("device_type", ["cuda", "cpu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 3, T])
def test_sdpa_never_asks_for_gqa_where_only_the_math_kernel_takes_it(device_type, dtype, kv_heads, window):
    """On CUDA, enable_gqa is honoured only by SDPA's flash kernel, which takes no mask and no
    fp32: there K/V heads must arrive repeated. The decision is checked here with CPU tensors
    (device_type says which device it is made for); the call itself must stay exact."""
    q, k, v = (t.transpose(1, 2) for t in qkv(kv_heads, dtype=dtype))  # (B, H, T, hd)
    q2, k2, v2, kwargs = backends.sdpa_args(q, k, v, window, device_type=device_type)
    masked = window is not None and window < T
    assert ("attn_mask" in kwargs) == masked and kwargs.get("is_causal", False) != masked  # one, never both
    fused_gqa_ok = device_type == "cpu" or (dtype == torch.bfloat16 and not masked)
    if kv_heads < H and not fused_gqa_ok:
        assert kwargs["enable_gqa"] is False and k2.size(1) == v2.size(1) == H
    else:
        assert kwargs["enable_gqa"] == (kv_heads < H) and k2.size(1) == kv_heads
    y = torch.nn.functional.scaled_dot_product_attention(q2, k2, v2, scale=0.37, **kwargs).transpose(1, 2)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    want = reference(*(t.transpose(1, 2).float() for t in (q, k, v)), 0.37, window)
    torch.testing.assert_close(y.float(), want, atol=tol, rtol=tol)


@pytest.mark.parametrize("forced", [None, "MATH"])
@pytest.mark.parametrize("dtype, kv_heads, window", [("fp32", 4, None), ("fp32", 2, 5), ("bf16", 1, None), ("bf16", 2, 3)])
def test_attention_kernel_names_the_sdpa_kernel_that_runs(dtype, kv_heads, window, forced):
    """attention_kernel() asks SDPA's dispatcher; the profiler sees what a real forward and
    backward of attend() ran. They must agree, also when the dispatcher's flags change."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = tiny_cfg("gpt", n_head=H, n_embd=H * HD, context=T, n_kv_head=kv_heads, window=window, dtype=dtype)
    torch_dtype = torch.bfloat16 if dtype == "bf16" else torch.float32
    q, k, v = qkv(kv_heads, dtype=torch_dtype)
    q.requires_grad_(True)

    def step():
        attend(q, k, v, scale=0.3, window=window, backend="sdpa").float().sum().backward()

    with sdpa_kernel([getattr(SDPBackend, forced)]) if forced else contextlib.nullcontext():
        named = backends.attention_kernel("sdpa", cfg, torch.device("cpu"))
        seen = backends.kernels_seen(step)
    assert seen == {named}
    if forced:
        assert named == "sdpa-math"
    assert backends.attention_kernel("flex", cfg, torch.device("cpu")) == "flex"


@pytest.mark.parametrize("version, device, dtype, window, needle", [
    ((2, 6), "cpu", "bf16", None, "CUDA"),
    (None, "cuda", "bf16", None, "not installed"),
    ((2, 6), "cuda", "fp32", None, "bf16"),
    ((2, 2), "cuda", "bf16", 64, "2.3"),
])
def test_explicit_flash_that_cannot_run_is_a_one_line_error(flash, version, device, dtype, window, needle):
    flash(version)
    with pytest.raises(AblateError, match=needle) as err:
        resolve_backend("flash", device, dtype, window)
    assert "\n" not in str(err.value)


def test_explicit_choices_and_unknown_names(flash):
    flash((2, 6))
    assert resolve_backend("flash", "cuda", "bf16", 64) == "flash"
    assert resolve_backend("sdpa", "cuda", "bf16", None) == "sdpa"
    if "flex" in CPU_BACKENDS:
        assert resolve_backend("flex", "cpu", "fp32", 8) == "flex"  # allowed: forward only on CPU
    with pytest.raises(AblateError, match="did you mean 'flash'"):
        resolve_backend("flsh", "cuda", "bf16", None)


def fake_flash_attn_func(calls):
    """flash-attn's documented semantics on CPU: with causal=True and window_size=(left, right),
    query i attends keys j with i - left <= j <= i (left = -1: no limit). Records its arguments."""
    def flash_attn_func(q, k, v, softmax_scale, causal, window_size):
        calls.append({"causal": causal, "window_size": window_size})
        left = window_size[0]
        keys = None if left < 0 else left + 1  # keys seen including the query itself
        return reference(q.float(), k.float(), v.float(), softmax_scale, keys).to(q.dtype)
    return flash_attn_func


@pytest.mark.parametrize("window", [None, 1, 3, T])
def test_flash_gets_window_minus_one_so_it_sees_exactly_w_keys(monkeypatch, window):
    """MODEL_SPEC 3: window_size=(W, 0) would show W + 1 keys (the ngpt_plus fork's bug)."""
    calls = []
    monkeypatch.setattr(backends, "_flash_probe", lambda: (fake_flash_attn_func(calls), (2, 6)))
    q, k, v = qkv(2, dtype=torch.bfloat16)
    y = attend(q, k, v, scale=0.3, window=window, backend="flash")
    assert calls == [{"causal": True, "window_size": (-1, -1) if window is None else (window - 1, 0)}]
    want = attend(q.float(), k.float(), v.float(), scale=0.3, window=window, backend="sdpa")
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)
