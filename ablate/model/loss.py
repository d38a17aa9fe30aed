"""The LM head and its cross-entropy: plain, or chunked so the (B*T, V) logits never exist.

With a GPT-2 vocabulary the head dominates training memory: the plain path keeps B*T*V fp32
logits (and their bf16 copy under autocast) for backward, and the backward adds a gradient of
the same size, ~2.5 GiB per 4k tokens at V = 50304. `chunked_cross_entropy` computes the loss
`chunk` tokens at a time and, in the same pass, the gradients of that chunk (the way fused
linear + cross-entropy kernels do), so at most one chunk's logits live at once and nothing of
size V is saved for backward. Each chunk runs the plain path's own ops (same autocast casts,
same fp32 cross-entropy), so the loss and gradients equal the plain ones up to summation order.

    loss = chunked_cross_entropy(h, weight, targets, scale=s_z, chunk=1024)

h (..., d) the final hidden states, weight (V, d) the head, scale (V,) an optional per-vocab
factor on the logits (nGPT's s_z; None when it is folded into the weight), targets (...) with
-1 = ignored. Returns the mean over non-ignored targets, as F.cross_entropy does.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def head_logits(h: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
    logits = F.linear(h, weight)  # (..., V)
    return logits * scale if scale is not None else logits


def _chunk_loss(h, weight, scale, targets):
    logits = head_logits(h, weight, scale)
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))
    return F.cross_entropy(logits, targets, ignore_index=-1, reduction="sum")


class _ChunkedHeadLoss(torch.autograd.Function):
    """Forward: loss and every gradient, chunk by chunk. Backward: those gradients, scaled."""

    @staticmethod
    def forward(ctx, h, weight, scale, targets, chunk):
        h2, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        grad_h = torch.empty_like(h2)
        grad_w = torch.zeros_like(weight)
        grad_s = torch.zeros_like(scale) if scale is not None else None
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.enable_grad():
            # leaves of their own, so each chunk's autograd graph ends here and is freed at once
            w = weight.detach().requires_grad_()
            s = scale.detach().requires_grad_() if scale is not None else None
            for start in range(0, h2.size(0), chunk):
                hc = h2[start:start + chunk].detach().requires_grad_()
                loss = _chunk_loss(hc, w, s, t[start:start + chunk])
                grads = torch.autograd.grad(loss, [hc, w] + ([s] if s is not None else []))
                grad_h[start:start + chunk] = grads[0]
                grad_w += grads[1]
                if s is not None:
                    grad_s += grads[2]
                total += loss.detach()
        count = (t != -1).sum()
        ctx.save_for_backward(grad_h.view_as(h), grad_w, grad_s, count)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_s, count = ctx.saved_tensors
        g = grad_out / count
        return (grad_h * g.to(grad_h.dtype), grad_w * g.to(grad_w.dtype),
                grad_s * g.to(grad_s.dtype) if grad_s is not None else None, None, None)


@torch.compiler.disable  # a Python loop around autograd.grad: dynamo would only break the graph here
def chunked_cross_entropy(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor,
                          scale: torch.Tensor | None = None, chunk: int = 1024) -> torch.Tensor:
    if torch.is_grad_enabled() and any(x is not None and x.requires_grad for x in (h, weight, scale)):
        return _ChunkedHeadLoss.apply(h, weight, scale, targets, chunk)
    # no gradients wanted (evaluation): the same chunks, nothing kept
    h2, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    total = sum(_chunk_loss(h2[i:i + chunk], weight, scale, t[i:i + chunk]) for i in range(0, h2.size(0), chunk))
    return total / (t != -1).sum()
