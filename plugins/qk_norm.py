"""QK-norm: RMSNorm on every head of q and k, before RoPE (GPT arch).

Recent open models (Qwen3, Gemma 3; OLMo 2 over all heads at once) normalize queries and keys
before attention: the logits q.k / sqrt(hd) then stay bounded however large W_q and W_k grow,
which removes the attention-logit growth that makes large learning rates diverge (Dehghani et
al. 2023, ViT-22B; Wortsman et al. 2023, "Small-scale proxies for large-scale Transformer
training instabilities").

Where: on each head's hd-vector, right after the projection and BEFORE RoPE, as Qwen3 and
Gemma 3 do. A rotation keeps a vector's RMS but not a per-dimension gain: RoPE turns each pair
(i, i + hd/2) by a position-dependent angle, so a gain applied after it would weigh the two
members of a pair differently at every position, and <R_m q, R_n k> would no longer depend on
m - n alone (nGPT accepts that for its s_qk, MODEL_SPEC 6.9). Before RoPE the norm sees only
content and RoPE stays the last step before the scores: attention stays relative (tested in
tests/plugins/test_qk_norm.py).

Parameters: one gain of hd for the query heads and one for the key heads, shared by all heads
(Qwen3's q_norm and k_norm: RMSNorm(head_dim), eps 1e-6), fp32, not weight-decayed (vectors):
2 hd per layer. The softmax scale stays 1/sqrt(hd). nGPT already puts q and k on the unit
sphere (and scales them by s_qk), so `check` refuses qk_norm there.
"""
import torch
import torch.nn as nn

from ablate.model.ops import apply_rope, f32
from ablate.model.points import RotaryQK
from ablate.plugin import Key

KEYS = {"qk_norm": Key(bool, False, "RMSNorm (a learned gain per head dim) on every head of q and k, before RoPE")}


class QKNorm(RotaryQK):
    """GPT's q/k part (RoPE, softmax scale 1/sqrt(hd)) with an RMSNorm on every head first."""

    def __init__(self, cfg, eps: float = 1e-6):
        super().__init__(cfg)  # self.heads = (H, H_kv); self.softmax_scale = hd ** -0.5
        self.eps = eps
        self.q_gain = nn.Parameter(torch.ones(cfg.head_dim))
        self.k_gain = nn.Parameter(torch.ones(cfg.head_dim))

    def forward(self, heads, rope):
        # heads (B, T, H + H_kv, hd): the query heads, then the key heads; all normalized at once,
        # in fp32 (as GPT's RMSNorm), then the gains, then RoPE, back in the input's dtype
        x = f32(heads)
        x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        H, H_kv = self.heads
        gain = torch.cat([self.q_gain.expand(H, -1), self.k_gain.expand(H_kv, -1)])  # (H + H_kv, hd)
        return apply_rope((x * gain).type_as(heads), *rope).split(self.heads, dim=2)


POINTS = {"qk": QKNorm}


def check(cfg):
    if cfg.qk_norm and cfg.arch != "gpt":
        raise ValueError("qk_norm is for arch gpt: nGPT already normalizes q and k (and scales them by s_qk)")
