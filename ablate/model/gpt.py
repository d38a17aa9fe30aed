"""GPT and nGPT in one model, with the four ablations: GQA, weight tying, ALBERT attention
sharing and sliding-window attention (MODEL_SPEC sections 1-4).

Reads like nanoGPT, from the smallest part to the largest: attention, block, model. The parts
that differ between the archs (norm, what happens to q and k, MLP, residual update) are the
extension points in points.py, where GPT's and nGPT's are registered side by side; a plugin
fills the same slots. Both archs run the same lines here except at the model level, and each
difference lives in exactly one place:

    pre-norm        RMSNorm before attention, MLP and head (GPT) | none (nGPT)   points "norm"
    q and k         RoPE, softmax scale 1/sqrt(hd) | + Norm(q) s_qk^2, Norm(k), sqrt(hd)   points "qk"
    MLP input       -                        | u, v scaled by s_uv sqrt(d)      points "mlp"
    residual        h + out                  | Norm(h' + |alpha| (Norm(out) - h')), h' = Norm(h)   points "residual"
    logits          lm_head(h)               | s_z * lm_head(h)                 GPT.head_weight
    weights         free                     | unit rows/columns, normalize_()  GPT.normalize_
    weight decay    matrices                 | none                             GPT.optimizer_groups

Ablations: GQA is W_k, W_v with n_kv_head heads (every backend runs it natively); tying makes
lm_head.weight the same Parameter as wte.weight; sharing makes the blocks of a group hold the
same Attention module (only W_q, W_k, W_v, W_o; alpha and s_qk stay per layer); the window
is passed to the attention backend (see backends.py for the exact predicate).

Speed (nGPT at GPT's cost, GPT at the peers'): nGPT's Norm and RoPE have their backward
written out (ops.py); q, k and v come from one matmul; s_uv and s_z scale weight rows, not the
(B, T, 8d) and (B, T, V) activations; the residual's Norm(h) runs only where it is not the
identity. tests/model/test_ops.py holds the plain formulas and checks that none of this
changes loss or gradients; tests/model/test_peers.py checks both archs against code we did
not write (transformers' Mistral, NVIDIA's nGPT).
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.core import plugin_keys
from ablate.core.config import ARCHS
from ablate.core.errors import AblateError
from ablate.model.backends import attend, resolve_backend
from ablate.model.loss import chunked_head_loss
from ablate.model.ops import f32, rope_cos_sin
from ablate.model.points import Scale, parts_of, whole_sequence_parts
from ablate.model.recompute import run_blocks


# ---------------------------------------------------------------- attention

class Attention(nn.Module):
    """Causal self-attention with GQA and an optional sliding window.

    Holds only W_q, W_k, W_v, W_o (c_proj), so ALBERT sharing is simply several blocks
    holding this one module; what happens to q and k between the projection and the kernel
    (RoPE, nGPT's Norm and s_qk) is the layer's own `qk` part, and what happens to the scores
    inside the kernel its own `scores` parts, both passed in."""

    def __init__(self, cfg, backend: str):
        super().__init__()
        d, hd = cfg.n_embd, cfg.head_dim
        self.n_head, self.n_kv_head, self.head_dim = cfg.n_head, cfg.kv_heads, hd
        self.window, self.backend = cfg.window, backend
        self.c_q = nn.Linear(d, cfg.n_head * hd, bias=False)
        self.c_k = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.c_v = nn.Linear(d, cfg.kv_heads * hd, bias=False)
        self.c_proj = nn.Linear(cfg.n_head * hd, d, bias=False)

    def qkv(self, x):
        """The q and k heads (B, T, H + H_kv, hd), query heads first, and v (B, T, H_kv, hd)."""
        B, T, _ = x.shape
        H, H_kv = self.n_head, self.n_kv_head
        w = torch.cat([self.c_q.weight, self.c_k.weight, self.c_v.weight])  # one matmul for q, k and v
        return F.linear(x, w).view(B, T, H + 2 * H_kv, self.head_dim).split([H + H_kv, H_kv], dim=2)

    def forward(self, x, rope, qk, scores=None):
        heads, v = self.qkv(x)
        q, k = qk(heads, rope)  # the layer's qk part: RoPE and whatever its arch does to q and k
        y = attend(q, k, v, scale=qk.softmax_scale, window=self.window, backend=self.backend,
                   scores=scores)  # (B, T, H, hd)
        return self.c_proj(y.flatten(2))  # (B, T, d)


# ---------------------------------------------------------------- block

class Block(nn.Module):
    def __init__(self, cfg, attn: Attention, parts: dict):
        super().__init__()
        self.attn = attn  # possibly the same module as in the other blocks of its sharing group
        self.qk = parts["qk"](cfg)  # per layer, also under sharing (nGPT's s_qk)
        self.scores = parts["scores"](cfg)  # per layer: a ScoreChain, plain unless a plugin modifies the scores
        self.mlp = parts["mlp"](cfg)
        self.norm_A, self.norm_M = parts["norm"](cfg), parts["norm"](cfg)
        self.res_A, self.res_M = parts["residual"](cfg), parts["residual"](cfg)

    def forward(self, h, rope, first: bool = False):
        h = self.res_A(h, self.attn(self.norm_A(h), rope, self.qk, self.scores), first)
        h = self.res_M(h, self.mlp(self.norm_M(h)))
        return h


# ---------------------------------------------------------------- model

class GPT(nn.Module):
    """The whole model for one RunConfig: cfg.arch picks GPT or nGPT (and their parts, unless
    `parts` says otherwise: points.parts_of, with a plugin's)."""

    def __init__(self, cfg, attn_backend: str = "sdpa", parts: dict | None = None):
        super().__init__()
        check_config(cfg)
        self.config = cfg
        self.ngpt = cfg.arch == "ngpt"
        self.attn_backend = attn_backend
        parts = parts_of(cfg) if parts is None else parts
        d, V, L, G = cfg.n_embd, cfg.vocab_size, cfg.n_layer, cfg.attn_groups
        self.wte = nn.Embedding(V, d)
        groups = [Attention(cfg, attn_backend) for _ in range(G)]
        self.blocks = nn.ModuleList(Block(cfg, groups[layer // (L // G)], parts) for layer in range(L))
        self.norm_f = parts["norm"](cfg)
        self.lm_head = nn.Linear(d, V, bias=False)
        self.head = parts["head"](cfg)  # transforms of the logits (a HeadChain; the built-in one changes nothing)
        self.loss = parts["loss"](cfg)  # a LossChain: cross-entropy, plus a plugin's terms
        whole = whole_sequence_parts(self.head, self.loss) if cfg.loss_chunk else []
        if whole:
            raise AblateError(f"key 'loss_chunk': {type(whole[0]).__qualname__} ({inspect.getfile(type(whole[0]))}) "
                              "needs whole sequences (per_token = False), but loss_chunk runs the head and the loss "
                              "chunk by chunk: set loss_chunk: null for this cell")
        if cfg.tie_embeddings:
            self.lm_head.weight = self.wte.weight  # one Parameter: (V, d) either way
        self.s_z = Scale(V, 1.0, d ** -0.5) if self.ngpt else None
        for w, axis in self._matrices():  # N(0, 0.02); output projections 0.02 / sqrt(2L)
            nn.init.normal_(w, mean=0.0, std=0.02 / math.sqrt(2 * L) if axis == 0 else 0.02)
        self.normalize_()

    def forward(self, idx, targets=None):
        T = idx.size(1)
        rope = rope_cos_sin(T, self.config.head_dim, idx.device, f32(self.wte.weight).dtype)
        h = self.wte(idx)  # (B, T, d); nGPT: unit rows
        h = run_blocks(self.blocks, h, rope, self.config.act_ckpt)  # act_ckpt: recompute in backward
        h = self.norm_f(h)
        if targets is not None and self.config.loss_chunk:  # the head and the loss per chunk: no (B, T, V) logits
            return None, chunked_head_loss(h, self.head_weight(), targets, self.config.loss_chunk, self.head, self.loss)
        logits = self.head(F.linear(h, self.head_weight()))  # (B, T, V)
        loss = None if targets is None else self.loss(logits, targets, h)
        return logits, loss

    def head_weight(self) -> torch.Tensor:
        """The (V, d) matrix the logits are computed with. nGPT: the logits are cosines in [-1, 1]
        and s_z is a learned per-token temperature, folded into the rows of lm_head: the same
        logits as s_z * lm_head(h), for a (V, d) multiply instead of one over the (B, T, V) logits."""
        w = self.lm_head.weight
        return w if self.s_z is None else w * self.s_z().type_as(w)[:, None]

    # ---- nGPT's hypersphere

    def _matrices(self):
        """(weight, axis of n_embd) for every distinct matrix, each once even when tied or shared:
        wte, lm_head, W_q, W_k, W_v, c_fc rows (dim 1); the output projections' columns (dim 0)."""
        seen = set()
        for name, module in self.named_modules():  # named_modules visits a shared module once
            if isinstance(module, (nn.Linear, nn.Embedding)) and id(module.weight) not in seen:
                seen.add(id(module.weight))
                yield module.weight, 0 if name.endswith("c_proj") else 1

    @torch.no_grad()
    def normalize_(self) -> None:
        """nGPT: put every matrix back on the unit sphere along its n_embd axis (in fp32, cast
        back to the storage dtype). Call after building the optimizer and after every step.
        Scale vectors are never normalized. GPT: a no-op."""
        if not self.ngpt:
            return
        for w, axis in self._matrices():
            w.copy_(F.normalize(f32(w), dim=axis))

    # ---- what the trainer and the report ask of a model

    def optimizer_groups(self, weight_decay: float) -> list[dict]:
        """AdamW groups from the de-duplicated named_parameters() (a tied or shared tensor once;
        walking the blocks would add it once per layer). GPT: matrices (dim >= 2) decay,
        vectors do not. nGPT: nothing decays, whatever weight_decay says: its matrices are
        renormalized every step, so decay has nothing to shrink, and scale vectors never decay."""
        params = [p for _, p in self.named_parameters() if p.requires_grad]
        if self.ngpt:
            return [{"params": params, "weight_decay": 0.0}]
        groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
        return [g for g in groups if g["params"]]

    def param_counts(self) -> dict:
        """Counts from the real, de-duplicated parameters; the same keys as
        ablate.core.estimate.param_counts (and equal to it: a test checks every option mix)."""
        def count(params):
            return sum(p.numel() for p in {id(p): p for p in params}.values())

        total = count(self.parameters())
        embedding = count([self.wte.weight, self.lm_head.weight])
        attention = count(p for b in self.blocks for p in b.attn.parameters())
        mlp = count(p for b in self.blocks for p in b.mlp.parameters() if p.dim() >= 2)  # matrices (not s_uv)
        return {"total": total, "embedding": embedding, "non_embedding": total - embedding,
                "attention": attention, "mlp": mlp, "vectors": total - embedding - attention - mlp}


# ---------------------------------------------------------------- building

def check_config(cfg) -> None:
    """The structural rules the model relies on, as one-line errors (core/config.py's validate checks them
    too; this keeps the model usable on its own)."""
    def bad(msg):
        raise AblateError(msg)

    if cfg.vocab_size is None:
        bad("vocab_size is not set: resolve the config with the data's vocabulary before building the model")
    if cfg.arch not in ARCHS:
        bad(f"arch {cfg.arch!r} is not one of {', '.join(ARCHS)}")
    if cfg.n_embd % cfg.n_head or cfg.head_dim % 2:
        bad(f"n_embd={cfg.n_embd} / n_head={cfg.n_head} must be an even integer head_dim (RoPE rotates pairs)")
    if cfg.kv_heads < 1 or cfg.n_head % cfg.kv_heads:
        bad(f"n_kv_head={cfg.kv_heads} must divide n_head={cfg.n_head}")
    if cfg.attn_groups < 1 or cfg.n_layer % cfg.attn_groups:
        bad(f"share_attn={cfg.attn_groups} must divide n_layer={cfg.n_layer}")
    if cfg.window is not None and cfg.window < 1:
        bad(f"window={cfg.window} must be >= 1 (keys seen including the query itself) or null")


def store_block_matrices(model: GPT, dtype: torch.dtype) -> GPT:
    """Store the attention and MLP matrices in `dtype` (the NVIDIA reference's bf16 storage);
    embeddings, head, norms and scale vectors stay fp32."""
    for module in model.blocks.modules():
        if isinstance(module, nn.Linear):
            module.to(dtype)
    return model


def build_model(cfg, device_type: str | None = None, plugin_parts: dict | None = None) -> GPT:
    """The model for a resolved RunConfig, on CPU (the caller moves it), fp32 except the block
    matrices with param_dtype bf16; built from its arch's parts and `plugin_parts`, the parts of
    the plugins the cell uses, which the caller resolves (ablate/plan/plugins.py `parts`: the
    model never loads a plugin). `device_type` is where it will run ("cpu" | "cuda"; default
    from cfg.device, auto = cuda when available): it picks the attention backend
    (model.attn_backend) and decides whether bf16 storage is allowed."""
    if device_type is None:
        device_type = cfg.device if cfg.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if cfg.param_dtype == "bf16":
        if device_type != "cuda":
            raise AblateError(f"param_dtype bf16 (bf16 block matrices) needs CUDA, device is {device_type}: "
                              "use param_dtype fp32 (dtype bf16 still autocasts)")
        if cfg.dtype != "bf16":
            raise AblateError("param_dtype bf16 needs dtype bf16 (autocast): fp32 activations cannot meet bf16 weights")
    if plugin_parts is None and cfg.plugins and plugin_keys.used(cfg):
        raise AblateError(f"this cell uses plugins ({plugin_keys.used_text(cfg)}): resolve their parts "
                          "(ablate.plan.plugins.parts(cfg)) and pass them as plugin_parts")
    parts = parts_of(cfg, plugin_parts)
    backend = attention_backend(cfg, device_type, parts)
    model = parts["model"](cfg, backend, parts) if "model" in parts else None
    model = GPT(cfg, backend, parts) if model is None else model
    if cfg.param_dtype == "bf16":
        store_block_matrices(model, torch.bfloat16)
    return model


def attention_backend(cfg, device_type: str, parts: dict) -> str:
    """The attention backend cfg's model runs on device_type (see backends.resolve_backend), given
    its parts (points.parts_of): a score modification needs a kernel that takes it."""
    return resolve_backend(cfg.attn_backend, device_type, cfg.dtype, cfg.window, cfg.context,
                           scores=parts["scores"](cfg))  # one layer's scores parts: what every layer's are


def model_sizes(cfg, plugin_parts: dict | None = None) -> dict:
    """param_counts() and ckpt_bytes (the weights as model.pt stores them) of cfg's model, built
    on the meta device: no memory, no compute. How a cell that uses a plugin is sized, since no
    formula knows its parts (core/estimate.py covers the built-in model only)."""
    with torch.device("meta"):
        model = build_model(cfg, "cuda" if cfg.param_dtype == "bf16" else "cpu", plugin_parts)
    tensors = {id(t): t for t in [*model.parameters(), *model.buffers()]}.values()
    return {**model.param_counts(), "ckpt_bytes": sum(t.numel() * t.element_size() for t in tensors)}
