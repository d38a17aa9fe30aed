import math

import pytest

from ablate.core.errors import AblateError
from ablate.core.config import RunConfig, make_config, resolve
from ablate.core import estimate


def test_run_id_ignores_cadence_but_not_results():
    a = resolve(make_config({"arch": "gpt", "vocab_size": 64}))
    assert a.run_id() == resolve(make_config({"arch": "gpt", "vocab_size": 64, "eval_interval": 7,
                                              "log_interval": 3, "ckpt_interval": 11})).run_id()
    assert a.run_id() != resolve(make_config({"arch": "gpt", "vocab_size": 64, "lr": 1e-3})).run_id()
    assert a.run_id() != resolve(make_config({"arch": "gpt", "vocab_size": 64, "seed": 1})).run_id()


def test_explicit_default_hashes_like_implicit():
    implicit = resolve(make_config({"arch": "ngpt", "n_head": 4, "vocab_size": 64}))
    explicit = resolve(make_config({"arch": "ngpt", "n_head": 4, "n_kv_head": 4, "weight_decay": 0.0,
                                    "warmup_iters": 0, "vocab_size": 64}))
    assert implicit.run_id() == explicit.run_id()


def test_a_knob_added_later_renames_only_the_runs_that_use_it():
    """act_ckpt and loss_chunk came after runs existed: at their defaults the run id and the
    cell id are what they were before the fields existed (pinned from the commit before them),
    and a config.json written then (without the keys) names the same cell."""
    from ablate.store.schema import cell_id

    cfg = resolve(make_config({"arch": "ngpt", "vocab_size": 64, "window": 8}))
    assert (cfg.run_id(), cell_id(cfg.to_dict())) == ("a791ad23d7", "d2868ea2f1")
    old = {k: v for k, v in cfg.to_dict().items() if k not in ("act_ckpt", "loss_chunk")}
    assert cell_id(old) == "d2868ea2f1" and resolve(make_config(old)).run_id() == "a791ad23d7"
    for knob in ({"act_ckpt": "blocks"}, {"act_ckpt": "selective"}, {"loss_chunk": 1024}):
        changed = resolve(make_config({**cfg.to_dict(), **knob}))
        assert changed.run_id() != cfg.run_id() and cell_id(changed.to_dict()) != cell_id(cfg.to_dict())


@pytest.mark.parametrize("values, message", [
    ({"act_ckpt": "all"}, "key 'act_ckpt': 'all' is not allowed, expected one of none, blocks, selective"),
    ({"loss_chunk": 0}, "key 'loss_chunk': 0 must be >= 1"),
    ({"loss_chunk": 1.5}, "key 'loss_chunk': 1.5 has type float"),
])
def test_memory_knobs_are_checked(values, message):
    with pytest.raises(AblateError) as e:
        resolve(make_config({"vocab_size": 64, **values}))
    assert message in str(e.value)


def test_arch_defaults_follow_the_nvidia_recipe():
    gpt = resolve(make_config({"arch": "gpt", "max_iters": 1000, "vocab_size": 64}))
    ngpt = resolve(make_config({"arch": "ngpt", "max_iters": 1000, "vocab_size": 64}))
    assert (gpt.weight_decay, gpt.warmup_iters) == (0.1, 200)
    assert (ngpt.weight_decay, ngpt.warmup_iters) == (0.0, 0)
    assert gpt.lr_decay_iters == 1000


def test_vocab_padded_from_data():
    assert resolve(make_config({}), data_vocab=50257).vocab_size == 50304
    assert resolve(make_config({}), data_vocab=65).vocab_size == 128


@pytest.mark.parametrize("values, message", [
    ({"n_layr": 4}, "unknown key 'n_layr' (did you mean 'n_layer'?)"),
    ({"n_layer": "4"}, "key 'n_layer': '4' has type str, expected int"),
    ({"n_layer": 4.5}, "key 'n_layer': 4.5 has type float, expected int"),
    ({"tie_embeddings": "yes"}, "key 'tie_embeddings': 'yes' has type str, expected bool"),
    ({"arch": "mamba"}, "key 'arch': 'mamba' is not allowed, expected one of gpt, ngpt"),
    ({"n_layer": None}, "key 'n_layer': null is not allowed"),
    ({"lr": "fast"}, "key 'lr': 'fast' has type str, expected float"),
])
def test_type_errors_are_one_line(values, message):
    with pytest.raises(AblateError) as e:
        make_config(values)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("values, message", [
    ({"n_head": 4, "n_kv_head": 3}, "'n_kv_head': 3 must divide n_head=4"),
    ({"n_layer": 4, "share_attn": 3}, "'share_attn': 3 must divide n_layer=4"),
    ({"window": 0}, "'window': 0 must be >= 1"),
    ({"n_embd": 130, "n_head": 4}, "'n_embd': 130 is not divisible by n_head=4"),
    ({"n_embd": 132, "n_head": 4}, "head_dim = n_embd/n_head = 33 is odd"),
    ({"attn_backend": "flash", "device": "cpu"}, "flash needs CUDA"),
    ({"dataset": "shakespear"}, "did you mean 'shakespeare'"),
    ({"min_lr": 1.0, "lr": 0.1}, "'min_lr'"),
    ({"strategy": "fsdp", "dtype": "bf16", "param_dtype": "bf16", "device": "cuda"},
     "key 'strategy': fsdp needs one dtype per block, but param_dtype: bf16"),
    ({"reshard_after_forward": False}, "key 'reshard_after_forward': false applies to strategy: fsdp only"),
    ({"strategy": "zero3"}, "key 'strategy': 'zero3' is not allowed, expected one of ddp, fsdp"),
])
def test_cross_field_rules(values, message):
    with pytest.raises(AblateError) as e:
        resolve(make_config({**values, "vocab_size": 64}))
    assert message in str(e.value)


