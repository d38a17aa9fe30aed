"""The model's elementwise building blocks, each with its backward written out where autograd's
would be slow: nGPT's Norm (run six times per block) and RoPE (twice per block).

Why by hand: eager autograd records every small op of a formula as its own node, with its own
saved tensors and its own kernel in backward. F.normalize is four nodes (norm, clamp, expand,
div); its backward is ~2.5x the cost of the three fused lines below. RoPE written as two halves
and a cat costs a cat in backward too; here backward is the inverse rotation. Both are plain
autograd.Functions of ordinary ops, so torch.compile traces them like any other code.

The plain formulas live in the tests (tests/model/test_ops.py), which check values and
gradients against them in fp32 and bf16; the model only ever calls these.
"""
from __future__ import annotations

import torch

ROPE_BASE = 10000.0
EPS = 1e-12  # F.normalize's: a zero vector stays zero instead of becoming NaN


def f32(x: torch.Tensor) -> torch.Tensor:
    """x in at least fp32 (bf16 -> fp32; fp32 and fp64 unchanged, no op recorded)."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


# ---------------------------------------------------------------- nGPT's Norm

class _Unit(torch.autograd.Function):
    """y = x / ||x|| over the last dim, in fp32; dy -> (dy - y <dy, y>) / ||x||."""

    @staticmethod
    def forward(ctx, x):
        xf = f32(x)
        inv = torch.linalg.vector_norm(xf, dim=-1, keepdim=True).clamp_min(EPS).reciprocal()  # (..., 1)
        y = xf * inv
        ctx.save_for_backward(y, inv)  # y IS the output for fp32 inputs: nothing extra kept
        return y.to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        y, inv = ctx.saved_tensors
        g = f32(grad)
        radial = (g * y).sum(-1, keepdim=True)  # <dy, y>: the part of dy that only changes ||y||
        return torch.addcmul(g, y, radial, value=-1).mul_(inv).to(grad.dtype)


def unit(x: torch.Tensor) -> torch.Tensor:
    """nGPT's Norm: x / ||x||_2 over the last dim, computed in fp32, returned in x's dtype."""
    return _Unit.apply(x)


# ---------------------------------------------------------------- RoPE

def rope_cos_sin(T: int, head_dim: int, device=None, dtype=torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotation angles, each (T, 1, hd/2) in `dtype` (fp32, or fp64 for an
    fp64 model), ready to broadcast over heads: position t turns pair i by t * base^(-2i/hd).
    Recomputed per forward: O(T hd), negligible next to attention, and no buffer to go stale
    when T exceeds the configured context."""
    inv_freq = ROPE_BASE ** (-torch.arange(0, head_dim, 2, device=device, dtype=dtype) / head_dim)
    angles = torch.arange(T, device=device, dtype=dtype)[:, None] * inv_freq[None, :]
    return angles.cos()[:, None, :], angles.sin()[:, None, :]


def _rotate(x, cos, sin, sign: float):
    """Turn each pair (i, i + hd/2) of x (..., T, H, hd) by +angle (sign 1) or -angle (sign -1)."""
    x1, x2 = x.chunk(2, dim=-1)  # (..., T, H, hd/2) each
    return torch.cat([torch.addcmul(x1 * cos, x2, sin, value=-sign), torch.addcmul(x2 * cos, x1, sin, value=sign)],
                     dim=-1)


class _Rope(torch.autograd.Function):
    """A rotation, so its backward is the inverse rotation of the gradient: nothing saved but
    the (T, 1, hd/2) tables."""

    @staticmethod
    def forward(ctx, x, cos, sin):
        ctx.save_for_backward(cos, sin)
        return _rotate(x, cos, sin, 1.0).to(x.dtype)

    @staticmethod
    def backward(ctx, grad):
        cos, sin = ctx.saved_tensors
        return _rotate(grad, cos, sin, -1.0).to(grad.dtype), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (i, i + hd/2) of every head of x (B, T, H, hd) by its angle, computed in
    the tables' dtype (fp32) and returned in x's.

    A real rotation, so it keeps ||x|| and <R_m q, R_n k> depends only on m - n. NVIDIA's
    reference drops the cos term (NVIDIA/ngpt issue #10), which breaks both."""
    return _Rope.apply(x, cos, sin)
