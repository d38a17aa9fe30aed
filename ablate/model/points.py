"""The model's extension points: every place where one architecture differs from another, each
a named slot with one signature. GPT and nGPT are two fillings of the same slots (BUILT_IN); a
plugin fills some of them for the cells that set its keys (its parts are resolved by whoever
builds the model, ablate/plan/plugins.py `parts`, and handed to build_model). gpt.py assembles
a model from the parts and never asks which arch it is building, except at the model level.

A part is built by calling it with the resolved config, `part(cfg)` (a class whose __init__
takes cfg, or any function cfg -> nn.Module), once per place it is used:

    point     where (per layer unless said)     called as                          gpt          ngpt
    norm      before attention, before the MLP, norm(x) -> x, x (B, T, d)          RMSNorm      none
              and before the head (once)
    qk        between the q/k projection and    qk(heads, rope) -> (q, k)          RotaryQK     SphereQK
              the attention kernel              .softmax_scale: a float
    mlp       the feed-forward sublayer         mlp(x) -> out, (B, T, d) each      MLP (SwiGLU; nGPT scales u, v by s_uv)
    residual  after attention, after the MLP    residual(h, out, first) -> h       Add          SphereStep
    model     the whole model (replaces gpt.GPT: model(cfg, attn_backend, parts); forward(idx, targets) ->
              (logits, loss), normalize_(), optimizer_groups(weight_decay), param_counts(), attn_backend)

qk: `heads` is (B, T, H + H_kv, hd), the query heads then the key heads of one projection, so
a per-head op (RoPE, a norm) runs once over both; `rope` is the (cos, sin) pair for apply_rope.
The part returns q (B, T, H, hd) and k (B, T, H_kv, hd) as the kernel takes them, and says the
softmax scale. RoPE is the part's job: where a change goes relative to RoPE is a choice each
part makes in plain sight (nGPT normalizes after it, QK-norm before it).
residual: `first` is True for the attention update of the first block only (nGPT renormalizes
h there, where h is still an embedding row).

What gpt.GPT does to every part: nn.Linear and nn.Embedding weights are initialized N(0, 0.02)
(modules named c_proj: 0.02 / sqrt(2L), as output projections) after the parts are built; other
parameters keep the part's own init. nGPT keeps every such matrix unit-norm along n_embd (rows;
the columns of c_proj modules) after each step. GPT decays parameters with dim >= 2. Parameter
names are the part's own under its slot: blocks.<l>.norm_A / norm_M / qk / mlp / res_A / res_M, norm_f.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.core.config import ARCHS
from ablate.core.plugin_keys import POINTS  # the names (torch-free, for the plugin loader); documented here
from ablate.model.ops import apply_rope, f32, unit


class RMSNorm(nn.Module):
    """GPT's pre-norm: eps 1e-6, statistics in fp32 (bf16 squares lose the small entries)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = f32(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Scale(nn.Module):
    """An nGPT learnable vector, stored as `scale * ones(shape)` and used as `param * (init / scale)`.

    The effective value at init is `init` whatever `scale` is; `scale` only sets the effective
    Adam step (Adam moves `param` by ~lr, so the effective value moves by ~lr * init / scale).
    Always fp32, never normalized, never weight-decayed."""

    def __init__(self, shape, init: float, scale: float):
        super().__init__()
        self.init, self.scale = init, scale
        self.param = nn.Parameter(torch.full(shape if isinstance(shape, tuple) else (shape,), float(scale),
                                             dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.param * (self.init / self.scale)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.param.shape)}, init={self.init}, scale={self.scale:.4g}"


# ---------------------------------------------------------------- norm

def rms_norm(cfg) -> nn.Module:
    return RMSNorm(cfg.n_embd)


def no_norm(cfg) -> nn.Module:
    return nn.Identity()  # nGPT: h is already on the unit sphere


# ---------------------------------------------------------------- qk

class RotaryQK(nn.Module):
    """GPT: RoPE on every head of q and k (one call for both); softmax scale 1/sqrt(hd), which
    keeps random dot products O(1)."""

    def __init__(self, cfg):
        super().__init__()
        self.heads = (cfg.n_head, cfg.kv_heads)
        self.softmax_scale = cfg.head_dim ** -0.5

    def forward(self, heads, rope):
        return apply_rope(heads, *rope).split(self.heads, dim=2)