def test_yaml_style_exponent_strings_become_floats():
    assert make_config({"lr": "3e-3"}).lr == pytest.approx(3e-3)


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_reference_parameter_counts(arch):
    cfg = resolve(make_config({"arch": arch, "n_layer": 24, "n_head": 16, "n_embd": 1024, "vocab_size": 50304}))
    assert estimate.param_counts(cfg)["total"] == {"gpt": 505_725_952, "ngpt": 505_996_416}[arch]


def test_tricks_shrink_what_they_should():
    base = {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 64, "vocab_size": 256}
    counts = lambda **kw: estimate.param_counts(resolve(make_config({**base, **kw})))
    full = counts()
    assert counts(tie_embeddings=True)["total"] == full["total"] - 256 * 64
    assert counts(n_kv_head=1)["attention"] < full["attention"]
    assert counts(share_attn=1)["attention"] == full["attention"] // 4
    assert counts(window=8) == full  # SWA changes no weights


def test_window_shrinks_causal_flops_only():
    base = {"arch": "gpt", "context": 1024, "vocab_size": 256}
    full = estimate.flops_per_token(resolve(make_config(base)))
    swa = estimate.flops_per_token(resolve(make_config({**base, "window": 128})))
    assert swa["causal"] < full["causal"]
    assert swa["nanogpt"] == full["nanogpt"]


def test_memory_estimate_grows_with_batch_and_vocab():
    base = {"vocab_size": 512}
    m1 = estimate.memory_breakdown(resolve(make_config(base)))
    m2 = estimate.memory_breakdown(resolve(make_config({**base, "batch_size": 32})))
    m0 = estimate.memory_breakdown(resolve(make_config({**base, "batch_size": 8})))
    for part in ("activations", "temps"):  # affine in the batch (weight copies kept per layer do not grow)
        assert m2[part] > m1[part] > m0[part]
        assert abs((m2[part] - m1[part]) - 2 * (m1[part] - m0[part])) <= 1e-6 * m2[part]
    assert m1["optimizer"] == 2 * 4 * estimate.param_counts(resolve(make_config(base)))["total"]
    assert m1["total"] == sum(m1[k] for k in ("params", "grads", "optimizer", "activations", "temps"))
    bigger_vocab = estimate.memory_breakdown(resolve(make_config({"vocab_size": 50304})))
    assert bigger_vocab["activations"] > m1["activations"] and bigger_vocab["temps"] > m1["temps"]


def test_flops_count_the_matmuls_that_run_not_the_weights_stored():
    base = {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 64, "context": 128, "vocab_size": 256}
    flops = lambda **kw: estimate.flops_per_token(resolve(make_config({**base, **kw})))
    full = flops()
    assert flops(share_attn=1) == full and flops(share_attn=2) == full  # shared attention still runs per layer
    assert flops(tie_embeddings=True) == full  # the tied head is still a matmul
    assert flops(n_kv_head=1)["causal"] < full["causal"]  # smaller K/V projections do less work
    d, L, V, T = 64, 4, 256, 128
    n = L * (4 * d * d) + L * 12 * d * d + (2 * L + 1) * d + V * d  # attention + SwiGLU + norms + head
    assert full["nanogpt"] == 6 * n + 12 * L * d * T
    assert full["causal"] == pytest.approx(6 * n + 12 * L * d * (T + 1) / 2)


def test_strategy_names_a_new_run_only_when_set():
    """strategy and reshard_after_forward came after runs existed: at their defaults they leave
    every run id as it was; set, they name another run (its memory per rank is another result)."""
    base = resolve(make_config({"vocab_size": 64}))
    assert resolve(make_config({"vocab_size": 64, "strategy": "ddp"})).run_id() == base.run_id()
    fsdp = resolve(make_config({"vocab_size": 64, "strategy": "fsdp"}))
    kept = resolve(make_config({"vocab_size": 64, "strategy": "fsdp", "reshard_after_forward": False}))
    assert len({base.run_id(), fsdp.run_id(), kept.run_id()}) == 3
