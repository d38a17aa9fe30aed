"""Gemma 2's two soft-caps: tanh soft-capping of the attention scores and of the final logits.

c * tanh(x / c) is x for |x| << c and never leaves (-c, c): a smooth clip that keeps the
softmax from saturating on a few huge entries, without the zero gradient of a hard clip.
Gemma 2 (Gemma Team, 2024, "Gemma 2: Improving Open Language Models at a Practical Size",
section 2) caps the attention scores at 50.0 and the final logits at 30.0 (Grok-1 caps its
attention at 30): `GEMMA2` below, the values grids/softcap.yaml uses. A key's default (null)
leaves the model unchanged, as every plugin key's must.

- attn_softcap: a `scores` part, c * tanh(score / c) on score = q.k / sqrt(hd), before the
  causal mask and the softmax (Gemma 2's order). It declares `softcap`, so flash-attn (>= 2.6,
  CUDA) runs its native soft-cap instead; FlexAttention runs the score_mod on CUDA, and the exact
  eager fallback everywhere else (CPU: summary.json says attn_backend eager).
- logit_softcap: a `head` part on the logits (fp32), per token, so loss_chunk still applies it
  chunk by chunk. Generation and evaluation see the capped logits too, as in Gemma 2.

Each part is filled only in the cells that set its key (a part that returns None leaves the
point alone), so a logit-only cell keeps the built-in attention kernel.
"""
import torch
import torch.nn as nn

from ablate.model.ops import f32
from ablate.model.points import Scores
from ablate.plugin import Key

GEMMA2 = {"attn_softcap": 50.0, "logit_softcap": 30.0}
KEYS = {"attn_softcap": Key(float, None, "tanh soft-cap c of the attention scores: c tanh(s / c); null = none"),
        "logit_softcap": Key(float, None, "tanh soft-cap c of the final logits: c tanh(z / c); null = none")}


class AttnSoftCap(Scores):
    def __init__(self, cfg):
        super().__init__(cfg)
        self.softcap = cfg.attn_softcap  # declares score_mod below: flash-attn runs this one natively

    def score_mod(self, score, b, h, q_idx, kv_idx):  # score = q.k * softmax_scale
        return self.softcap * torch.tanh(score / self.softcap)


class LogitSoftCap(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cap = cfg.logit_softcap

    def forward(self, logits):  # (..., V), every token on its own
        return self.cap * torch.tanh(f32(logits) / self.cap)


POINTS = {"scores": lambda cfg: AttnSoftCap(cfg) if cfg.attn_softcap is not None else None,
          "head": lambda cfg: LogitSoftCap(cfg) if cfg.logit_softcap is not None else None}


def check(cfg):
    for key in KEYS:
        if getattr(cfg, key) is not None and getattr(cfg, key) <= 0:
            raise ValueError(f"{key} must be > 0 (the cap), or null for none")
