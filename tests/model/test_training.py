"""Optimizer groups and one-batch overfitting for every ablation (MODEL_SPEC 6.11, 6.12)."""
import math

import pytest
import torch

from model_helpers import single_thread  # noqa: F401  (autouse fixture)
from model_helpers import ALL, V, cases, tiny_model


@pytest.mark.parametrize("arch, opts", cases(ALL))
def test_optimizer_groups_hold_each_tensor_once(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    groups = model.optimizer_groups(0.1)
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids))  # a tied or shared tensor once
    assert set(ids) == {id(p) for p in model.parameters()}
    if cfg.tie_embeddings or cfg.attn_groups < cfg.n_layer:  # walking every module would list some twice
        assert len(list(model.named_parameters(remove_duplicate=False))) > len(ids)
    if arch == "ngpt":
        assert all(g["weight_decay"] == 0.0 for g in groups)
    else:
        for g in groups:
            assert g["weight_decay"] == (0.1 if all(p.dim() >= 2 for p in g["params"]) else 0.0)
            assert len({p.dim() >= 2 for p in g["params"]}) == 1
    torch.optim.AdamW(groups, lr=1e-3)  # raises if a tensor appears in two groups


ABLATIONS = {
    "baseline": {},
    "gqa": {"n_kv_head": 1},
    "tied": {"tie_embeddings": True},
    "shared": {"share_attn": 1},
    "swa": {"window": 4},
    "all": {"n_kv_head": 2, "tie_embeddings": True, "share_attn": 1, "window": 4},
}


@pytest.mark.parametrize("arch, opts", cases(ABLATIONS.values()))
def test_overfits_one_batch(arch, opts):
    cfg, model = tiny_model(arch, **opts)
    g = torch.Generator().manual_seed(0)
    idx, targets = (torch.randint(0, V, (4, cfg.context), generator=g) for _ in range(2))
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=2e-2, betas=(0.9, 0.95))
    model.normalize_()
    first = model(idx, targets)[1].item()
    for _ in range(30):
        _, loss = model(idx, targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        model.normalize_()
    final = model(idx, targets)[1].item()
    assert abs(first - math.log(V)) < 0.1
    assert final < 0.5 * math.log(V), (first, final)
