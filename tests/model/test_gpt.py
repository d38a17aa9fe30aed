"""Whole-model invariants of MODEL_SPEC section 6 for both archs and a mix of ablations."""
import dataclasses
import math

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.model import backends, build_model
from ablate.model import gpt as gpt_module
from ablate.model.gpt import store_block_matrices
from ablate.model.points import Scale
from ablate.core.config import RunConfig, resolve
from ablate.core.estimate import param_counts
from model_helpers import single_thread  # noqa: F401  (autouse fixture)
from model_helpers import ALL, ARCHS, MIX, V, cases, clone, perturb, reference_forward, tiny_cfg, tiny_model

# Every matrix and the axis of n_embd in it, by parameter name (independent of the model's own list).
ROW_MATRICES = ("wte.weight", "lm_head.weight", "c_q.weight", "c_k.weight", "c_v.weight", "c_fc.weight")


def sphere_axes(model):
    for name, p in model.named_parameters():
        if name.endswith("c_proj.weight"):
            yield name, p, 0
        elif name.endswith(ROW_MATRICES):
            yield name, p, 1


def batch(cfg, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, cfg.vocab_size, (B, cfg.context), generator=g), \
        torch.randint(0, cfg.vocab_size, (B, cfg.context), generator=g)


# ---------------------------------------------------------------- the spec's forward and init

@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_forward_is_the_spec_formula(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    model = perturb(model.double())
    idx, _ = batch(cfg, B=2)
    torch.testing.assert_close(model(idx)[0], reference_forward(model, idx), atol=1e-6, rtol=1e-6)


def test_gpt_init_is_normal_002_with_scaled_output_projections():
    cfg, model = tiny_model("gpt", n_layer=3, n_embd=64, vocab_size=512)
    for name, p in model.named_parameters():
        if p.dim() < 2:
            assert torch.equal(p, torch.ones_like(p)), name  # RMSNorm weights
            continue
        std = 0.02 / math.sqrt(2 * 3) if name.endswith("c_proj.weight") else 0.02
        assert abs(p.std().item() / std - 1) < 0.05 and abs(p.mean().item()) < 0.1 * std, name


# ---------------------------------------------------------------- 1. normalization

@pytest.mark.parametrize("arch, opts", cases(ALL))
def test_normalize_gives_unit_norms_and_is_idempotent(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    axes = list(sphere_axes(model))
    matrices = {id(p) for name, p in model.named_parameters() if p.dim() >= 2 and not name.endswith(".param")}
    assert {id(p) for _, p, _ in axes} == matrices  # the name list covers every matrix
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0).add_(0.1)  # off the sphere, scale vectors included
    before = {name: p.clone() for name, p in model.named_parameters()}
    model.normalize_()
    if arch == "gpt":  # a no-op
        assert all(torch.equal(p, before[name]) for name, p in model.named_parameters())
        return
    for name, p, axis in axes:
        torch.testing.assert_close(p.norm(dim=axis), torch.ones(p.shape[1 - axis]), atol=1e-5, rtol=0, msg=name)
    for name, p in model.named_parameters():
        if name.endswith(".param"):  # scale vectors are never normalized
            assert torch.equal(p, before[name]), name
    once = {name: p.clone() for name, p in model.named_parameters()}
    model.normalize_()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, once[name], atol=1e-6, rtol=0, msg=name)


@pytest.mark.parametrize("opts", [{}, {"tie_embeddings": True, "share_attn": 1}, {"n_layer": 4, "share_attn": 2}])
def test_normalize_touches_each_tensor_once(monkeypatch, opts):
    cfg, model = tiny_model("ngpt", **opts)
    seen = []
    real = gpt_module.F.normalize
    monkeypatch.setattr(gpt_module.F, "normalize", lambda x, **kw: seen.append(id(x)) or real(x, **kw))
    model.normalize_()
    assert sorted(seen) == sorted({id(p) for _, p, _ in sphere_axes(model)})
    assert len(seen) == (2 - cfg.tie_embeddings) + 4 * cfg.attn_groups + 2 * cfg.n_layer


