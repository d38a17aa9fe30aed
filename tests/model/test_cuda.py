"""The backend-agreement and one-batch-overfit invariants (MODEL_SPEC 6.10, 6.12) again on CUDA,
in fp32 and bf16, for every backend present there (sdpa, FlexAttention, flash-attn when it
imports). Skipped, saying so, on a machine without CUDA."""
import contextlib
import dataclasses
import math

import pytest
import torch

from ablate.model import backends, build_model
from model_helpers import MIX, V, cases, perturb, tiny_cfg, tiny_model
from test_training import ABLATIONS

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device (none on this machine)")]


def cuda_backends(dtype: str) -> list[str]:
    out = ["sdpa"] + (["flex"] if backends.has_flex() else [])
    if dtype == "bf16" and backends.flash_attn_version() is not None:
        out.append("flash")  # flash-attn runs in half precision only
    return out


def on_cuda(model, cfg):
    """A CUDA model for `cfg` holding `model`'s weights."""
    other = build_model(cfg, device_type="cuda")
    other.load_state_dict(model.state_dict())
    return other.cuda()


def autocast(dtype: str):
    return torch.autocast("cuda", dtype=torch.bfloat16) if dtype == "bf16" else contextlib.nullcontext()


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_every_cuda_backend_agrees_with_sdpa(arch, opts, dtype):
    cfg, model = tiny_model(arch, dtype=dtype, **opts)
    perturb(model)
    idx = torch.randint(0, V, (4, cfg.context), generator=torch.Generator().manual_seed(0)).cuda()
    reference = on_cuda(model, dataclasses.replace(cfg, device="cuda"))
    tol = 1e-4 if dtype == "fp32" else 5e-2
    with torch.no_grad(), autocast(dtype):
        want = reference(idx)[0].float()
        for backend in cuda_backends(dtype)[1:]:
            got = on_cuda(model, dataclasses.replace(cfg, attn_backend=backend, device="cuda"))(idx)[0].float()
            assert got.shape == want.shape
            torch.testing.assert_close(got, want, atol=tol, rtol=tol, msg=lambda m: f"{backend}: {m}")


@pytest.mark.parametrize("backend", cuda_backends("bf16"))
@pytest.mark.parametrize("arch, opts", cases(ABLATIONS.values()))
def test_every_ablation_overfits_one_batch_in_bf16(arch, opts, backend):
    torch.manual_seed(0)
    cfg = tiny_cfg(arch, dtype="bf16", attn_backend=backend, device="cuda", **opts)
    model = build_model(cfg, device_type="cuda").cuda()
    assert model.attn_backend == backend
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, V, (4, cfg.context), generator=g).cuda() for _ in range(2))
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=2e-2, betas=(0.9, 0.95))
    model.normalize_()
    with autocast("bf16"):
        first = model(idx, targets)[1].item()
    for _ in range(30):
        with autocast("bf16"):
            _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.normalize_()
    with autocast("bf16"):
        final = model(idx, targets)[1].item()
    assert abs(first - math.log(V)) < 0.15
    assert final < 0.5 * math.log(V), (first, final)


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
@pytest.mark.parametrize("arch, opts", cases(MIX))
def test_sdpa_runs_the_kernel_it_records_and_never_the_math_one(arch, opts, dtype):
    """GQA with a mask or in fp32 must not reach SDPA's math kernel (the whole T x T scores),
    and attention_kernel() (what summary.json records) must name what the profiler sees."""
    cfg = tiny_cfg(arch, dtype=dtype, attn_backend="sdpa", device="cuda", **opts)
    model = build_model(cfg, device_type="cuda").cuda()
    idx = torch.randint(0, V, (2, cfg.context), generator=torch.Generator().manual_seed(0)).cuda()

    def step():
        with autocast(dtype):
            loss = model(idx, idx)[1]
        loss.backward()

    named = backends.attention_kernel(model.attn_backend, cfg, torch.device("cuda"))
    assert backends.kernels_seen(step) == {named}
    assert named != "sdpa-math", cfg


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_auto_gives_sliding_windows_a_kernel_that_skips_blocks(dtype):
    window = tiny_cfg("gpt", dtype=dtype, window=4, device="cuda")
    assert build_model(window, device_type="cuda").attn_backend in ("flex", "flash")
    assert build_model(dataclasses.replace(window, window=None), device_type="cuda").attn_backend in ("sdpa", "flash")
