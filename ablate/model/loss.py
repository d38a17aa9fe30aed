"""The LM head and the loss: plain, or chunked so the (B*T, V) logits never exist.

With a GPT-2 vocabulary the head dominates training memory: the plain path keeps B*T*V fp32
logits (and their bf16 copy under autocast) for backward, and the backward adds a gradient of
the same size, ~2.5 GiB per 4k tokens at V = 50304. `chunked_head_loss` computes the loss
`chunk` tokens at a time and, in the same pass, the gradients of that chunk (the way fused
linear + cross-entropy kernels do), so at most one chunk's logits live at once and nothing of
size V is saved for backward. Each chunk runs the plain path's own ops: the head matmul, the
model's `head` parts (logit transforms) and its `loss` parts (cross-entropy and a plugin's
terms, reduction "sum"), so the loss and gradients equal the plain ones up to summation order.

    loss = chunked_head_loss(h, weight, targets, chunk=1024, head=model.head, loss=model.loss)

h (..., d) the final hidden states (after the final norm), weight (V, d) the head matrix,
targets (...) with -1 = ignored; head(logits) -> logits and loss(logits, targets, h, reduction)
as points.py defines them (default: no transform, cross-entropy). The gradients reach h, weight
and the head and loss parts' own parameters. Returns the mean over non-ignored targets, as
F.cross_entropy does. Chunking is exact only for parts that work per token (points.py).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ablate.model.ops import f32


def _no_transform(logits):
    return logits


def _cross_entropy(logits, targets, h, reduction):
    return F.cross_entropy(f32(logits).reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                           reduction=reduction)


class _ChunkedHeadLoss(torch.autograd.Function):
    """Forward: loss and every gradient, chunk by chunk. Backward: those gradients, scaled."""

    @staticmethod
    def forward(ctx, h, weight, targets, chunk, chunk_loss, *params):
        h2, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
        grad_h = torch.empty_like(h2)
        grad_w = torch.zeros_like(weight)
        grad_p = [torch.zeros_like(p) for p in params]
        total = torch.zeros((), dtype=torch.float32, device=h.device)
        with torch.enable_grad():
            # leaves of their own, so each chunk's autograd graph ends here and is freed at once
            # (the head and loss parts' parameters are leaves already)
            w = weight.detach().requires_grad_()
            for start in range(0, h2.size(0), chunk):
                hc = h2[start:start + chunk].detach().requires_grad_()
                loss = chunk_loss(hc, w, t[start:start + chunk])
                grads = torch.autograd.grad(loss, [hc, w, *params], allow_unused=True)
                grad_h[start:start + chunk] = grads[0]
                grad_w += grads[1]
                for acc, g in zip(grad_p, grads[2:]):
                    if g is not None:
                        acc += g
                total += loss.detach()
        count = (t != -1).sum()
        ctx.save_for_backward(grad_h.view_as(h), grad_w, count, *grad_p)
        return total / count

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, count, *grad_p = ctx.saved_tensors
        g = grad_out / count
        return (grad_h * g.to(grad_h.dtype), grad_w * g.to(grad_w.dtype), None, None, None,
                *(gp * g.to(gp.dtype) for gp in grad_p))


@torch.compiler.disable  # a Python loop around autograd.grad: dynamo would only break the graph here
def chunked_head_loss(h: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, chunk: int = 1024,
                      head=None, loss=None) -> torch.Tensor:
    params = list({id(p): p for m in (head, loss) if isinstance(m, torch.nn.Module)
                   for p in m.parameters() if p.requires_grad}.values())
    # modules are run through .forward: no module hooks inside a chunk's own autograd pass, which
    # hooks that watch gradients (torch's MemTracker, the tracked and simulated step) cannot follow
    head = head.forward if isinstance(head, torch.nn.Module) else head or _no_transform
    loss = loss.forward if isinstance(loss, torch.nn.Module) else loss or _cross_entropy

    def chunk_loss(hc, w, tc):  # one chunk: the plain path's ops, summed over its tokens
        return loss(head(F.linear(hc, w)), tc, hc, "sum")
    if torch.is_grad_enabled() and (h.requires_grad or weight.requires_grad or params):
        return _ChunkedHeadLoss.apply(h, weight, targets, chunk, chunk_loss, *params)
    # no gradients wanted (evaluation): the same chunks, nothing kept
    h2, t = h.reshape(-1, h.size(-1)), targets.reshape(-1)
    total = sum(chunk_loss(h2[i:i + chunk], weight, t[i:i + chunk]) for i in range(0, h2.size(0), chunk))
    return total / (t != -1).sum()
