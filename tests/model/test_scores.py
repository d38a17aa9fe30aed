"""The scores, head and loss points (points.py) and the kernels that run a score modification
(backends.py): the exact eager fallback against plain formulas, FlexAttention and SDPA; which
kernel each route resolves to and what the model records; composition in order; the head and
loss parts through the plain and the chunked loss; what loss_chunk refuses."""
import dataclasses

import pytest
import torch
import torch.nn as nn

from ablate.core.errors import AblateError
from ablate.model import backends, build_model
from ablate.model.backends import attend, eager_attention, resolve_backend
from ablate.model.points import RotaryQK, ScoreChain, Scores, parts_of
from model_helpers import single_thread, tiny_cfg  # noqa: F401  (autouse fixture)

B, T, H, HD = 2, 12, 4, 8
HAS_FLEX = backends.has_flex()


# ---------------------------------------------------------------- score modifications used below

class Cap(Scores):
    softcap = 2.0

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return self.softcap * torch.tanh(score / self.softcap)


class Bias(Scores):
    """Depends on every index: batch row, head, query and key position."""

    def score_mod(self, score, b, h, q_idx, kv_idx):
        return score + 0.3 * (h + 1) - 0.05 * (q_idx - kv_idx) + 0.2 * b


class Documents(Scores):
    """Documents of 5 tokens: a query sees keys of its own document only."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return (q_idx // 5) == (kv_idx // 5)


class Starved(Scores):
    """Queries 0 and 1 see no key at all."""

    def mask_mod(self, b, h, q_idx, kv_idx):
        return q_idx >= 2


def bias_by_hand(b, h, i, j):
    return 0.3 * (h + 1) - 0.05 * (i - j) + 0.2 * b


def qkv(kv_heads=H, seed=0, dtype=torch.float32):
    """(B, H, T, hd) layout, as eager_attention takes it."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, n, T, HD, generator=g, dtype=torch.float64).to(dtype) for n in (H, kv_heads, kv_heads)]


