"""The speedups change no number: ops.py's hand-written backwards against autograd on the plain
formulas, and the whole fast model against the plain one (plain_model.py) on the same
parameters, both archs, every ablation, sdpa (and flex forward), fp32 and CPU bf16 autocast."""
import dataclasses

import pytest
import torch

import plain_model
from ablate.model import backends
from ablate.model.ops import apply_rope, rope_cos_sin, unit
from model_helpers import single_thread  # noqa: F401  (autouse fixture)
from model_helpers import cases, clone, perturb, tiny_model

# ---------------------------------------------------------------- the ops alone


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
def test_unit_and_rope_equal_the_plain_formulas(dtype, tol):
    """Values and gradients, on a non-contiguous view (the model ropes a slice of the q|k|v
    output) with a random upstream gradient."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(3, 10, 7, 8, generator=g)
    cos, sin = rope_cos_sin(10, 8)
    for fast, plain in ((unit, plain_model.unit),
                        (lambda x: apply_rope(x, cos, sin), lambda x: plain_model.apply_rope(x, cos, sin))):
        outs, grads = [], []
        for fn in (fast, plain):
            x = base.clone().to(dtype).requires_grad_()
            y = fn(x[:, :, 1:6])  # heads 1..5 of 7: strided
            y.backward(torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(dtype))
            outs.append(y)
            grads.append(x.grad)
        assert outs[0].dtype == outs[1].dtype == dtype
        torch.testing.assert_close(outs[0], outs[1], atol=tol, rtol=tol)
        torch.testing.assert_close(grads[0], grads[1], atol=tol, rtol=tol)


def test_hand_written_backwards_pass_gradcheck():
    x = torch.randn(2, 5, 3, 6, dtype=torch.float64, requires_grad=True)
    cos, sin = rope_cos_sin(5, 6, dtype=torch.float64)
    assert torch.autograd.gradcheck(unit, (x,))
    assert torch.autograd.gradcheck(lambda t: apply_rope(t, cos, sin), (x,))


def test_unit_of_a_zero_vector_is_zero_with_a_finite_gradient():
    x = torch.zeros(2, 4, requires_grad=True)
    y = unit(x)
    y.sum().backward()
    assert torch.equal(y, torch.zeros(2, 4)) and torch.isfinite(x.grad).all()


# ---------------------------------------------------------------- the whole model

ABLATIONS = [
    {},
    {"n_kv_head": 2},
    {"n_kv_head": 1},
    {"tie_embeddings": True},
    {"share_attn": 1},
    {"n_layer": 4, "share_attn": 2},
    {"window": 5},
    {"n_layer": 4, "n_kv_head": 2, "tie_embeddings": True, "share_attn": 2, "window": 5},
]


def loss_and_grads(model, idx, targets, bf16: bool):
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        logits, loss = model(idx, targets)
    loss.backward()
    return logits.float(), loss, {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch, opts", cases(ABLATIONS))
def test_fast_model_equals_the_plain_formulas(arch, opts, dtype):
    cfg, model = tiny_model(arch, **opts)
    perturb(model)
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, cfg.vocab_size, (4, cfg.context), generator=g) for _ in range(2))
    if dtype == "fp32":  # roundoff of another order of operations
        logits, loss, grads = loss_and_grads(model, idx, targets, bf16=False)
        with plain_model.plain():
            plain_logits, plain_loss, plain_grads = loss_and_grads(model, idx, targets, bf16=False)
        torch.testing.assert_close(loss, plain_loss, atol=1e-5, rtol=0)
        torch.testing.assert_close(logits, plain_logits, atol=2e-5 * plain_logits.abs().max().item(), rtol=0)
        for name, grad in grads.items():
            ref = plain_grads[name]
            torch.testing.assert_close(grad, ref, atol=2e-5 * ref.abs().max().item() + 1e-7, rtol=0,
                                       msg=lambda m: f"{name}: {m}")
        return
    # bf16: every matmul rounds its output to 8 bits, and folding a scale into a weight moves
    # that rounding, so fast and plain differ by bf16 noise. "Unchanged" means the fast model is
    # as close to the exact (fp32) answer as the plain one is: within 4x the plain model's own
    # bf16 error, tensor by tensor (measured: up to 2.2x; a wrong formula is off by O(1)).
    _, loss, grads = loss_and_grads(model, idx, targets, bf16=True)
    with plain_model.plain():
        _, plain_loss, plain_grads = loss_and_grads(model, idx, targets, bf16=True)
        _, exact_loss, exact_grads = loss_and_grads(model, idx, targets, bf16=False)

    def err(a, b):
        return (a.float() - b).abs().max().item()

    assert err(loss, exact_loss) <= 4 * err(plain_loss, exact_loss) + 1e-4
    for name, grad in grads.items():
        noise = err(plain_grads[name], exact_grads[name])
        assert err(grad, exact_grads[name]) <= 4 * noise + 1e-7, (name, err(grad, exact_grads[name]), noise)


@pytest.mark.skipif(not backends.has_flex(), reason="FlexAttention needs torch >= 2.5")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("arch, opts", cases([{}, {"n_kv_head": 2, "window": 5, "tie_embeddings": True}]))
def test_fast_model_equals_the_plain_formulas_with_flex_forward(arch, opts):
    """FlexAttention has no CPU backward: forward only."""
    cfg, model = tiny_model(arch, **opts)
    model = clone(perturb(model), dataclasses.replace(cfg, attn_backend="flex"))
    assert model.attn_backend == "flex"
    idx, targets = (torch.randint(0, cfg.vocab_size, (4, cfg.context), generator=torch.Generator().manual_seed(0))
                    for _ in range(2))
    with torch.no_grad():
        logits, loss = model(idx, targets)
        with plain_model.plain():
            plain_logits, plain_loss = model(idx, targets)
    torch.testing.assert_close(logits, plain_logits, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(loss, plain_loss, atol=1e-6, rtol=1e-6)
