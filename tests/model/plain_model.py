"""The model's formulas written the plain way (what gpt.py computed before its speedups), to
check that every speedup leaves loss and gradients unchanged. Test-only.

`plain(model)` swaps these in for the fast methods, on the model's own parameters:

    fast (gpt.py, ops.py)                                  plain (here)
    unit(): autograd.Function, backward written out        F.normalize in fp32
    apply_rope(): Function, backward = inverse rotation     two halves and a cat, autograd
    q, k, v from one matmul on cat(W_q, W_k, W_v)           three linears
    RoPE, Norm(q), Norm(k) in one call each (points.py)    one each
    s_uv * sqrt(d) folded into the rows of c_fc            scales the (B, T, 8d) output
    u, v from two matmuls on c_fc's row halves             one matmul, chunk
    residual: lerp(h, Norm(out), |alpha|)                   h + |alpha| (Norm(out) - h)
    Norm(h) inside the update only in the first block      in every update
    s_z folded into the rows of lm_head                    scales the (B, T, V) logits
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from ablate.model import gpt, points


def f32(x):
    return x.to(torch.promote_types(x.dtype, torch.float32))


def unit(x):
    return F.normalize(f32(x), dim=-1).type_as(x)


def apply_rope(x, cos, sin):  # x (B, T, H, hd); cos, sin (T, 1, hd/2)
    x1, x2 = f32(x).chunk(2, dim=-1)
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


def qkv(self, x):
    B, T, _ = x.shape
    q = self.c_q(x).view(B, T, self.n_head, self.head_dim)
    k = self.c_k(x).view(B, T, self.n_kv_head, self.head_dim)
    v = self.c_v(x).view(B, T, self.n_kv_head, self.head_dim)
    return torch.cat([q, k], dim=2), v


def rotary_qk(self, heads, rope):
    q, k = heads.split(self.heads, dim=2)
    return apply_rope(q, *rope), apply_rope(k, *rope)


def sphere_qk(self, heads, rope):
    q, k = rotary_qk(self, heads, rope)
    return unit(q) * (self.s_qk() ** 2).type_as(q), unit(k)


def mlp_forward(self, x):
    uv = self.c_fc(x)  # (B, T, 8d)
    if self.s_uv is not None:
        uv = uv * (self.s_uv() * self.sqrt_d).type_as(uv)
    u, v = uv.chunk(2, dim=-1)
    return self.c_proj(u * F.silu(v))


def sphere_step(self, h, out, first=False):
    h = unit(h)  # in every update, as the reference does (the model: only where h is not yet a Norm's output)
    return unit(h + self.alpha().abs() * (unit(f32(out)) - h))


def forward(self, idx, targets=None):
    B, T = idx.shape
    rope = gpt.rope_cos_sin(T, self.config.head_dim, idx.device, f32(self.wte.weight).dtype)
    h = self.wte(idx)
    for block in self.blocks:
        h = block(h, rope)
    logits = self.lm_head(self.norm_f(h))
    if self.s_z is not None:
        logits = logits * self.s_z()
    loss = None
    if targets is not None:
        loss = F.cross_entropy(f32(logits).reshape(B * T, -1), targets.reshape(B * T), ignore_index=-1)
    return logits, loss


@contextlib.contextmanager
def plain():
    """Every GPT computes by the plain formulas inside this block."""
    swaps = [(gpt.Attention, "qkv", qkv), (points.RotaryQK, "forward", rotary_qk),
             (points.SphereQK, "forward", sphere_qk), (points.MLP, "forward", mlp_forward),
             (points.SphereStep, "forward", sphere_step), (gpt.GPT, "forward", forward)]
    saved = [(cls, name, cls.__dict__[name]) for cls, name, _ in swaps]
    try:
        for cls, name, fn in swaps:
            setattr(cls, name, fn)
        yield
    finally:
        for cls, name, fn in saved:
            setattr(cls, name, fn)
