"""The model's extension points: every place where one architecture differs from another, each
a named slot with one signature. GPT and nGPT are two fillings of the same slots (BUILT_IN); a
plugin fills some of them for the cells that set its keys (its parts are resolved by whoever
builds the model, ablate/plan/plugins.py `parts`, and handed to build_model). gpt.py assembles
a model from the parts and never asks which arch it is building, except at the model level.

A part is built by calling it with the resolved config, `part(cfg)` (a class whose __init__
takes cfg, or any function cfg -> nn.Module, which may return None: this plugin leaves the point
alone in this cell), once per place it is used:

    point     where (per layer unless said)     called as                          gpt          ngpt
    norm      before attention, before the MLP, norm(x) -> x, x (B, T, d)          RMSNorm      none
              and before the head (once)
    qk        between the q/k projection and    qk(heads, rope) -> (q, k)          RotaryQK     SphereQK
              the attention kernel              .softmax_scale: a float
    scores    on the attention scores, inside   .score_mod(score, b, h, q_idx, kv_idx) -> score     Scores (none)
              the kernel (composes)             .mask_mod(b, h, q_idx, kv_idx) -> keep, .softcap
    mlp       the feed-forward sublayer         mlp(x) -> out, (B, T, d) each      MLP (SwiGLU; nGPT scales u, v by s_uv)
    residual  after attention, after the MLP    residual(h, out, first) -> h       Add          SphereStep
    head      on the logits, once (composes)    head(logits) -> logits, (..., V)   Logits (none)
    loss      the training loss, once (adds)    loss(logits, targets, h, reduction) -> scalar   CrossEntropy
    model     the whole model (replaces gpt.GPT: model(cfg, attn_backend, parts); forward(idx, targets) ->
              (logits, loss), normalize_(), optimizer_groups(weight_decay), param_counts(), attn_backend)

qk: `heads` is (B, T, H + H_kv, hd), the query heads then the key heads of one projection, so
a per-head op (RoPE, a norm) runs once over both; `rope` is the (cos, sin) pair for apply_rope.
The part returns q (B, T, H, hd) and k (B, T, H_kv, hd) as the kernel takes them, and says the
softmax scale. RoPE is the part's job: where a change goes relative to RoPE is a choice each
part makes in plain sight (nGPT normalizes after it, QK-norm before it).
scores: FlexAttention's forms. score_mod gets score = q.k * softmax_scale (before the softmax)
and the batch, query-head, query and key indices, and returns the new score; mask_mod says which
keys a query may see, on top of causality and the window (True = keep). Both are written with
elementwise torch ops: FlexAttention calls them on scalars, the exact eager fallback on broadcast
(B, H, T, T) tensors. `softcap = c` declares that score_mod is exactly c * tanh(score / c), which
flash-attn (>= 2.6) runs natively. Which kernel runs is backends.resolve_backend's choice: a
plain Scores keeps today's kernels; a score_mod runs in FlexAttention (CUDA), flash-attn (a lone
softcap) or the eager fallback (everything else, CPU included: the (B, H, T, T) scores exist).
residual: `first` is True for the attention update of the first block only (nGPT renormalizes
h there, where h is still an embedding row).
head: the logits of the LM head (the final norm's output times the (V, d) head matrix; nGPT's
s_z folded in), transformed. loss: `targets` are -1 where ignored; returns the mean
(reduction "mean") or the sum ("sum") over the other tokens; `h` (..., d) is the final norm's
output for the same tokens. Both run per token unless the part says `per_token = False`:
loss_chunk then runs the head and the loss chunk by chunk (the (B, T, V) logits never exist),
and refuses a part that needs whole sequences.

Composable points (plugin_keys.COMPOSABLE): the arch's part first, then every plugin's that fills
the point, in the grid's order: score_mods compose (each gets the previous one's score),
mask_mods all must keep, head transforms compose, loss terms add. The other points take one
part: a plugin's replaces the arch's.

What gpt.GPT does to every part: nn.Linear and nn.Embedding weights are initialized N(0, 0.02)
(modules named c_proj: 0.02 / sqrt(2L), as output projections) after the parts are built; other
parameters keep the part's own init. nGPT keeps every such matrix unit-norm along n_embd (rows;
the columns of c_proj modules) after each step. GPT decays parameters with dim >= 2. Parameter
names are the part's own under its slot: blocks.<l>.norm_A / norm_M / qk / scores.<i> / mlp /
res_A / res_M, norm_f, head.<i>, loss.<i> (<i>: the part's place in its composition, 0 = the arch's).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ablate.core.config import ARCHS
from ablate.core.errors import AblateError
from ablate.core.plugin_keys import COMPOSABLE, POINTS  # the names (torch-free, for the plugin loader); documented here
from ablate.model.ops import apply_rope, f32, unit


class RMSNorm(nn.Module):
    """GPT's pre-norm: eps 1e-6, statistics in fp32 (bf16 squares lose the small entries)."""

    def __init__(self, d: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        xf = f32(x)
        return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)).type_as(x) * self.weight