def by_hand(q, k, v, scale, window=None, mod=None, keep=None):
    """Attention written out with loops over every (b, h, i, j), independent of the code under
    test: scores, an optional mod(s, b, h, i, j) and keep(b, h, i, j), softmax over visible keys
    (none visible: zeros), times v. (B, H, T, hd) layout."""
    rep = q.size(1) // k.size(1)
    out = torch.zeros_like(q, dtype=torch.float64)
    for b in range(q.size(0)):
        for h in range(q.size(1)):
            for i in range(T):
                vis = [j for j in range(i + 1) if (window is None or i - j < window) and (keep is None or keep(b, h, i, j))]
                if not vis:
                    continue
                s = torch.stack([(q[b, h, i].double() @ k[b, h // rep, j].double()) * scale for j in vis])
                if mod is not None:
                    s = torch.stack([mod(s_j, b, h, i, j) for s_j, j in zip(s, vis)])
                out[b, h, i] = torch.softmax(s, 0) @ v[b, h // rep, vis].double()
    return out.to(q.dtype)


# ---------------------------------------------------------------- the eager fallback

@pytest.mark.parametrize("kv_heads", [4, 2, 1])
@pytest.mark.parametrize("window", [None, 1, 4, T + 3])
def test_eager_without_a_modification_is_plain_causal_attention(kv_heads, window):
    q, k, v = qkv(kv_heads)
    y = eager_attention(q, k, v, 0.4, window)
    torch.testing.assert_close(y, by_hand(q, k, v, 0.4, window), atol=1e-5, rtol=1e-5)
    sdpa = attend(*(t.transpose(1, 2) for t in (q, k, v)), scale=0.4, window=window, backend="sdpa").transpose(1, 2)
    torch.testing.assert_close(y, sdpa, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("kv_heads", [4, 2])
@pytest.mark.parametrize("window", [None, 3])
def test_eager_runs_score_mod_and_mask_mod_as_written(kv_heads, window):
    """Composition in order: Bias, then Cap, both on top of causality, the window and Documents."""
    q, k, v = qkv(kv_heads)
    chain = ScoreChain([Scores(), Bias(), Cap(), Documents()])
    y = eager_attention(q, k, v, 0.4, window, chain)

    def mod(s, b, h, i, j):
        return 2.0 * torch.tanh((s + bias_by_hand(b, h, i, j)) / 2.0)
    want = by_hand(q, k, v, 0.4, window, mod, keep=lambda b, h, i, j: i // 5 == j // 5)
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)
    # the other order is another function: the test tells them apart
    swapped = eager_attention(q, k, v, 0.4, window, ScoreChain([Scores(), Cap(), Bias(), Documents()]))
    assert not torch.allclose(swapped, y, atol=1e-3)


def test_a_query_that_sees_no_key_gets_zeros():
    q, k, v = qkv()
    y = eager_attention(q, k, v, 0.4, None, ScoreChain([Starved()]))
    assert torch.all(y[:, :, :2] == 0) and torch.isfinite(y).all()
    torch.testing.assert_close(y, by_hand(q, k, v, 0.4, None, keep=lambda b, h, i, j: i >= 2), atol=1e-5, rtol=1e-5)


def test_eager_gradients_are_those_of_the_formula():
    """float64 gradcheck of the fallback with every kind of modification (autograd through plain ops)."""
    q, k, v = (t.requires_grad_() for t in qkv(2, dtype=torch.float64))
    chain = ScoreChain([Bias(), Cap(), Documents()])
    assert torch.autograd.gradcheck(lambda q, k, v: eager_attention(q, k, v, 0.4, 5, chain), (q, k, v))


def test_eager_computes_the_scores_in_fp32_under_bf16_autocast():
    """bf16 q, k, v (what autocast's projections give): scores and softmax in fp32, so the
    result is within bf16 rounding of the fp32 computation on the same values."""
    q, k, v = qkv(2, dtype=torch.bfloat16)
    chain = ScoreChain([Bias(), Cap()])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = eager_attention(q, k, v, 0.4, None, chain)
    want = eager_attention(q.float(), k.float(), v.float(), 0.4, None, chain)
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), want, atol=1e-2, rtol=1e-2)


@pytest.mark.skipif(not HAS_FLEX, reason="FlexAttention needs torch >= 2.5")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("parts", [[Cap()], [Bias(), Cap()], [Documents()], [Bias(), Documents(), Cap()], [Starved()]],
                         ids=["cap", "bias-cap", "documents", "bias-documents-cap", "starved"])
@pytest.mark.parametrize("kv_heads, window", [(4, None), (2, None), (2, 3)])
def test_eager_equals_flexattention(parts, kv_heads, window):
    """The same score_mod / mask_mod code in FlexAttention (its own forward on CPU) and in the fallback."""
    q, k, v = (t.transpose(1, 2) for t in qkv(kv_heads))  # (B, T, H, hd): attend's layout
    chain = ScoreChain([Scores(), *parts])
    with torch.no_grad():
        flex = attend(q, k, v, scale=0.4, window=window, backend="flex", scores=chain)
        eager = attend(q, k, v, scale=0.4, window=window, backend="eager", scores=chain)
    torch.testing.assert_close(eager, flex, atol=1e-5, rtol=1e-5)


def test_plain_scores_keep_the_built_in_kernel_bit_for_bit():
    q, k, v = (t.transpose(1, 2) for t in qkv(2))
    plain = ScoreChain([Scores()])
    assert not plain.modifies and plain.softcap is None
    for window in (None, 5):
        assert torch.equal(attend(q, k, v, scale=0.4, window=window, backend="sdpa", scores=plain),
                           attend(q, k, v, scale=0.4, window=window, backend="sdpa"))
    with pytest.raises(AblateError, match="sdpa takes no score modification"):
        attend(q, k, v, scale=0.4, backend="sdpa", scores=ScoreChain([Cap()]))


# ---------------------------------------------------------------- which kernel runs

@pytest.fixture
def flash(monkeypatch):
    """Pretend flash-attn of a given version is (or is not, None) installed."""
    def install(version):
        monkeypatch.setattr(backends, "_flash_probe", lambda: None if version is None else (object(), version))
    return install


def test_a_modification_goes_where_a_kernel_takes_it(flash):
    cap, bias, capped_docs = ScoreChain([Cap()]), ScoreChain([Bias(), Cap()]), ScoreChain([Cap(), Documents()])
    flash(None)
    assert resolve_backend("auto", "cpu", "fp32", scores=cap) == "eager"  # no CPU FlexAttention backward
    assert resolve_backend("sdpa", "cpu", "fp32", scores=cap) == "eager"  # SDPA takes no score_mod
    assert resolve_backend("sdpa", "cuda", "bf16", scores=cap) == "eager"
    assert resolve_backend("auto", "cuda", "bf16", scores=cap) == ("flex" if HAS_FLEX else "eager")
    flash((2, 6))
    assert resolve_backend("auto", "cuda", "bf16", 64, scores=cap) == "flash"  # a lone soft-cap: native
    assert resolve_backend("auto", "cuda", "bf16", scores=bias) == ("flex" if HAS_FLEX else "eager")
    assert resolve_backend("auto", "cuda", "bf16", scores=capped_docs) == ("flex" if HAS_FLEX else "eager")
    assert resolve_backend("auto", "cuda", "fp32", scores=cap) == ("flex" if HAS_FLEX else "eager")
    assert resolve_backend("auto", "cpu", "bf16", scores=cap) == "eager"
    flash((2, 5))
    assert resolve_backend("auto", "cuda", "bf16", scores=cap) == ("flex" if HAS_FLEX else "eager")
    # scores that are not modified: the choices of before
    flash(None)
    assert resolve_backend("auto", "cpu", "fp32", scores=ScoreChain([Scores()])) == "sdpa"


@pytest.mark.parametrize("version, chain, needle", [
    ((2, 6), [Bias()], "only a lone soft-cap"),
    ((2, 6), [Cap(), Documents()], "only a lone soft-cap"),
    ((2, 6), [Cap(), Cap()], "only a lone soft-cap"),
    ((2, 5), [Cap()], "needs flash-attn >= 2.6, found 2.5"),
])
def test_explicit_flash_that_cannot_run_a_modification_is_one_line(flash, version, chain, needle):
    flash(version)
    with pytest.raises(AblateError, match=needle) as err:
        resolve_backend("flash", "cuda", "bf16", scores=ScoreChain(chain))
    assert "\n" not in str(err.value)


def test_flash_gets_its_native_softcap(monkeypatch):
    """flash-attn's softcap: softcap * tanh(q.k * scale / softcap), the lone Cap score_mod."""
    calls = []

    def flash_attn_func(q, k, v, softmax_scale, causal, window_size, softcap=0.0):
        calls.append({"softcap": softcap, "window_size": window_size})
        keys = None if window_size[0] < 0 else window_size[0] + 1
        q, k, v = (t.float().transpose(1, 2) for t in (q, k, v))
        mod = (lambda s, *_: softcap * torch.tanh(s / softcap)) if softcap else None
        return by_hand(q, k, v, softmax_scale, keys, mod).transpose(1, 2)

    monkeypatch.setattr(backends, "_flash_probe", lambda: (flash_attn_func, (2, 6)))
    q, k, v = (t.transpose(1, 2) for t in qkv(2, dtype=torch.bfloat16))
    y = attend(q, k, v, scale=0.4, window=3, backend="flash", scores=ScoreChain([Scores(), Cap()]))
    assert calls == [{"softcap": 2.0, "window_size": (2, 0)}]
    want = attend(q.float(), k.float(), v.float(), scale=0.4, window=3, backend="eager", scores=ScoreChain([Cap()]))
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)
    attend(q, k, v, scale=0.4, backend="flash", scores=ScoreChain([Scores()]))  # plain: no softcap argument
    assert calls[-1]["softcap"] == 0.0


def plugin_model(arch="gpt", parts=None, **kw):
    """A tiny model built from its arch's parts and `parts` (a plugin's, resolved)."""
    torch.manual_seed(0)
    return build_model(tiny_cfg(arch, **kw), "cpu", parts)


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_the_model_records_the_kernel_that_really_runs(arch):
    """A score_mod cell on CPU runs the eager fallback and says so (attn_backend, attn_kernel);
    the profiler sees no SDPA kernel. A cell whose plugin only touches the head keeps SDPA's."""
    idx = torch.randint(0, 64, (2, 16))
    plain = plugin_model(arch)
    modified = plugin_model(arch, {"scores": Bias})
    head_only = plugin_model(arch, {"head": Halve})
    assert (plain.attn_backend, modified.attn_backend, head_only.attn_backend) == ("sdpa", "eager", "sdpa")
    assert backends.attention_kernel(modified.attn_backend, modified.config, "cpu") == "eager"

    def step(model):
        return lambda: model(idx, idx)[1].backward()
    assert backends.kernels_seen(step(modified)) == set()  # matmuls and a softmax, no SDPA kernel
    assert backends.kernels_seen(step(head_only)) == backends.kernels_seen(step(plain)) != set()


# ---------------------------------------------------------------- head and loss

class Halve(nn.Module):
    def __init__(self, cfg):
        super().__init__()

    def forward(self, logits):
        return logits / 2


class Shift(nn.Module):
    """A learned per-vocab shift of the logits: a head part with a parameter of its own."""

    def __init__(self, cfg):
        super().__init__()
        self.shift = nn.Parameter(torch.linspace(-1, 1, cfg.vocab_size))

    def forward(self, logits):
        return logits + self.shift


class SquaredLogits(nn.Module):
    """A loss term: 1e-2 * mean over counted tokens of ||logits||^2 / V, plus 1e-3 ||h||^2."""

    def __init__(self, cfg):
        super().__init__()
        self.weight = nn.Parameter(torch.tensor(1e-2))

    def forward(self, logits, targets, h, reduction):
        per_token = (self.weight * logits.float().pow(2).mean(-1) + 1e-3 * h.float().pow(2).sum(-1))[targets != -1]
        return per_token.mean() if reduction == "mean" else per_token.sum()


def loss_and_grads(model, idx, targets):
    model.zero_grad(set_to_none=True)
    loss = model(idx, targets)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_head_and_loss_parts_compose_and_chunk_exactly(arch):
    """head: Shift then Halve (in that order); loss: cross-entropy + SquaredLogits. The plain
    path equals the formula written out, and loss_chunk gives the same loss and gradients,
    the parts' own parameters included."""
    parts = {"head": (Shift, Halve), "loss": SquaredLogits}
    plain = plugin_model(arch, parts)
    chunked = build_model(dataclasses.replace(plain.config, loss_chunk=5), "cpu", parts)
    chunked.load_state_dict(plain.state_dict())
    g = torch.Generator().manual_seed(1)
    idx = torch.randint(0, 64, (2, 16), generator=g)
    targets = torch.randint(0, 64, (2, 16), generator=g)
    targets[0, :3] = -1  # ignored tokens count in neither the mean nor the term

    builtin = plugin_model(arch)  # the same weights without the parts: the LM head's logits, the final norm's output
    builtin.load_state_dict(plain.state_dict(), strict=False)
    hidden = {}
    builtin.norm_f.register_forward_hook(lambda module, inputs, out: hidden.update(h=out))
    with torch.no_grad():
        raw = builtin(idx)[0]
    logits, h, counted = (raw + plain.head[1].shift) / 2, hidden["h"], targets != -1
    ce = torch.nn.functional.cross_entropy(logits[counted], targets[counted])
    term = (1e-2 * logits.pow(2).mean(-1) + 1e-3 * h.pow(2).sum(-1))[counted].mean()
    torch.testing.assert_close(plain(idx)[0], logits, atol=1e-6, rtol=1e-6)
    loss_p, grads_p = loss_and_grads(plain, idx, targets)
    torch.testing.assert_close(loss_p, ce + term, atol=1e-6, rtol=1e-6)
    loss_c, grads_c = loss_and_grads(chunked, idx, targets)
    torch.testing.assert_close(loss_c, loss_p, atol=1e-6, rtol=1e-6)
    assert grads_c.keys() == grads_p.keys() and {"head.1.shift", "loss.1.weight"} <= grads_p.keys()
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-6, rtol=1e-5, msg=name)
    with torch.no_grad():  # evaluation: the chunks without gradients
        torch.testing.assert_close(chunked(idx, targets)[1], loss_p, atol=1e-6, rtol=1e-6)


class WholeSequence(Halve):
    per_token = False


def test_loss_chunk_refuses_a_part_that_needs_whole_sequences():
    cfg = tiny_cfg("gpt", loss_chunk=8)
    with pytest.raises(AblateError, match=r"key 'loss_chunk': WholeSequence \(\S+test_scores\.py\) needs whole "
                                          r"sequences \(per_token = False\).*set loss_chunk: null") as err:
        build_model(cfg, "cpu", {"head": WholeSequence})
    assert "\n" not in str(err.value)
    build_model(dataclasses.replace(cfg, loss_chunk=None), "cpu", {"head": WholeSequence})  # without: fine


# ---------------------------------------------------------------- parts_of

def test_a_part_that_returns_none_leaves_the_point_alone():
    cfg = tiny_cfg("gpt")
    parts = parts_of(cfg, {"scores": lambda cfg: None, "qk": lambda cfg: None, "head": (lambda cfg: None, Halve)})
    scores, head = parts["scores"](cfg), parts["head"](cfg)
    assert [type(p) for p in scores] == [Scores] and not scores.modifies
    assert type(parts["qk"](cfg)) is RotaryQK and [type(p).__name__ for p in head] == ["Logits", "Halve"]
    assert parts_of(cfg, {"model": lambda *a: None})["model"](cfg, "sdpa", parts) is None  # build_model: GPT then
    assert type(build_model(cfg, "cpu", {"model": lambda *a: None})).__name__ == "GPT"


def test_a_point_that_takes_one_part_refuses_two():
    with pytest.raises(AblateError, match="2 plugins fill the point 'qk' in this cell, which takes one part"):
        parts_of(tiny_cfg("gpt"), {"qk": (RotaryQK, RotaryQK)})


# ---------------------------------------------------------------- CUDA (scripts/gpu-check.sh runs these)

@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and HAS_FLEX), reason="needs a CUDA device and FlexAttention")
@pytest.mark.parametrize("parts", [[Cap()], [Bias(), Cap()], [Bias(), Documents(), Cap()]],
                         ids=["cap", "bias-cap", "bias-documents-cap"])
