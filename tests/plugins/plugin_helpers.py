"""Configs and models of the shipped plugins (plugins/*.py) for their tests: the plugins loaded
as a grid loads them, a tiny GPT, and the model built the way every caller builds it
(ablate.train.build.model_for: the parts of the plugins the cell uses, resolved).

A plain module (pytest's default import mode puts this folder on sys.path), not a conftest."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ablate.core.config import make_config, resolve
from ablate.plan import plugins as loader
from ablate.train.build import model_for

ROOT = Path(__file__).resolve().parents[2]
TINY = {"arch": "gpt", "n_layer": 2, "n_head": 4, "n_kv_head": 2, "n_embd": 64, "context": 16, "vocab_size": 64}


@pytest.fixture(autouse=True)
def single_thread():
    """Autouse in every module that imports it: tiny tensors gain nothing from threads here."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def plugin(name: str):
    return loader.load(str(ROOT / "plugins" / f"{name}.py"))


def cfg_for(names=(), **kw):
    """A resolved tiny config whose grid names the plugins `names` (in that order), with `kw` set."""
    decls = tuple(plugin(n).declaration() for n in names)
    return resolve(make_config({**TINY, **({"plugins": decls} if decls else {}), **kw}))


def model(cfg, seed: int = 0):
    torch.manual_seed(seed)
    return model_for(cfg, "cpu")


def batch(cfg, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, cfg.vocab_size, (2, cfg.context), generator=g)
    return idx, torch.randint(0, cfg.vocab_size, (2, cfg.context), generator=g)


def loss_and_grads(m, idx, targets):
    m.zero_grad(set_to_none=True)
    loss = m(idx, targets)[1]
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
