"""ALiBi in place of RoPE: attention with linear biases (Press et al. 2022, "Train Short, Test
Long: Attention with Linear Biases Enables Input Length Extrapolation").

No rotary embedding: queries and keys carry no position. Instead head h adds -m_h * (i - j) to
the score of query i on key j (j <= i), after the 1/sqrt(hd) scaling, so attention decays
linearly with distance, more steeply in some heads than in others. The slopes m_h form a
geometric sequence: for H a power of two, 2^(-8/H), 2^(-16/H), ..., 2^(-8); otherwise the
paper's recipe, the n = 2^floor(log2 H) slopes of n heads, then every other slope of 2n heads
(the first H - n of them). No parameters.

Two parts: a `qk` part (GPT's, without the rotation) and a `scores` part (the bias, as a
score_mod: FlexAttention on CUDA, the exact eager fallback on CPU). GPT arch only: nGPT's q/k
part normalizes after RoPE, and a plugin that changes it would be another ablation.
"""
import math

import torch

from ablate.model.points import RotaryQK, Scores
from ablate.plugin import Key

KEYS = {"alibi": Key(bool, False, "ALiBi: a linear distance bias per head in the attention scores, in place of RoPE")}


class NoRope(RotaryQK):
    def forward(self, heads, rope):  # heads (B, T, H + H_kv, hd) -> (q, k), no rotation
        return heads.split(self.heads, dim=2)


class Alibi(Scores):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.n = 2 ** math.floor(math.log2(cfg.n_head))  # heads past n take every other slope of 2n heads

    def score_mod(self, score, b, h, q_idx, kv_idx):
        n = self.n
        slope = torch.where(h < n, torch.exp2(-8.0 * (h + 1) / n), torch.exp2(-4.0 * (2 * (h - n) + 1) / n))
        return score - slope * (q_idx - kv_idx)  # -m_h (i - j)


POINTS = {"qk": NoRope, "scores": Alibi}


def check(cfg):
    if cfg.alibi and cfg.arch != "gpt":
        raise ValueError("alibi is for arch gpt: nGPT's q/k part normalizes after RoPE")
