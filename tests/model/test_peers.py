"""Peer equivalence: our GPT against transformers' Mistral, our nGPT against an independent
re-implementation of NVIDIA's reference (ngpt_reference.py). Same weights, CPU, fp32: logits,
loss and every gradient; for nGPT also a few AdamW steps with the post-step normalization.

The invariant tests check the model against our reading of the spec; these check it against
code we did not write, so a misreading (a window off by one, a RoPE pairing, SwiGLU's halves,
GQA's head order, nGPT's residual gradient) fails here."""
import dataclasses

import pytest
import torch

from model_helpers import single_thread  # noqa: F401  (autouse fixture)
from model_helpers import opts_id, perturb, tiny_model

pytest.importorskip("transformers", reason="transformers is in the test extra: pip install -e '.[test]'")

from mistral_peer import as_mistral, mistral_grads  # noqa: E402
from ngpt_reference import load  # noqa: E402

# 4 layers so that 1 and 2 attention groups both share; T = 16, so window 5 bites.
PEER_CASES = [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1},
    {"tie_embeddings": True},
    {"window": 5},
    {"window": 1},
    {"share_attn": 1},
    {"share_attn": 2},
    {"n_kv_head": 2, "tie_embeddings": True, "share_attn": 2, "window": 5},
]
IDS = [opts_id(o) for o in PEER_CASES]


def batch(cfg, B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randint(0, cfg.vocab_size, (B, cfg.context), generator=g) for _ in range(2))


def model_for(arch, opts, seed=0):
    cfg, model = tiny_model(arch, seed=seed, n_layer=4, **opts)
    return cfg, perturb(model, seed=seed + 1)  # random norms and scale vectors too, not the symmetric init


def assert_grads_equal(ours: dict, theirs: dict, rel=1e-5):
    """Every gradient, elementwise within `rel` of that tensor's largest entry (fp32 roundoff in
    sums of many terms; 1e-7 absolute for gradients that are exactly 0 in one model, e.g. W_q
    and W_k with window 1, where every query sees only itself)."""
    assert ours.keys() == theirs.keys()
    for name, g in ours.items():
        ref = theirs[name].reshape(g.shape)
        torch.testing.assert_close(g, ref, atol=rel * ref.abs().max().item() + 1e-7, rtol=0,
                                   msg=lambda m: f"{name}: {m}")


# ---------------------------------------------------------------- GPT vs transformers' Mistral

@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
@pytest.mark.parametrize("opts", PEER_CASES, ids=IDS)
def test_gpt_equals_mistral(opts, attn_implementation):
    cfg, model = model_for("gpt", opts)
    peer = as_mistral(model, attn_implementation)
    idx, targets = batch(cfg)
    logits, loss = model(idx, targets)
    # shift_labels: our targets are already the next tokens; Mistral would shift `labels` itself
    out = peer(input_ids=idx, labels=targets, shift_labels=targets)
    torch.testing.assert_close(logits, out.logits, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(loss, out.loss, atol=1e-6, rtol=1e-6)
    loss.backward()
    out.loss.backward()
    assert_grads_equal({n: p.grad for n, p in model.named_parameters()}, mistral_grads(model, peer))


@pytest.mark.parametrize("attn_implementation", ["eager", "sdpa"])
def test_mistral_really_applies_the_window(attn_implementation):
    """Without this, a peer that ignored sliding_window would agree with a model that ignores it too."""
    cfg, model = model_for("gpt", {"window": 5})
    full = as_mistral(model, attn_implementation, cfg=dataclasses.replace(cfg, window=None))
    idx, _ = batch(cfg)
    with torch.no_grad():
        windowed, causal = as_mistral(model, attn_implementation)(input_ids=idx).logits, full(input_ids=idx).logits
    torch.testing.assert_close(windowed[:, :5], causal[:, :5])  # the first W positions see everything anyway
    assert (windowed[:, 5:] - causal[:, 5:]).abs().amax() > 1e-3


# ---------------------------------------------------------------- nGPT vs NVIDIA's reference

@pytest.mark.parametrize("opts", PEER_CASES, ids=IDS)
def test_ngpt_equals_the_reference(opts):
    cfg, model = model_for("ngpt", opts)
    ref, leaves = load(model)
    idx, targets = batch(cfg)
    logits, loss = model(idx, targets)
    ref_logits, ref_loss = ref(idx, targets)
    torch.testing.assert_close(logits, ref_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(loss, ref_loss, atol=1e-6, rtol=1e-6)
    loss.backward()
    ref_loss.backward()
    assert_grads_equal({n: p.grad for n, p in model.named_parameters()}, {n: t.grad for n, t in leaves.items()})


@pytest.mark.parametrize("opts", [{}, {"n_kv_head": 2, "tie_embeddings": True, "share_attn": 2, "window": 5}],
                         ids=["base", "all"])
def test_ngpt_trains_like_the_reference(opts):
    """AdamW steps with normalization after each: the weights stay equal. A gradient difference
    Adam would amplify (nGPT's residual: wte's radial component) shows up here at once."""
    cfg, model = model_for("ngpt", opts)
    model.double()
    ref, leaves = load(model)
    ref.normalize_matrices()
    hyper = dict(lr=1e-2, betas=(0.9, 0.95), eps=1e-8)
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), **hyper)
    ref_opt = torch.optim.AdamW(ref.parameters(), weight_decay=0.0, **hyper)
    model.normalize_()
    for step in range(4):
        idx, targets = batch(cfg, seed=step)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad(set_to_none=True)
            m(idx, targets)[1].backward()
            o.step()
        model.normalize_()
        ref.normalize_matrices()
        for name, p in model.named_parameters():
            torch.testing.assert_close(p, leaves[name].reshape(p.shape), atol=1e-10, rtol=1e-10,
                                       msg=lambda m: f"step {step}: {name}: {m}")
