"""The shipped example plugin, plugins/qk_norm.py: what it computes (RMSNorm per head of q and
k with two gains, before RoPE), why before RoPE (attention stays relative), what it leaves
alone (a cell without it is GPT to the bit), and its grid (grids/qk_norm.yaml)."""
from pathlib import Path

import pytest
import torch

from ablate.core.config import make_config, resolve
from ablate.model.ops import rope_cos_sin
from ablate.plan import plugins as plugin
from ablate.train.build import model_for as build_model  # resolves the plugin's parts, as every caller does
from plugin_helpers import single_thread  # noqa: F401  (an autouse fixture)

ROOT = Path(__file__).resolve().parents[2]
QK_NORM = ROOT / "plugins" / "qk_norm.py"


def cfg_for(qk_norm: bool, arch: str = "gpt", **kw):
    p = plugin.load(str(QK_NORM))
    return resolve(make_config({"arch": arch, "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "context": 16,
                                "vocab_size": 64, "plugins": (p.declaration(),), "qk_norm": qk_norm, **kw}))


def models(seed: int = 0):
    """(GPT, GPT + QK-norm) with the same weights, QK-norm's gains random (not the ones at init)."""
    torch.manual_seed(seed)
    plain = build_model(cfg_for(False), "cpu")
    torch.manual_seed(seed)
    qk = build_model(cfg_for(True), "cpu")
    missing, unexpected = qk.load_state_dict(plain.state_dict(), strict=False)
    assert not unexpected and sorted(missing) == sorted(f"blocks.{l}.qk.{g}_gain" for l in (0, 1) for g in "qk")
    with torch.no_grad():
        for b in qk.blocks:
            b.qk.q_gain.uniform_(0.5, 1.5)
            b.qk.k_gain.uniform_(0.5, 1.5)
    return plain, qk


def rope_by_complex(x, positions):
    """RoPE as complex multiplication, independent of ops.py: pair (i, i + hd/2) turned by
    pos * 10000^(-2i/hd)."""
    half = x.size(-1) // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / x.size(-1))
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions.double()[:, None] * theta)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn[:, None, :]
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def test_qk_norm_is_rmsnorm_per_head_before_rope():
    _, model = models()
    block, cfg = model.blocks[0], model.config
    x = torch.randn(2, cfg.context, cfg.n_embd)
    heads, _ = block.attn.qkv(x)
    q, k = block.qk(heads, rope_cos_sin(cfg.context, cfg.head_dim))
    H, hd = cfg.n_head, cfg.head_dim
    rms = lambda t, g: t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * g  # noqa: E731  Qwen3's RMSNorm(hd)
    ref_q = rope_by_complex(rms((x @ block.attn.c_q.weight.T).view(2, -1, H, hd), block.qk.q_gain), torch.arange(16))
    ref_k = rope_by_complex(rms((x @ block.attn.c_k.weight.T).view(2, -1, 2, hd), block.qk.k_gain), torch.arange(16))
    torch.testing.assert_close(q, ref_q, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(k, ref_k, atol=1e-5, rtol=1e-5)
    assert block.qk.softmax_scale == hd ** -0.5


def test_attention_stays_relative_and_would_not_after_rope():
    """Why before RoPE: the same content at positions shifted by s gets the same scores. The
    same gains applied after RoPE (the control) break it, which also shows the test can fail."""
    _, model = models()
    model = model.double()
    block, cfg = model.blocks[0], model.config
    x, shift = torch.randn(1, 20, cfg.n_embd, dtype=torch.float64), 7
    x_shifted = torch.cat([torch.randn(1, shift, cfg.n_embd, dtype=torch.float64), x], dim=1)

    def scores(inp, after_rope: bool):
        heads, _ = block.attn.qkv(inp)
        rope = rope_cos_sin(inp.size(1), cfg.head_dim, dtype=torch.float64)
        if after_rope:  # the control: RMSNorm and its gains after the rotation
            from ablate.model.ops import apply_rope

            t = apply_rope(heads, *rope)
            t = t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6)
            q, k = t.split(block.qk.heads, dim=2)
            q, k = q * block.qk.q_gain, k * block.qk.k_gain
        else:
            q, k = block.qk(heads, rope)
        k = k.repeat_interleave(cfg.n_head // cfg.kv_heads, dim=2)
        return torch.einsum("bihd,bjhd->bhij", q, k)

    for after_rope in (False, True):
        shifted, plain = scores(x_shifted, after_rope)[..., shift:, shift:], scores(x, after_rope)
        assert torch.allclose(shifted, plain, atol=1e-8) == (not after_rope), after_rope


def test_a_cell_without_qk_norm_is_gpt_to_the_bit():
    """qk_norm: false does not use the plugin at all: the same parts, parameters and numbers."""
    torch.manual_seed(0)
    off = build_model(cfg_for(False), "cpu")
    torch.manual_seed(0)
    gpt = build_model(resolve(make_config({"arch": "gpt", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64,
                                           "context": 16, "vocab_size": 64})), "cpu")
    assert off.state_dict().keys() == gpt.state_dict().keys()
    assert all(torch.equal(a, b) for a, b in zip(off.state_dict().values(), gpt.state_dict().values()))
    idx = torch.randint(0, 64, (2, 16))
    assert torch.equal(off(idx, idx)[1], gpt(idx, idx)[1])


def test_qk_norm_trains_in_bf16_autocast_and_its_gains_are_not_decayed():
    _, model = models()
    idx = torch.randint(0, 64, (2, 16))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, loss = model(idx, idx)
    loss.backward()
    assert torch.isfinite(loss) and all(b.qk.q_gain.grad.abs().sum() > 0 for b in model.blocks)
    decayed = {id(p) for g in model.optimizer_groups(0.1) if g["weight_decay"] for p in g["params"]}
    assert not decayed & {id(b.qk.q_gain) for b in model.blocks}


def test_ngpt_refuses_qk_norm():
    p = plugin.load(str(QK_NORM))
    with pytest.raises(ValueError, match="nGPT already normalizes q and k"):
        p.check(cfg_for(True, arch="ngpt"))
    p.check(cfg_for(False, arch="ngpt"))


def test_the_shipped_grid_compares_gpt_qk_norm_and_ngpt(monkeypatch):
    from ablate.plan.grid import load_grid

    monkeypatch.chdir(ROOT)  # the grid names plugins/qk_norm.py relative to the checkout
    grid = load_grid(ROOT / "grids" / "qk_norm.yaml")
    assert [(c.config.arch, c.config.qk_norm) for c in grid.cells] == [("gpt", False), ("gpt", True), ("ngpt", False)]
    assert grid.compare["baseline"] == {"arch": "gpt", "qk_norm": False}
    assert [c.config.n_layer * 1000 + c.config.n_embd for c in grid.cells] == [4128] * 3  # the quickstart's size
