"""nGPT as NVIDIA's reference computes it, written for the tests from the paper (Loshchilov et
al., arXiv:2410.01131) and the structure of NVIDIA/ngpt (model.py Block.forward, GPT.forward;
train.py normalize_matrices), NOT from ablate's model code. Test-only.

Kept from the reference, on purpose: `justnorm` = x / ||x|| (no eps, no fp32 detour); the
scale vectors stored as `init_scaling * ones` and used as `param * (init_value / init_scaling)`;
s_qk applied to BOTH normalized q and k; the residual `justnorm(A_norm + lr (B_norm - A_norm))`
with A_norm = justnorm(h) (normalized again although h is already unit); s_uv * sqrt(d) on the
(B, T, 8d) c_fc output; s_z on the logits; matrices renormalized by the per-layer loop of
train.py's normalize_matrices.

Departures, each from MODEL_SPEC: RoPE is a real rotation (the reference drops the cos term,
NVIDIA/ngpt issue #10), pairing (i, i + hd/2) with frequencies 10000^(-2i/hd); attention is an
explicit softmax instead of flash-attn, with the spec's window predicate i - W < j <= i; GQA
(absent from the reference) repeats each of the n_kv_head key/value heads for its
n_head / n_kv_head consecutive query heads (query head i reads kv head i // group); tying and
ALBERT sharing hold one tensor where the ablation says so.

Weights live in a plain dict of leaf tensors named as in NVIDIA's model, filled from our model by
`load(model)` through one explicit table, so the reference shares none of our code.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# (name in NVIDIA's Block, name in ours): one table, the only link between the two models
BLOCK_NAMES = {"query": "attn.c_q.weight", "key": "attn.c_k.weight", "value": "attn.c_v.weight",
               "att_c_proj": "attn.c_proj.weight", "c_fc": "mlp.c_fc.weight", "mlp_c_proj": "mlp.c_proj.weight",
               "attn_alpha": "res_A.alpha.param", "mlp_alpha": "res_M.alpha.param", "sqk": "qk.s_qk.param",
               "suv": "mlp.s_uv.param"}
TOP_NAMES = {"wte": "wte.weight", "lm_head": "lm_head.weight", "sz": "s_z.param"}


def justnorm(x, idim=-1):
    return x / x.norm(p=2, dim=idim, keepdim=True)


class Reference:
    """NVIDIA's nGPT for a RunConfig's shape; weights in self.top (wte, lm_head, sz) and
    self.blocks (one dict per layer). Scale constants as in NVIDIA's __init__."""

    def __init__(self, cfg, top: dict, blocks: list[dict]):
        self.cfg, self.top, self.blocks = cfg, top, blocks
        self.base_scale = 1.0 / math.sqrt(cfg.n_embd)
        self.attn_alpha_init_value, self.attn_alpha_init_scaling = 0.05, self.base_scale
        self.mlp_alpha_init_value, self.mlp_alpha_init_scaling = 0.05, self.base_scale
        self.sqk_init_value, self.sqk_init_scaling = 1.0, self.base_scale
        self.suv_init_value, self.suv_init_scaling = 1.0, 1.0
        self.sz_init_value, self.sz_init_scaling = 1.0, self.base_scale

    def parameters(self) -> list[torch.Tensor]:
        """Every distinct leaf once (a tied or shared tensor is one leaf)."""
        tensors = list(self.top.values()) + [t for b in self.blocks for t in b.values()]
        return list({id(t): t for t in tensors}.values())

    # ---- forward
    def rotate(self, x):
        """Standard RoPE on x (B, T, H, hd): the pair (i, i + hd/2) turned by t * 10000^(-2i/hd)."""
        T, hd = x.size(1), x.size(-1)
        inv_freq = 1.0 / (10000.0 ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
        angle = torch.outer(torch.arange(T, dtype=torch.float64), inv_freq)  # (T, hd/2)
        cos, sin = (f(angle).to(x.dtype)[None, :, None, :] for f in (torch.cos, torch.sin))
        a, b = x[..., :hd // 2], x[..., hd // 2:]
        return torch.cat([a * cos - b * sin, a * sin + b * cos], dim=-1)

    def block(self, blk, h):
        cfg = self.cfg
        B, T, C = h.shape
        H, hd = cfg.n_head, cfg.n_embd // cfg.n_head
        q = (h @ blk["query"].T).view(B, T, H, hd)
        k = (h @ blk["key"].T).view(B, T, -1, hd)
        v = (h @ blk["value"].T).view(B, T, -1, hd)
        q, k = self.rotate(q), self.rotate(k)
        group = H // k.size(2)
        k, v = k.repeat_interleave(group, dim=2), v.repeat_interleave(group, dim=2)  # GQA: grouped heads
        sqk = (blk["sqk"] * (self.sqk_init_value / self.sqk_init_scaling)).view(1, 1, H, hd)
        q = sqk * justnorm(q)
        k = sqk * justnorm(k)
        softmax_scale = hd ** 0.5
        att = torch.einsum("bihd,bjhd->bhij", q, k) * softmax_scale
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        window = cfg.window if cfg.window is not None else T
        att = att.masked_fill(~((j <= i) & (j > i - window)), float("-inf"))
        y = torch.einsum("bhij,bjhd->bihd", att.softmax(dim=-1), v).reshape(B, T, C)
        h_att = y @ blk["att_c_proj"].T

        lr = torch.abs(blk["attn_alpha"] * (self.attn_alpha_init_value / self.attn_alpha_init_scaling))
        A_norm = justnorm(h)  # the reference: "normally, normalization is not needed"
        B_norm = justnorm(h_att)
        h = justnorm(A_norm + lr * (B_norm - A_norm))

        uv = h @ blk["c_fc"].T
        suv = blk["suv"] * ((self.suv_init_value / self.suv_init_scaling) * (cfg.n_embd ** 0.5))
        uv = suv * uv
        u, v = torch.chunk(uv, 2, dim=-1)
        h_mlp = (u * F.silu(v)) @ blk["mlp_c_proj"].T

        lr = torch.abs(blk["mlp_alpha"] * (self.mlp_alpha_init_value / self.mlp_alpha_init_scaling))
        A_norm = justnorm(h)
        B_norm = justnorm(h_mlp)
        return justnorm(A_norm + lr * (B_norm - A_norm))

    def __call__(self, idx, targets=None):
        h = self.top["wte"][idx]
        for blk in self.blocks:
            h = self.block(blk, h)
        sz = self.top["sz"] * (self.sz_init_value / self.sz_init_scaling)
        logits = sz * (h @ self.top["lm_head"].T)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1), ignore_index=-1)
        return logits, loss

    # ---- after every optimizer step (train.py normalize_matrices, layer by layer)
    @torch.no_grad()
    def normalize_matrices(self):
        self.top["wte"].copy_(justnorm(self.top["wte"], 1))  # V, n_embd
        self.top["lm_head"].copy_(justnorm(self.top["lm_head"], 1))  # V, n_embd
        for blk in self.blocks:
            for name in ("query", "key", "value", "c_fc"):  # n_proj, n_embd
                blk[name].copy_(justnorm(blk[name], 1))
            for name in ("att_c_proj", "mlp_c_proj"):  # n_embd, n_proj
                blk[name].copy_(justnorm(blk[name], 0))


def load(model) -> tuple[Reference, dict]:
    """A Reference holding copies of `model`'s weights, and {our parameter name: its leaf}.

    One leaf per distinct tensor of ours, so tying and sharing carry over. NVIDIA keeps sqk as
    (n_embd,) and views it per head: ours is (H, hd), flattened here in the same order."""
    state = model.state_dict(keep_vars=True)  # every name, shared tensors under each of theirs
    leaves: dict = {}

    def leaf(name):
        p = state[name]
        if id(p) not in leaves:
            leaves[id(p)] = p.detach().clone().reshape(-1 if name.endswith("s_qk.param") else p.shape) \
                .requires_grad_(True)
        return leaves[id(p)]

    top = {ref: leaf(ours) for ref, ours in TOP_NAMES.items()}
    blocks = [{ref: leaf(f"blocks.{l}.{ours}") for ref, ours in BLOCK_NAMES.items()}
              for l in range(model.config.n_layer)]
    by_name = {name: leaves[id(p)] for name, p in model.named_parameters()}
    return Reference(model.config, top, blocks), by_name
