"""RoPE and the attention module against a written-out reference (MODEL_SPEC 6.6, 6.7, 6.9)."""
import pytest
import torch

from ablate.model.ops import apply_rope, rope_cos_sin
from model_helpers import single_thread  # noqa: F401  (autouse fixture)
from model_helpers import ARCHS, perturb, reference_attention, rope_reference, tiny_model

HD = 8


def test_rope_is_the_standard_rotation_and_keeps_norms():
    x = torch.randn(2, 50, 3, HD, dtype=torch.float64)
    y = apply_rope(x, *rope_cos_sin(50, HD))
    torch.testing.assert_close(y, rope_reference(x, torch.arange(50)), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), atol=1e-6, rtol=1e-6)
    assert not torch.allclose(y[:, 1:], x[:, 1:])  # position 0 is the identity, the rest turn


def test_rope_dot_products_depend_only_on_the_offset():
    q, k = torch.randn(HD, dtype=torch.float64), torch.randn(HD, dtype=torch.float64)
    T = 300
    cos, sin = rope_cos_sin(T, HD)
    rq = apply_rope(q.expand(1, T, 1, HD), cos, sin)[0, :, 0]  # R_m q for every m
    rk = apply_rope(k.expand(1, T, 1, HD), cos, sin)[0, :, 0]
    dots = rq @ rk.T  # [m, n] = <R_m q, R_n k>
    for offset in (0, 1, 7, -5, 120):
        diag = torch.diagonal(dots, offset=-offset)  # m - n == offset
        torch.testing.assert_close(diag, diag[:1].expand_as(diag), atol=1e-4, rtol=1e-4)
    assert abs(dots[3, 0] - dots[5, 0]) > 1e-3  # and it does depend on the offset


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("kv_heads", [4, 2, 1])  # 4 = n_head: plain MHA
@pytest.mark.parametrize("window", [None, 3])
def test_attention_equals_mha_reference(arch, kv_heads, window):
    """GQA == MHA with repeat_interleaved K/V heads; H_kv = H is MHA; nGPT's s_qk^2 on q equals
    s_qk on q and k, forward and gradient (with a random, non-trivial s_qk)."""
    cfg, model = tiny_model(arch, n_kv_head=kv_heads, window=window)
    model = perturb(model.double())
    block = model.blocks[0]
    x = torch.randn(2, cfg.context, cfg.n_embd, dtype=torch.float64)
    rope = rope_cos_sin(cfg.context, cfg.head_dim)
    s_qk = block.qk.s_qk if arch == "ngpt" else None
    y = block.attn(x, rope, block.qk)
    ref = reference_attention(block.attn, x, s_qk)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    if arch == "ngpt":
        w = torch.randn_like(y)
        g, = torch.autograd.grad((y * w).sum(), s_qk.param)
        g_ref, = torch.autograd.grad((ref * w).sum(), s_qk.param)
        torch.testing.assert_close(g, g_ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("arch, s_qk", [("gpt", None), ("ngpt", "init"), ("ngpt", "pair-tied"), ("ngpt", "free")])
def test_attention_scores_are_translation_invariant(arch, s_qk):
    """The same content at positions (i + s, j + s) gets the score it had at (i, j): RoPE is
    relative. nGPT: at init (s_qk = 1) and with a random s_qk tied within each rotary pair
    (i, i + hd/2). A free per-element s_qk after RoPE breaks it, by nGPT's design (checked
    too, which also shows this test can fail)."""
    cfg, model = tiny_model(arch, context=32, n_kv_head=2)
    block = perturb(model.double()).blocks[0]  # O(1) scores, so the tolerance means something
    if s_qk is not None:
        with torch.no_grad():
            half = torch.rand(cfg.n_head, cfg.head_dim // 2, dtype=torch.float64) + 0.5
            free = torch.rand(cfg.n_head, cfg.head_dim, dtype=torch.float64) + 0.5
            eff = {"init": torch.ones_like(free), "pair-tied": torch.cat([half, half], dim=-1), "free": free}[s_qk]
            block.qk.s_qk.param.copy_(eff * block.qk.s_qk.scale / block.qk.s_qk.init)
    x, shift = torch.randn(1, 20, cfg.n_embd, dtype=torch.float64), 9
    x_shifted = torch.cat([torch.randn(1, shift, cfg.n_embd, dtype=torch.float64), x], dim=1)

    def scores(inp):
        heads, _ = block.attn.qkv(inp)
        q, k = block.qk(heads, rope_cos_sin(inp.size(1), cfg.head_dim))
        k = k.repeat_interleave(cfg.n_head // cfg.kv_heads, dim=2)
        return torch.einsum("bihd,bjhd->bhij", q, k)

    shifted, plain = scores(x_shifted)[..., shift:, shift:], scores(x)
    assert plain.abs().mean() > 0.1
    close = torch.allclose(shifted, plain, atol=1e-5, rtol=1e-5)  # fp32 angles: ~1e-7 rad
    assert close == (s_qk != "free"), (shifted - plain).abs().max()