@pytest.mark.parametrize("kv_heads, window", [(4, None), (2, 3)])
def test_flexattention_on_cuda_runs_the_modification_with_gradients(parts, kv_heads, window):
    """FlexAttention's compiled CUDA kernel (what auto picks there) against the eager fallback:
    outputs and the gradients of q, k and v, fp32."""
    chain = ScoreChain([Scores(), *parts]).cuda()

    def run(backend):
        q, k, v = (t.transpose(1, 2).cuda().requires_grad_() for t in qkv(kv_heads))
        y = attend(q, k, v, scale=0.4, window=window, backend=backend, scores=chain)
        (y * torch.linspace(-1, 1, y.numel(), device="cuda").view_as(y)).sum().backward()
        return y.detach(), q.grad, k.grad, v.grad
    for got, want in zip(run("flex"), run("eager")):
        torch.testing.assert_close(got, want, atol=2e-3, rtol=2e-3)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and (backends.flash_attn_version() or (0,)) >= (2, 6)),
                    reason="needs CUDA and flash-attn >= 2.6 (softcap)")
def test_flash_attn_softcap_equals_the_score_mod_on_cuda():
    chain = ScoreChain([Scores(), Cap()])
    q, k, v = (t.transpose(1, 2).cuda() for t in qkv(2, dtype=torch.bfloat16))
    y = attend(q, k, v, scale=0.4, window=5, backend="flash", scores=chain)
    want = attend(q.float(), k.float(), v.float(), scale=0.4, window=5, backend="eager", scores=chain)
    torch.testing.assert_close(y.float(), want, atol=2e-2, rtol=2e-2)
