"""What a cell will cost, before anything runs: exact parameter counts (MODEL_SPEC section 4),
checkpoint bytes, FLOPs and a peak-memory estimate. Pure arithmetic, no torch.

Only for the built-in model: a cell that uses a plugin has no formula here (they raise
NoFormula), the plan counts its parameters on the model itself (meta device) and simulates its
memory (gpt.model_sizes, memtrack.simulate_step)."""
from __future__ import annotations

import functools

from ablate.core.errors import AblateError
from ablate.core import plugin_keys
from ablate.core.config import RunConfig

BYTES = {"fp32": 4, "bf16": 2}


class NoFormula(AblateError):
    """A cell that uses a plugin: no formula knows its model."""


def param_counts(c: RunConfig) -> dict:
    """Exact counts for a resolved config (bias-free, SwiGLU 4d, no wpe)."""
    if c.plugins and plugin_keys.used(c):
        raise NoFormula(f"no parameter formula for a cell that uses a plugin ({plugin_keys.used_text(c)}): "
                        "it is counted on the model")
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


def flops_per_token(c: RunConfig, counts: dict | None = None) -> dict:
    """Training FLOPs per token: 6N plus attention. causal: 12·L·d·(mean keys per query), which is
    ~6·L·d·T for full causal attention and counts min(W, T) keys per query under a sliding window;
    nanoGPT: 12·L·d·T (every query against every key, as nanoGPT's estimate_mfu). counts: the
    model's own parameter counts (model.param_counts(), for a cell no formula knows)."""
    p = counts or param_counts(c)
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


def total_flops(c: RunConfig, counts: dict | None = None) -> float:
    return flops_per_token(c, counts)["causal"] * total_tokens(c)


# The memory model's constants, measured with MemTracker under FakeTensorMode (CPU dispatch,
# torch 2.13) by benchmarks/calibrate_memory.py, per (arch, dtype, act_ckpt), in bytes:
#   a      kept for backward per layer, per token and per unit of d
#   b      the same per unit of d_kv (k and v: what GQA removes)
#   w      per block-matrix weight (autocast keeps a bf16 copy of each for backward)
#   h_act  kept per token and vocabulary entry at the head (logits, fp32 copy, log-softmax)
#   h_tmp  the head's backward per token and vocabulary entry
#   ch     per token and unit of d besides the layers, at the head's backward
#   cb     per token and unit of d besides the layers, at a block's backward (small vocabularies)
# `blocks` keeps each block's fp32 input and reruns one block at a time (from `none`'s constants).
MEMORY_COEF = {
    ('gpt', 'fp32', 'none'): (96.83, 15.25, 0.75, 8.0, 8.0, 12.29, 36.78),
    ('gpt', 'fp32', 'selective'): (52.06, 8.0, 0.0, 8.0, 8.0, 12.29, 98.8),
    ('gpt', 'bf16', 'none'): (60.08, 6.0, 2.0, 7.0, 8.0, 10.29, 24.53),
    ('gpt', 'bf16', 'selective'): (28.06, 4.0, 0.0, 7.0, 8.0, 10.29, 68.55),
    ('ngpt', 'fp32', 'none'): (94.91, 13.31, 2.76, 10.0, 8.0, 8.29, 36.77),
    ('ngpt', 'fp32', 'selective'): (52.06, 8.0, 0.0, 10.0, 8.0, 4.28, 102.97),
    ('ngpt', 'bf16', 'none'): (66.16, 10.06, 2.01, 7.0, 8.0, 6.29, 20.53),
    # the small-shape fit for this regime (56.11, 8.02, -8.02, 7.0, 8.0, 66.41, 116.8) is 20% high at
    # 124M (grids/memory.yaml): there selective nGPT keeps what selective GPT keeps per layer
    ('ngpt', 'bf16', 'selective'): (28.06, 4.0, 0.0, 7.0, 8.0, 10.29, 116.8),
}
GIB = 2 ** 30


