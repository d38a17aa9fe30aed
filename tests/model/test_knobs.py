"""The memory knobs (act_ckpt, loss_chunk) change memory and speed, never the math: equal loss and
gradients to the plain path for both archs, every ablation and every backend that trains here,
and a lower tracked peak where the saving must be large."""
import contextlib
import dataclasses

import pytest
import torch

from ablate.model import backends
from ablate.train.memtrack import StepTracker
from model_helpers import MIX, V, cases, clone, perturb, tiny_cfg, tiny_model

KNOBS = {"chunked": {"loss_chunk": 24}, "blocks": {"act_ckpt": "blocks"}, "selective": {"act_ckpt": "selective"},
         "both": {"act_ckpt": "blocks", "loss_chunk": 7}}


def loss_and_grads(model, idx, targets, dtype="fp32"):
    model.zero_grad(set_to_none=True)
    ctx = torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()
    with ctx:
        _, loss = model(idx, targets)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


def batch(cfg, seed=0):
    g = torch.Generator().manual_seed(seed)
    idx, targets = (torch.randint(0, V, (3, cfg.context), generator=g) for _ in range(2))
    targets[0, :5] = -1  # ignored positions count as in F.cross_entropy
    return idx, targets


def rel_err(a, b, floor=0.0):
    """max |a - b| relative to max |b|, or to `floor` when b is smaller (a gradient that is only
    rounding noise, e.g. W_q's when a window of 1 makes attention ignore q)."""
    return ((a - b).abs().max() / b.abs().max().clamp_min(max(floor, 1e-30))).item()


def scale(grads):
    return max(g.abs().max().item() for g in grads.values())


@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_knobs_give_the_plain_loss_and_gradients(arch, opts, knob):
    cfg, model = tiny_model(arch, **opts)
    perturb(model)
    knobbed = clone(model, dataclasses.replace(cfg, **KNOBS[knob]))
    idx, targets = batch(cfg)
    loss, grads = loss_and_grads(model, idx, targets)
    loss_k, grads_k = loss_and_grads(knobbed, idx, targets)
    assert torch.allclose(loss_k, loss, rtol=1e-6, atol=0), (loss_k, loss)
    assert grads_k.keys() == grads.keys()
    for name in grads:  # fp32: summation order only (the chunks add the head's gradient piece by piece)
        assert rel_err(grads_k[name], grads[name], 1e-2 * scale(grads)) < 1e-5, name


SHARED = {"n_layer": 4, "share_attn": 2, "n_kv_head": 2}


@pytest.mark.parametrize("knob, opts", [(k, {"n_kv_head": 2, "tie_embeddings": True, "window": 5}) for k in KNOBS]
                         + [(k, SHARED) for k in ("blocks", "selective")],
                         ids=[*KNOBS, "blocks-share2", "selective-share2"])
@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_knobs_under_bf16_autocast_stay_within_bf16_error(arch, knob, opts):
    """bf16: the knob's difference from the plain bf16 path is no larger than the plain bf16
    path's own error against fp32 (the chunked head rounds its weight gradient per chunk). With
    shared attention weights, autocast casts a shared weight once per forward and reuses the
    cast (its weight cache), which a selective recompute must not trip over."""
    cfg, model = tiny_model(arch, **opts)
    perturb(model)
    knobbed = clone(model, dataclasses.replace(cfg, **KNOBS[knob]))
    idx, targets = batch(cfg)
    loss32, grads32 = loss_and_grads(model, idx, targets)
    loss16, grads16 = loss_and_grads(model, idx, targets, "bf16")
    loss_k, grads_k = loss_and_grads(knobbed, idx, targets, "bf16")
    assert abs(loss_k - loss16) <= max(abs(loss16 - loss32), 1e-6)
    floor = 1e-2 * scale(grads32)
    for name in grads16:
        bf16_error = rel_err(grads16[name], grads32[name], floor)
        assert rel_err(grads_k[name], grads16[name], floor) <= max(2 * bf16_error, 1e-6), name


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_chunked_loss_without_gradients_equals_plain_on_every_cpu_backend(arch):
    """Evaluation (no_grad) takes the chunked path too; flex runs forward-only on CPU."""
    for backend in ["sdpa"] + (["flex"] if backends.has_flex() else []):
        cfg, model = tiny_model(arch, attn_backend=backend, window=5)
        perturb(model)
        chunked = clone(model, dataclasses.replace(cfg, loss_chunk=10))
        idx, targets = batch(cfg)
        with torch.no_grad():
            logits, loss = model(idx, targets)
            none, loss_c = chunked(idx, targets)
            assert chunked(idx)[0].shape == logits.shape  # without targets: logits, as before
        assert none is None and logits is not None  # the chunked path never builds (B, T, V) logits
        assert torch.allclose(loss_c, loss, rtol=1e-6, atol=0), (backend, loss_c, loss)