@pytest.mark.parametrize("opts", [{}, {"n_kv_head": 2, "tie_embeddings": True, "share_attn": 1}])
def test_normalize_bf16_block_matrices(opts):
    cfg, model = tiny_model("ngpt", **opts)
    store_block_matrices(model, torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    model.normalize_()
    for name, p, axis in sphere_axes(model):
        assert p.dtype == (torch.bfloat16 if name.startswith("blocks.") else torch.float32), name
        torch.testing.assert_close(p.float().norm(dim=axis), torch.ones(p.shape[1 - axis]), atol=3e-3, rtol=0)
    once = {name: p.clone() for name, p in model.named_parameters()}
    model.normalize_()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.float(), once[name].float(), atol=4e-3, rtol=0, msg=name)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n.endswith(".param"))


# ---------------------------------------------------------------- 2. nGPT block outputs and scales

@pytest.mark.parametrize("opts", MIX, ids=[str(i) for i in range(len(MIX))])
@pytest.mark.parametrize("weights", ["init", "random"])
def test_ngpt_hidden_states_have_unit_norm(opts, weights):
    cfg, model = tiny_model("ngpt", **opts)
    if weights == "random":
        perturb(model)
    outputs = []
    model.wte.register_forward_hook(lambda m, i, o: outputs.append(o))
    for block in model.blocks:
        block.register_forward_hook(lambda m, i, o: outputs.append(o))
    model(batch(cfg)[0])
    assert len(outputs) == cfg.n_layer + 1
    for h in outputs:
        torch.testing.assert_close(h.norm(dim=-1), torch.ones(h.shape[:2]), atol=1e-5, rtol=0)


def test_ngpt_scales_at_init_equal_their_inits():
    cfg, model = tiny_model("ngpt", n_layer=3)
    d, base = cfg.n_embd, cfg.n_embd ** -0.5
    expected = [(model.s_z, (V,), 1.0, base)]
    for b in model.blocks:
        expected += [(b.res_A.alpha, (d,), 0.05, base), (b.res_M.alpha, (d,), 0.05, base),
                     (b.qk.s_qk, (cfg.n_head, cfg.head_dim), 1.0, base), (b.mlp.s_uv, (8 * d,), 1.0, 1.0)]
    assert {id(s) for s, *_ in expected} == {id(m) for m in model.modules() if isinstance(m, Scale)}
    for scale, shape, init, stored in expected:
        assert scale.param.shape == shape and scale.param.dtype == torch.float32
        torch.testing.assert_close(scale.param, torch.full(shape, stored))  # stored as scale * ones
        torch.testing.assert_close(scale(), torch.full(shape, init))  # used as param * init / scale


# ---------------------------------------------------------------- 3. loss at init

@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_loss_at_init_is_about_ln_vocab(arch, opts):
    cfg, model = tiny_model(arch, vocab_size=128, **opts)
    idx, targets = batch(cfg, B=8)
    logits, loss = model(idx, targets)
    assert logits.shape == (8, cfg.context, 128) and loss.dtype == torch.float32
    assert abs(loss.item() - math.log(128)) < 0.1
    assert model(idx)[1] is None


# ---------------------------------------------------------------- 4. parameter counts

