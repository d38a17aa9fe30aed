"""z-loss: a penalty on log Z, the softmax normalizer of every token's logits.

PaLM (Chowdhery et al. 2022, section 5, "Loss normalization") adds 1e-4 * log(Z)^2 to the
cross-entropy, Z = sum_v exp(logit_v), "to encourage the softmax normalizer log(Z) to be close
to 0, which we found increases the stability of training"; OLMo 2 and Chameleon use it too. The
cross-entropy does not care where the logits sit (adding a constant to all of them changes
nothing); the z-loss pins them down, so they cannot drift to magnitudes where bf16 rounds.

A `loss` part: a term added to the cross-entropy, mean over the tokens that count (targets != -1).
It works per token, so loss_chunk computes it chunk by chunk with the head.
"""
import torch
import torch.nn as nn

from ablate.model.ops import f32
from ablate.plugin import Key

KEYS = {"z_loss": Key(float, 0.0, "coefficient of log(Z)^2 per token (PaLM: 1e-4); 0 = none", range=(0, None))}


class ZLoss(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.coef = cfg.z_loss

    def forward(self, logits, targets, h, reduction):  # logits (..., V); a term added to the cross-entropy
        counted = targets != -1  # a mask, not an index: no shape that depends on the data (compile, simulation)
        z2 = torch.logsumexp(f32(logits), dim=-1).square() * counted
        return self.coef * (z2.sum() / counted.sum() if reduction == "mean" else z2.sum())


POINTS = {"loss": ZLoss}
