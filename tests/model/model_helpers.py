"""Tiny configs, models and option mixes shared by the model tests.

A plain module (pytest's default import mode puts this folder on sys.path), not a conftest:
a second conftest.py would make the top-level tests' `from conftest import ...` ambiguous."""
from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F

from ablate.model import build_model
from ablate.model.points import Scale
from ablate.core.config import RunConfig, resolve

ARCHS = ("gpt", "ngpt")


@pytest.fixture(autouse=True)
def single_thread():
    """Autouse in every module that imports it. Tiny tensors gain nothing from intra-op
    threads, and on a 2-core machine shared with another busy process OpenMP's spin-waiting
    makes them ~10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)

V = 64


def tiny_cfg(arch: str = "gpt", **kw) -> RunConfig:
    base = dict(arch=arch, n_layer=2, n_head=4, n_embd=32, context=16, vocab_size=V)
    base.update(kw)
    return resolve(RunConfig(**base))


def tiny_model(arch: str = "gpt", seed: int = 0, **kw):
    torch.manual_seed(seed)
    cfg = tiny_cfg(arch, **kw)
    return cfg, build_model(cfg, device_type="cpu")


def clone(model, cfg):
    """A model for `cfg` (another ablation or backend) holding `model`'s weights."""
    other = build_model(cfg, device_type="cpu")
    other.load_state_dict(model.state_dict())  # state_dict lists shared/tied tensors under every name
    return other.to(next(model.parameters()).dtype)


def opts_id(opts: dict) -> str:
    short = {"n_kv_head": "kv", "tie_embeddings": "tie", "share_attn": "share", "window": "w", "n_layer": "L"}
    return "-".join(f"{short[k]}{'' if v is True else v}" for k, v in opts.items() if v not in (None, False)) or "base"


def cases(option_list):
    """pytest params: every arch x every option mix."""
    return [pytest.param(arch, opts, id=f"{arch}-{opts_id(opts)}") for arch in ARCHS for opts in option_list]


# A representative mix: each option alone and combined with the others (L=2 unless set).
MIX = [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1, "tie_embeddings": True},
    {"share_attn": 1},
    {"n_layer": 4, "share_attn": 2, "window": 4},
    {"tie_embeddings": True, "window": 1},
    {"n_kv_head": 2, "tie_embeddings": True, "share_attn": 1, "window": 5},
]

# The full product, for the cheap structural checks (4 layers so that 2 groups means sharing).
ALL = [dict(n_layer=4, n_kv_head=kv, tie_embeddings=tie, share_attn=g, window=w)
       for kv, tie, g, w in itertools.product((None, 2, 1), (False, True), (None, 1, 2), (None, 3))]


@torch.no_grad()
def perturb(model, seed: int = 1, std: float = 0.2):
    """Random weights everywhere (scale vectors and norms included), so no test leans on the
    symmetric init; nGPT matrices are put back on the sphere."""
    g = torch.Generator().manual_seed(seed)

    def noise(p):
        return torch.randn(p.shape, generator=g).to(p.dtype)

    for module in model.modules():
        if isinstance(module, Scale):
            module.param.mul_(1 + 0.5 * noise(module.param))
        elif isinstance(module, (torch.nn.Linear, torch.nn.Embedding)):
            module.weight.copy_(noise(module.weight) * std)
        elif hasattr(module, "eps"):  # RMSNorm
            module.weight.copy_(1 + 0.3 * noise(module.weight))
    model.normalize_()
    return model


# ---------------------------------------------------------------- the spec's formulas, written out
# Independent of the model's code (complex-number RoPE, explicit softmax, repeated K/V heads):
# the model must compute exactly these functions of its own parameters.

def rope_reference(x, positions):
    """RoPE as complex multiplication: pair (i, i + hd/2) is the number x_i + i x_{i+hd/2},
    turned by e^{i pos theta_i}, theta_i = 10000^(-2i/hd). Independent of the model's code."""
    half = x.size(-1) // 2
    theta = 10000.0 ** (-torch.arange(half, dtype=torch.float64) * 2 / x.size(-1))
    turn = torch.polar(torch.ones(len(positions), half, dtype=torch.float64), positions.double()[:, None] * theta)
    z = torch.complex(x[..., :half].double(), x[..., half:].double()) * turn[:, None, :]  # (B, T, H, half)
    return torch.cat([z.real, z.imag], dim=-1).to(x.dtype)


def reference_attention(attn, x, s_qk=None):
    """W_o softmax(scale q k^T) v written out: K/V heads repeated for their query heads, RoPE by
    complex numbers, and nGPT's s_qk applied to BOTH Norm(q) and Norm(k) (the spec's original
    form, before the s_qk^2-on-q rewrite)."""
    B, T, _ = x.shape
    H, hd, rep = attn.n_head, attn.head_dim, attn.n_head // attn.n_kv_head
    q = (x @ attn.c_q.weight.T).view(B, T, H, hd)
    k = (x @ attn.c_k.weight.T).view(B, T, -1, hd).repeat_interleave(rep, dim=2)
    v = (x @ attn.c_v.weight.T).view(B, T, -1, hd).repeat_interleave(rep, dim=2)
    q, k = rope_reference(q, torch.arange(T)), rope_reference(k, torch.arange(T))
    if s_qk is None:
        scale = hd ** -0.5
    else:
        q, k, scale = F.normalize(q, dim=-1) * s_qk(), F.normalize(k, dim=-1) * s_qk(), hd ** 0.5
    scores = torch.einsum("bihd,bjhd->bhij", q, k) * scale
    i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
    scores = scores.masked_fill(~((j <= i) & (i - j < (attn.window or T))), float("-inf"))
    y = torch.einsum("bhij,bjhd->bihd", scores.softmax(-1), v)
    return y.reshape(B, T, H * hd) @ attn.c_proj.weight.T



def rms(x, weight):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6) * weight


def reference_forward(model, idx):
    """Logits by MODEL_SPEC sections 1-2 for `model`'s parameters."""
    cfg = model.config
    d = cfg.n_embd
    h = model.wte.weight[idx]
    for b in model.blocks:
        if cfg.arch == "gpt":
            h = h + reference_attention(b.attn, rms(h, b.norm_A.weight))
            uv = rms(h, b.norm_M.weight) @ b.mlp.c_fc.weight.T
            u, v = uv[..., :4 * d], uv[..., 4 * d:]
            h = h + (u * F.silu(v)) @ b.mlp.c_proj.weight.T
        else:
            norm = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
            alpha_A = b.res_A.alpha.param * (0.05 / d ** -0.5)
            alpha_M = b.res_M.alpha.param * (0.05 / d ** -0.5)
            h_A = reference_attention(b.attn, h, b.qk.s_qk)
            h = norm(h + alpha_A.abs() * (norm(h_A) - h))
            uv = (h @ b.mlp.c_fc.weight.T) * b.mlp.s_uv.param * d ** 0.5  # s_uv: init 1, scale 1
            u, v = uv[..., :4 * d], uv[..., 4 * d:]
            h_M = (u * F.silu(v)) @ b.mlp.c_proj.weight.T
            h = norm(h + alpha_M.abs() * (norm(h_M) - h))
    if cfg.arch == "gpt":
        return rms(h, model.norm_f.weight) @ model.lm_head.weight.T
    return (model.s_z.param * (1.0 / d ** -0.5)) * (h @ model.lm_head.weight.T)