def tracked_peak(cfg, seed=0):
    torch.manual_seed(seed)
    from ablate.model import build_model

    model = build_model(cfg, "cpu")
    g = torch.Generator().manual_seed(seed)
    idx, targets = (torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.context), generator=g) for _ in range(2))
    with StepTracker(model) as tracker:
        model(idx, targets)[1].backward()
    return tracker.peak()["total"]


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_chunked_loss_cuts_the_tracked_peak_with_a_gpt2_vocabulary(arch):
    """V = 50304, 512 tokens: the fp32 logits and their gradient dominate the plain step."""
    cfg = tiny_cfg(arch, n_layer=1, n_head=2, n_embd=32, context=128, batch_size=4, vocab_size=50304)
    plain, chunked = tracked_peak(cfg), tracked_peak(dataclasses.replace(cfg, loss_chunk=128))
    assert chunked < 0.4 * plain, (chunked, plain)  # measured: 0.25x


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_activation_checkpointing_cuts_the_tracked_peak(arch):
    """Activations dominate (4 layers, 2,048 tokens, small vocabulary): recomputing blocks keeps
    only their inputs; selective keeps the matmul outputs, so it saves less."""
    cfg = tiny_cfg(arch, n_layer=4, n_head=2, n_embd=64, context=256, batch_size=8)
    plain = tracked_peak(cfg)
    blocks = tracked_peak(dataclasses.replace(cfg, act_ckpt="blocks"))
    selective = tracked_peak(dataclasses.replace(cfg, act_ckpt="selective"))
    assert blocks < 0.5 * plain, (blocks, plain)  # measured: 0.35x GPT, 0.31x nGPT
    assert blocks < selective < 0.85 * plain, (selective, plain)  # measured: 0.72x GPT, 0.56x nGPT


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")
@pytest.mark.parametrize("knob", list(KNOBS))
@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_knobs_give_the_plain_gradients_on_every_cuda_backend(arch, knob):
    from ablate.model import build_model

    names = ["sdpa"] + (["flex"] if backends.has_flex() else []) + (["flash"] if backends.flash_attn_version() else [])
    for backend in names:
        cfg, model = tiny_model(arch, attn_backend=backend, dtype="bf16", window=5, n_kv_head=2)
        perturb(model)
        plain = build_model(cfg, "cuda").cuda()
        plain.load_state_dict(model.state_dict())
        knobbed = build_model(dataclasses.replace(cfg, **KNOBS[knob]), "cuda").cuda()
        knobbed.load_state_dict(model.state_dict())
        idx, targets = (t.cuda() for t in batch(cfg))

        def run(m):
            m.zero_grad(set_to_none=True)
            with torch.autocast("cuda", dtype=torch.bfloat16):
                loss = m(idx, targets)[1]
            loss.backward()
            return loss.detach(), {n: p.grad.float() for n, p in m.named_parameters()}
        loss, grads = run(plain)
        loss_k, grads_k = run(knobbed)
        assert torch.allclose(loss_k, loss, rtol=1e-3), (backend, loss_k, loss)
        for name in grads:
            assert rel_err(grads_k[name], grads[name], 1e-2 * scale(grads)) < 3e-2, (backend, name)