class Scale(nn.Module):
    """An nGPT learnable vector, stored as `scale * ones(shape)` and used as `param * (init / scale)`.

    The effective value at init is `init` whatever `scale` is; `scale` only sets the effective
    Adam step (Adam moves `param` by ~lr, so the effective value moves by ~lr * init / scale).
    Always fp32, never normalized, never weight-decayed."""

    def __init__(self, shape, init: float, scale: float):
        super().__init__()
        self.init, self.scale = init, scale
        self.param = nn.Parameter(torch.full(shape if isinstance(shape, tuple) else (shape,), float(scale),
                                             dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        return self.param * (self.init / self.scale)

    def extra_repr(self) -> str:
        return f"shape={tuple(self.param.shape)}, init={self.init}, scale={self.scale:.4g}"


# ---------------------------------------------------------------- norm

def rms_norm(cfg) -> nn.Module:
    return RMSNorm(cfg.n_embd)


def no_norm(cfg) -> nn.Module:
    return nn.Identity()  # nGPT: h is already on the unit sphere


# ---------------------------------------------------------------- qk

class RotaryQK(nn.Module):
    """GPT: RoPE on every head of q and k (one call for both); softmax scale 1/sqrt(hd), which
    keeps random dot products O(1)."""

    def __init__(self, cfg):
        super().__init__()
        self.heads = (cfg.n_head, cfg.kv_heads)
        self.softmax_scale = cfg.head_dim ** -0.5

    def forward(self, heads, rope):
        return apply_rope(heads, *rope).split(self.heads, dim=2)


class SphereQK(RotaryQK):
    """nGPT: RoPE, then Norm on every head of q and k, s_qk^2 on q; softmax scale sqrt(hd),
    since q.k is now a cosine in [-1, 1] (times s_qk^2) and needs a temperature, not a damper.

    (s_qk Norm(q)) . (s_qk Norm(k)) = (s_qk^2 Norm(q)) . Norm(k): the same function and
    gradients, and k stays free of per-query-head factors, so GQA kernels still see only
    n_kv_head distinct keys."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.softmax_scale = cfg.head_dim ** 0.5
        self.s_qk = Scale((cfg.n_head, cfg.head_dim), 1.0, cfg.n_embd ** -0.5)

    def forward(self, heads, rope):
        q, k = unit(apply_rope(heads, *rope)).split(self.heads, dim=2)  # one Norm call for q and k
        return q * (self.s_qk() ** 2).type_as(q), k  # s_qk: (H, hd), broadcast over (B, T)


# ---------------------------------------------------------------- mlp

class MLP(nn.Module):
    """SwiGLU with a 4d hidden size: c_fc d -> 8d (u and v halves), u * silu(v), c_proj 4d -> d."""

    def __init__(self, cfg):
        super().__init__()
        d = cfg.n_embd
        self.c_fc = nn.Linear(d, 8 * d, bias=False)
        self.c_proj = nn.Linear(4 * d, d, bias=False)
        # nGPT: rows of c_fc are unit vectors, so u and v are ~1/sqrt(d) cosines; s_uv * sqrt(d)
        # brings them back to the range where SiLU is not just linear.
        self.s_uv = Scale(8 * d, 1.0, 1.0) if cfg.arch == "ngpt" else None
        self.sqrt_d = d ** 0.5

    def forward(self, x):
        w = self.c_fc.weight  # (8d, d): rows [:4d] make u, rows [4d:] make v
        if self.s_uv is not None:
            # s_uv * sqrt(d) scales the rows of c_fc, before the matmul: the same u and v as scaling
            # the (B, T, 8d) output, for an (8d, d) multiply (and its gradient) instead.
            w = w * (self.s_uv() * self.sqrt_d).type_as(w)[:, None]
        half = w.size(0) // 2
        u, v = F.linear(x, w[:half]), F.linear(x, w[half:])  # (B, T, 4d) each, and no 8d cat in backward
        return self.c_proj(u * F.silu(v))


# ---------------------------------------------------------------- residual

class Add(nn.Module):
    """GPT: the plain residual stream."""

    def __init__(self, cfg=None):
        super().__init__()

    def forward(self, h, out, first: bool = False):
        return h + out


class SphereStep(nn.Module):
    """nGPT: a step of size |alpha| (per dim) from h toward Norm(out), back onto the sphere."""

    def __init__(self, cfg):
        super().__init__()
        self.alpha = Scale(cfg.n_embd, 0.05, cfg.n_embd ** -0.5)

    def forward(self, h, out, first: bool = False):
        # The reference normalizes h again first (NVIDIA: A_norm = justnorm(h)). Where h came out
        # of a Norm, that is the identity in value and in gradient (a Norm's backward already
        # removes the radial part), so only the first update does it: there h is wte[idx], and
        # without it the embedding rows get a radial gradient the reference never sees, and Adam
        # diverges.
        if first:
            h = unit(h)
        return unit(torch.lerp(h, unit(f32(out)), self.alpha().abs()))  # h + |alpha| (Norm(out) - h)


# ---------------------------------------------------------------- scores

class Scores(nn.Module):
    """Attention scores as the kernel computes them: q.k * softmax_scale, causal (and the window),
    nothing else. A plugin's scores part subclasses it and defines `score_mod` and/or `mask_mod`
    as methods (FlexAttention's signatures, above), and `softcap` where score_mod is a soft-cap."""
    score_mod = None
    mask_mod = None
    softcap = None

    def __init__(self, cfg=None):
        super().__init__()


class ScoreChain(nn.ModuleList):
    """One layer's scores parts composed, as the kernel sees them: score_mod applies each part's
    in order, mask_mod keeps what every part keeps. `modifies` is False for the plain scores
    (the kernels of a cell without a score modification are the built-in ones)."""

    def __init__(self, parts):
        super().__init__(parts)
        self.n_score_mods = sum(p.score_mod is not None for p in self)
        self.n_mask_mods = sum(p.mask_mod is not None for p in self)
        self.modifies = bool(self.n_score_mods or self.n_mask_mods)
        # flash-attn's native soft-cap stands in for score_mod only where it is all there is
        lone = [p.softcap for p in self if p.score_mod is not None]
        self.softcap = lone[0] if len(lone) == 1 and lone[0] else None

    def score_mod(self, score, b, h, q_idx, kv_idx):
        for part in self:
            if part.score_mod is not None:
                score = part.score_mod(score, b, h, q_idx, kv_idx)
        return score

    def mask_mod(self, b, h, q_idx, kv_idx):
        keep = None
        for part in self:
            if part.mask_mod is not None:
                mine = part.mask_mod(b, h, q_idx, kv_idx)
                keep = mine if keep is None else keep & mine
        return keep


# ---------------------------------------------------------------- head and loss

class Logits(nn.Module):
    """The built-in head part: the LM head's logits as they are."""
    per_token = True

    def __init__(self, cfg=None):
        super().__init__()

    def forward(self, logits):
        return logits


class HeadChain(nn.ModuleList):
    """The head parts composed: each transforms the previous one's logits. Parts are called
    through .forward (no module hooks): under loss_chunk this runs once per chunk, inside the
    chunk's own autograd pass, which hooks that watch gradients (torch's MemTracker) cannot follow."""

    def forward(self, logits):
        for part in self:
            logits = part.forward(logits)
        return logits


class CrossEntropy(nn.Module):
    """The built-in loss: cross-entropy of the fp32 logits, targets -1 ignored."""
    per_token = True

    def __init__(self, cfg=None):
        super().__init__()

    def forward(self, logits, targets, h=None, reduction="mean"):
        return F.cross_entropy(f32(logits).reshape(-1, logits.size(-1)), targets.reshape(-1), ignore_index=-1,
                               reduction=reduction)


class LossChain(nn.ModuleList):
    """The loss parts composed: the arch's loss plus every term, with one reduction. Parts are
    called through .forward, as HeadChain's."""

    def forward(self, logits, targets, h, reduction="mean"):
        total = None
        for part in self:
            term = part.forward(logits, targets, h, reduction)
            total = term if total is None else total + term
        return total


def whole_sequence_parts(*chains) -> list:
    """The parts of head / loss chains that need whole sequences (`per_token = False`)."""
    return [part for chain in chains for part in chain if not getattr(part, "per_token", True)]


# ---------------------------------------------------------------- the registry

BUILT_IN = dict(zip(ARCHS, (  # each arch's parts, in ARCHS's order; "model" is gpt.GPT for both
    {"norm": rms_norm, "qk": RotaryQK, "scores": Scores, "mlp": MLP, "residual": Add,
     "head": Logits, "loss": CrossEntropy},                                                     # gpt
    {"norm": no_norm, "qk": SphereQK, "scores": Scores, "mlp": MLP, "residual": SphereStep,
     "head": Logits, "loss": CrossEntropy},                                                     # ngpt
)))
CHAINS = {"scores": ScoreChain, "head": HeadChain, "loss": LossChain}  # how each composable point composes


def parts_of(cfg, plugin_parts: dict | None = None) -> dict:
    """{point: part(cfg)} of cfg's model: its arch's parts, with `plugin_parts` ({point: (part,
    ...)} of the plugins the cell uses, in the grid's order, resolved by the caller; a lone part
    counts as a 1-tuple) replacing them, or composed after them at the composable points."""
    plugin_parts = {p: v if isinstance(v, tuple) else (v,) for p, v in (plugin_parts or {}).items()}
    arch = BUILT_IN[cfg.arch]
    out = {}
    for point in POINTS:
        mine = plugin_parts.get(point, ())
        if point in COMPOSABLE:
            out[point] = _composed(CHAINS[point], (arch[point], *mine))
        elif len(mine) > 1:
            raise AblateError(f"{len(mine)} plugins fill the point '{point}' in this cell, which takes one part")
        elif mine:
            out[point] = _or_else(mine[0], arch.get(point))
        elif point in arch:
            out[point] = arch[point]
    return out


def _composed(chain, parts):
    def build(cfg):
        return chain([made for part in parts if (made := part(cfg)) is not None])
    return build


def _or_else(part, fallback):
    """A plugin's part; where it returns None (it leaves the point alone in this cell), the arch's."""
    def build(*args):
        made = part(*args)
        return fallback(*args) if made is None and fallback is not None else made
    return build