class SphereQK(RotaryQK):
    """nGPT: RoPE, then Norm on every head of q and k, s_qk^2 on q; softmax scale sqrt(hd),
    since q.k is now a cosine in [-1, 1] (times s_qk^2) and needs a temperature, not a damper.

    (s_qk Norm(q)) . (s_qk Norm(k)) = (s_qk^2 Norm(q)) . Norm(k): the same function and
    gradients, and k stays free of per-query-head factors, so GQA kernels still see only
    n_kv_head distinct keys."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.softmax_scale = cfg.head_dim ** 0.5
        self.s_qk = Scale((cfg.n_head, cfg.head_dim), 1.0, cfg.n_embd ** -0.5)

    def forward(self, heads, rope):
        q, k = unit(apply_rope(heads, *rope)).split(self.heads, dim=2)  # one Norm call for q and k
        return q * (self.s_qk() ** 2).type_as(q), k  # s_qk: (H, hd), broadcast over (B, T)


# ---------------------------------------------------------------- mlp

class MLP(nn.Module):
    """SwiGLU with a 4d hidden size: c_fc d -> 8d (u and v halves), u * silu(v), c_proj 4d -> d."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.n_embd
        self.c_fc = nn.Linear(d, 8 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)
        # nGPT: rows of c_fc are unit vectors, so u and v are ~1/sqrt(d) cosines; s_uv * sqrt(d)
        # brings them back to the range where SiLU is not just linear.
        self.s_uv = Scale(8 * d, 1.0, 1.0) if cfg.arch == "ngpt" else None
        self.sqrt_d = d ** 0.5

    def forward(self, x):
        w = self.c_fc.weight  # (8d, d): rows [:4d] make u, rows [4d:] make v
        if self.s_uv is not None:
            # s_uv * sqrt(d) scales the rows of c_fc, before the matmul: the same u and v as scaling
            # the (B, T, 8d) output, for an (8d, d) multiply (and its gradient) instead.
            w = w * (self.s_uv() * self.sqrt_d).type_as(w)[:, None]
        half = w.size(0) // 2
        u, v = F.linear(x, w[:half]), F.linear(x, w[half:])  # (B, T, 4d) each, and no 8d cat in backward
        return self.c_proj(u * F.silu(v))


# ---------------------------------------------------------------- residual

class Add(nn.Module):
    """GPT: the plain residual stream."""

    def __init__(self, cfg=None):
        super().__init__()

    def forward(self, h, out, first: bool = False):
        return h + out


class SphereStep(nn.Module):
    """nGPT: a step of size |alpha| (per dim) from h toward Norm(out), back onto the sphere."""

    def __init__(self, cfg):
        super().__init__()
        self.alpha = Scale(cfg.n_embd, 0.05, cfg.n_embd ** -0.5)

    def forward(self, h, out, first: bool = False):
        # The reference normalizes h again first (NVIDIA: A_norm = justnorm(h)). Where h came out
        # of a Norm, that is the identity in value and in gradient (a Norm's backward already
        # removes the radial part), so only the first update does it: there h is wte[idx], and
        # without it the embedding rows get a radial gradient the reference never sees, and Adam
        # diverges.
        if first:
            h = unit(h)
        return unit(torch.lerp(h, unit(f32(out)), self.alpha().abs()))  # h + |alpha| (Norm(out) - h)


# ---------------------------------------------------------------- the registry

BUILT_IN = dict(zip(ARCHS, (  # each arch's parts, in ARCHS's order; "model" is gpt.GPT for both
    {"norm": rms_norm, "qk": RotaryQK, "mlp": MLP, "residual": Add},          # gpt
    {"norm": no_norm, "qk": SphereQK, "mlp": MLP, "residual": SphereStep},    # ngpt
)))


def parts_of(cfg, plugin_parts: dict | None = None) -> dict:
    """The parts of cfg's model: its arch's, with `plugin_parts` (those of the plugins the cell
    uses, resolved by the caller) in their place."""
    return {**BUILT_IN[cfg.arch], **plugin_parts} if plugin_parts else BUILT_IN[cfg.arch]