@pytest.mark.parametrize("arch, opts", cases(ALL))
def test_param_counts_equal_the_formula(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    counts = model.param_counts()
    assert counts == param_counts(cfg)
    assert counts["total"] == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch, total", [("gpt", 505_725_952), ("ngpt", 505_996_416)])
def test_param_counts_check_values_of_the_spec(arch, total):
    cfg = resolve(RunConfig(arch=arch, n_layer=24, n_head=16, n_embd=1024, vocab_size=50304))
    with torch.device("meta"):  # 0.5B parameters, no memory
        model = gpt_module.GPT(cfg)
    assert model.param_counts()["total"] == sum(p.numel() for p in model.parameters()) == total


# ---------------------------------------------------------------- 5. tying and sharing

@pytest.mark.parametrize("arch, opts", cases(ALL))
def test_tied_and_shared_tensors_are_the_same_objects(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    assert (model.lm_head.weight is model.wte.weight) == cfg.tie_embeddings
    per_group = cfg.n_layer // cfg.attn_groups
    for a, block_a in enumerate(model.blocks):
        for b, block_b in enumerate(model.blocks):
            same_group = a // per_group == b // per_group
            for name in ("c_q", "c_k", "c_v", "c_proj"):
                assert (getattr(block_a.attn, name).weight is getattr(block_b.attn, name).weight) == same_group
            if a != b:  # everything else stays per layer
                assert block_a.mlp.c_fc.weight is not block_b.mlp.c_fc.weight
                per_layer = ("res_A", "res_M", "qk") if arch == "ngpt" else ("norm_A", "norm_M")
                for name in per_layer:
                    assert next(getattr(block_a, name).parameters()) is not next(getattr(block_b, name).parameters())


@pytest.mark.parametrize("arch, opts", cases([
    {"share_attn": 1}, {"share_attn": 2}, {"tie_embeddings": True},
    {"share_attn": 2, "tie_embeddings": True, "n_kv_head": 2, "window": 3},
]))
def test_shared_gradient_is_the_sum_over_an_unshared_clone(arch, opts):
    cfg, model = tiny_model(arch, n_layer=4, **opts)
    perturb(model)
    free = clone(model, dataclasses.replace(cfg, share_attn=cfg.n_layer, tie_embeddings=False))
    assert free.param_counts()["total"] > model.param_counts()["total"]
    idx, targets = batch(cfg)
    logits, loss = model(idx, targets)
    logits_free, loss_free = free(idx, targets)
    torch.testing.assert_close(logits, logits_free)
    loss.backward()
    loss_free.backward()
    per_group = cfg.n_layer // cfg.attn_groups
    for group in range(cfg.attn_groups):
        layers = range(group * per_group, (group + 1) * per_group)
        for name in ("c_q", "c_k", "c_v", "c_proj"):
            shared = getattr(model.blocks[layers[0]].attn, name).weight.grad
            summed = sum(getattr(free.blocks[layer].attn, name).weight.grad for layer in layers)
            torch.testing.assert_close(shared, summed, atol=1e-6, rtol=1e-5)
    if cfg.tie_embeddings:
        torch.testing.assert_close(model.wte.weight.grad, free.wte.weight.grad + free.lm_head.weight.grad,
                                   atol=1e-6, rtol=1e-5)
    for name, p in model.named_parameters():  # per-layer tensors get the clone's gradient
        if ".attn." not in name and not name.startswith(("wte", "lm_head")):
            torch.testing.assert_close(p.grad, dict(free.named_parameters())[name].grad, atol=1e-6, rtol=1e-5)


# ---------------------------------------------------------------- 6. GQA in the whole model

@pytest.mark.parametrize("arch, opts", cases([{"n_kv_head": 2}, {"n_kv_head": 1, "window": 3, "share_attn": 1}]))
def test_gqa_model_equals_mha_model_with_repeated_kv_weights(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    perturb(model)
    mha = build_model(dataclasses.replace(cfg, n_kv_head=cfg.n_head), device_type="cpu")
    state = model.state_dict()
    rep = cfg.n_head // cfg.kv_heads
    for key, w in state.items():
        if key.endswith(("c_k.weight", "c_v.weight")):  # (H_kv hd, d) -> (H hd, d), head blocks repeated
            state[key] = w.view(cfg.kv_heads, cfg.head_dim, -1).repeat_interleave(rep, dim=0).reshape(-1, cfg.n_embd)
    mha.load_state_dict(state)
    idx, _ = batch(cfg)
    torch.testing.assert_close(model(idx)[0], mha(idx)[0], atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- 8. windows, causality, receptive field

@pytest.mark.parametrize("arch", ARCHS)
def test_window_covering_the_context_equals_full_causal(arch):
    cfg, model = tiny_model(arch, n_kv_head=2)
    perturb(model)
    idx, _ = batch(cfg)
    full = model(idx)[0]
    for w in (cfg.context, cfg.context + 3):
        windowed = clone(model, dataclasses.replace(cfg, window=w))
        torch.testing.assert_close(windowed(idx)[0], full, atol=1e-6, rtol=1e-6)
    narrow = clone(model, dataclasses.replace(cfg, window=cfg.context - 1))
    assert not torch.allclose(narrow(idx)[0][:, -1], full[:, -1], atol=1e-4)  # the window does bite


@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_causality(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    model = perturb(model.double())
    idx, _ = batch(cfg, B=2)
    logits = model(idx)[0]
    for p in (1, 7, cfg.context - 1):
        changed = idx.clone()
        changed[:, p:] = (changed[:, p:] + 1 + torch.randint(0, V - 1, changed[:, p:].shape)) % V
        new = model(changed)[0]
        torch.testing.assert_close(new[:, :p], logits[:, :p], atol=1e-12, rtol=0)
        assert (new[:, p] - logits[:, p]).abs().max() > 1e-6


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("n_layer, window, opts", [
    (1, 2, {}), (2, 2, {}), (2, 3, {"n_kv_head": 2}), (3, 2, {"share_attn": 1}), (2, 4, {"tie_embeddings": True}),
])
def test_receptive_field_is_exactly_layers_times_window_minus_one(arch, n_layer, window, opts):
    reach = n_layer * (window - 1)
    T = reach + 5
    cfg, model = tiny_model(arch, n_layer=n_layer, window=window, context=T, **opts)
    model = perturb(model.double())
    idx, _ = batch(cfg, B=2)
    t = T - 1
    first = t - reach  # the earliest token logits at t may depend on
    base = model(idx)[0][:, t]
    before = idx.clone()
    before[:, :first] = (before[:, :first] + 1) % V
    torch.testing.assert_close(model(before)[0][:, t], base, atol=1e-12, rtol=0)
    at = idx.clone()
    at[:, first] = (at[:, first] + 1) % V
    assert (model(at)[0][:, t] - base).abs().max() > 1e-8


# ---------------------------------------------------------------- 10. backends in the whole model

@pytest.mark.skipif(not backends.has_flex(), reason="FlexAttention needs torch >= 2.5")
@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
@pytest.mark.parametrize("arch, opts", cases([{}, {"n_kv_head": 2}, {"window": 3}, {"n_kv_head": 1, "window": 5, "share_attn": 1}]))
def test_flex_model_agrees_with_sdpa(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    perturb(model)
    flex = clone(model, dataclasses.replace(cfg, attn_backend="flex"))
    assert (model.attn_backend, flex.attn_backend) == ("sdpa", "flex")
    idx, _ = batch(cfg)
    with torch.no_grad():
        torch.testing.assert_close(flex(idx)[0], model(idx)[0], atol=1e-5, rtol=1e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not (torch.cuda.is_available() and backends.flash_attn_version()),
                    reason="flash-attn needs CUDA and the flash_attn package (not importable here)")
@pytest.mark.parametrize("arch, opts", cases([{}, {"n_kv_head": 2, "window": 3}]))
def test_flash_model_agrees_with_sdpa(arch, opts):
    cfg, model = tiny_model(arch, dtype="bf16", **opts)
    flash = clone(model, dataclasses.replace(cfg, attn_backend="flash", device="cuda")).cuda()
    model = model.cuda()
    idx = batch(cfg)[0].cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        torch.testing.assert_close(flash(idx)[0].float(), model(idx)[0].float(), atol=5e-2, rtol=5e-2)


# ---------------------------------------------------------------- numerics and building

@pytest.mark.parametrize("arch, opts", cases([{}, {"n_kv_head": 2, "window": 3, "tie_embeddings": True}]))
def test_cpu_bf16_autocast_runs_and_matches_fp32(arch, opts):
    cfg, model = tiny_model(arch, dtype="bf16", **opts)
    idx, targets = batch(cfg)
    _, loss32 = model(idx, targets)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, loss = model(idx, targets)
    assert loss.dtype == torch.float32 and torch.isfinite(logits.float()).all()
    assert abs(loss.item() - loss32.item()) < 0.05
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


def test_build_model_reports_backend_and_refuses_what_cannot_run():
    cfg = tiny_cfg("ngpt")
    model = build_model(cfg, device_type="cpu")
    assert isinstance(model, gpt_module.GPT) and model.attn_backend == "sdpa"
    assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in model.parameters())
    for bad, needle in [(dict(param_dtype="bf16", dtype="bf16"), "CUDA"), (dict(attn_backend="flash"), "flash"),
                        (dict(vocab_size=None), "vocab_size"), (dict(n_kv_head=-1), "n_kv_head"),
                        (dict(share_attn=-2), "share_attn")]:
        with pytest.raises(AblateError, match=needle) as err:
            build_model(dataclasses.replace(cfg, **bad), device_type="cpu")
        assert "\n" not in str(err.value)
    # an unresolved config (n_kv_head, share_attn None: the fork crashed on n_head_k=0) builds
    raw = RunConfig(arch="ngpt", n_layer=2, n_head=4, n_embd=32, context=16, vocab_size=V)
    assert build_model(raw, device_type="cpu").param_counts() == model.param_counts()
