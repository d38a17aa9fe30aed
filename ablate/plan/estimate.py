"""What a cell will cost, before anything runs: exact parameter counts (MODEL_SPEC section 4),
checkpoint bytes, FLOPs and a peak-memory estimate. Pure arithmetic, no torch."""
from __future__ import annotations

import functools

from ablate.plan.config import RunConfig

BYTES = {"fp32": 4, "bf16": 2}


def param_counts(c: RunConfig) -> dict:
    """Exact counts for a resolved config (bias-free, SwiGLU 4d, no wpe)."""
    return dict(_param_counts(c.arch, c.n_embd, c.vocab_size, c.n_layer, c.kv_heads * c.head_dim,
                              bool(c.tie_embeddings), c.attn_groups))


@functools.lru_cache(maxsize=4096)  # a grid has few shapes and many cells
def _param_counts(arch: str, d: int, V: int, L: int, d_kv: int, tie: bool, attn_groups: int) -> dict:
    tied = 1 if tie else 0
    embedding = (2 - tied) * V * d
    attention = attn_groups * (2 * d * d + 2 * d * d_kv)
    mlp = L * 12 * d * d
    if arch == "gpt":
        extra = (2 * L + 1) * d  # RMSNorm weights
    else:
        extra = L * 11 * d + V  # alpha_A, alpha_M, s_qk (d each), s_uv (8d), s_z (V)
    total = embedding + attention + mlp + extra
    return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
            "attention": attention, "mlp": mlp, "vectors": extra}


def matrix_params(c: RunConfig) -> tuple[int, int]:
    """(params stored as block matrices, everything else): param_dtype applies to the first."""
    p = param_counts(c)
    return p["attention"] + p["mlp"], p["total"] - p["attention"] - p["mlp"]


def checkpoint_bytes(c: RunConfig) -> int:
    """Bytes of the model weights as saved (state_dict; optimizer state not included)."""
    block, other = matrix_params(c)
    return block * BYTES[c.param_dtype] + other * 4


def flops_per_token(c: RunConfig) -> dict:
    """Training FLOPs per token: 6N plus attention. causal: 12·L·d·(mean keys per query), which is
    ~6·L·d·T for full causal attention and counts min(W, T) keys per query under a sliding window;
    nanoGPT: 12·L·d·T (every query against every key, as nanoGPT's estimate_mfu)."""
    p = param_counts(c)
    # FLOPs follow the matmuls that run, not the weights stored: a shared attention runs in every
    # layer, and the head matmul runs whether or not it is tied to the embedding
    attention_run = p["attention"] // c.attn_groups * c.n_layer
    n = p["non_embedding"] - p["attention"] + attention_run + c.vocab_size * c.n_embd
    T = c.context
    if c.window is None or c.window >= T:
        mean_keys = (T + 1) / 2
    else:
        W = c.window
        mean_keys = (W * (W + 1) / 2 + (T - W) * W) / T
    return {"causal": 6 * n + 12 * c.n_layer * c.n_embd * mean_keys,
            "nanogpt": 6 * n + 12 * c.n_layer * c.n_embd * T}


def total_tokens(c: RunConfig) -> int:
    return c.max_iters * c.tokens_per_step


def total_flops(c: RunConfig) -> float:
    return flops_per_token(c)["causal"] * total_tokens(c)


def memory_breakdown(c: RunConfig) -> dict:
    """Estimated peak training memory in bytes, per process, by part.

    params + grads (same dtype as params) + AdamW state (two fp32 moments) + activations
    (what autograd keeps for backward, per micro-batch) + logits (fp32 logits and their
    softmax grad dominate with a large vocabulary). An estimate: the report shows it beside
    the measured peak."""
    block, other = matrix_params(c)
    pb = BYTES[c.param_dtype]
    params = block * pb + other * 4
    grads = params
    optimizer = 2 * 4 * (block + other)
    act_bytes = 2 if c.dtype == "bf16" else 4
    B, T, d, L = c.batch_size, c.context, c.n_embd, c.n_layer
    d_kv = c.kv_heads * c.head_dim
    # per layer, per token, saved for backward: block input, norm out, q, k, v, attn out,
    # W_o out, MLP input, 8d up-projection, 4d gated, MLP out; nGPT keeps extra normalized copies
    per_token = d * 6 + 2 * d_kv + 8 * d + 4 * d
    if c.arch == "ngpt":
        per_token += 4 * d
    activations = L * B * T * per_token * act_bytes
    # logits: bf16/fp32 logits, fp32 copy for the loss, and its gradient
    logits = B * T * c.vocab_size * (act_bytes + 4 + 4)
    total = params + grads + optimizer + activations + logits
    return {"params": params, "grads": grads, "optimizer": optimizer,
            "activations": activations, "logits": logits, "total": total}