def memory_breakdown(c: RunConfig, world_size: int = 1) -> dict:
    """Estimated peak training memory in bytes, per process, by category, as memtrack reports
    it: params, grads, optimizer (AdamW's two fp32 moments), activations (kept for backward),
    temps (backward temporaries) and total, at the largest of three moments (with several
    micro-batches per process, every gradient already exists in the second one's):

    head      the loss's backward: every layer's saved tensors, the head's logits and their
              gradient (with loss_chunk: one chunk's, plus the fp32 gradient buffers of the
              fused head); with a large vocabulary this is the peak
    block     a block's backward, for small vocabularies (act_ckpt blocks: the one block being
              rerun, with the gradients of the blocks after it)
    optimizer the step: every gradient, and two temporaries the size of the largest matrix

    strategy fsdp (world_size ranks): parameters, gradients and AdamW state are 1/world_size per
    rank, plus the unsharded weights in flight (fsdp_in_flight), counted under params: the
    root's (embeddings, head: gathered at the forward's start and kept to the end of backward,
    as the root does not reshard) at every moment but the optimizer's, one block more while a
    block runs backward (its own, and its unsharded gradient's first matrix), and one block
    prefetched for the next backward at world_size > 1 (the simulation shows no prefetched
    block at a world of one). Measured against the simulation (a fake process group).

    The constants (MEMORY_COEF) are measured; benchmarks/calibrate_memory.py --check compares
    the estimate with the simulation cell by cell: within 10% on grids/memory.yaml, the
    quickstart and grids/fit_24gb.yaml (ddp and fsdp at 2, 4, 8 GPUs). Not modelled: a sliding
    window's mask on CPU dispatch (CPU attention with a mask keeps more: +1.5 GiB at 8k
    context, 124M, where the estimate is 9% low; CUDA kernels take the window natively), the
    CUDA allocator's rounding, DDP's gradient buckets, FSDP2's padding of a shard (a tensor's
    dim 0 up to a multiple of world_size). A torch-free approximation: `ablate plan --memory`
    simulates the real step."""
    block, other = matrix_params(c)
    pb = BYTES[c.param_dtype]
    W = max(1, world_size)
    shards = W if c.strategy == "fsdp" else 1
    params = (block * pb + other * 4) / shards
    optimizer = 2 * 4 * (block + other) / shards
    B, T, d, L, V = c.batch_size, c.context, c.n_embd, c.n_layer, c.vocab_size
    N, d_kv, bf16 = B * T, c.kv_heads * c.head_dim, c.dtype == "bf16"
    mode = "none" if c.act_ckpt == "blocks" else c.act_ckpt
    a, b, w, h_act, h_tmp, ch, cb = MEMORY_COEF[(c.arch, c.dtype, mode)]
    one_layer = N * (a * d + b * d_kv) + w * block / L  # everything a block keeps
    kept = L * N * d * 4 if c.act_ckpt == "blocks" else L * one_layer  # blocks: each block's fp32 input
    if c.loss_chunk:  # one chunk's logits and gradient; fp32 gradient buffers of h, W (and its bf16 copy)
        rows = min(c.loss_chunk, N)
        head_act = N * d * 4 + V * d * (4 + (2 if bf16 else 0))
        head_tmp = rows * V * (h_act + h_tmp) + N * d * ch
    else:
        head_act, head_tmp = N * V * h_act, N * V * h_tmp + N * d * ch
    accumulated = params if c.grad_accum // W > 1 else 0  # grads from the micro-batch before
    flight = fsdp_in_flight(c, W) if c.strategy == "fsdp" else dict.fromkeys(("head", "block"), 0)
    # (weights in flight, grads, activations, temps) at each moment
    moments = {"head": (flight["head"], accumulated, kept + head_act, head_tmp)}
    if c.act_ckpt == "blocks":  # rerunning one block, the gradients of the blocks after it exist
        grads_after = (block * pb + other * 4 - block * pb / L) * (L - 1) / L / shards
        moments["block"] = (flight["block"], max(accumulated, grads_after), one_layer + L * N * d * 4, N * d * cb)
    else:
        moments["block"] = (flight["block"], accumulated, kept, N * d * cb)
    largest = max(V * d, 8 * d * d) * 4
    moments["optimizer"] = (0, params, 0, 2 * largest / shards)
    in_flight, grads, activations, temps = max(moments.values(), key=sum)
    total = params + in_flight + optimizer + grads + activations + temps
    return {"params": params + in_flight, "grads": grads, "optimizer": optimizer, "activations": activations,
            "temps": temps, "total": total}


def fsdp_in_flight(c: RunConfig, world_size: int) -> dict:
    """Bytes of unsharded (all-gathered, fp32) weights and gradients one rank holds beside its
    shards, at the head's backward and at a block's backward (memory_breakdown's moments): the
    root's embedding and head, the block being run (one layer's matrices, its attention group's
    included) with the first unsharded gradient matrix of its backward (a quarter of the
    block), and at world_size > 1 the next block, prefetched."""
    p = param_counts(c)
    root = (p["embedding"] + c.vocab_size) * 4  # wte, lm_head (one when tied), with the root's vectors
    unit = (p["attention"] // c.attn_groups + p["mlp"] // c.n_layer) * 4  # FSDP2's largest unit: a block
    prefetched = unit if world_size > 1 else 0
    return {"head": root + prefetched, "block": root + unit + unit / 4 + prefetched}
