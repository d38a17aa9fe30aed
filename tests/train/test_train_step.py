"""One optimizer step (ablate/train/step.py), as the trainer and the memory simulation take it:
the gradient is clipped to grad_clip before AdamW sees it, and the RNG a run resumes with is
the one it saved."""
import contextlib
import random

import numpy as np
import pytest
import torch

from ablate.core.config import make_config, resolve
from ablate.model import build_model
from ablate.train.checkpoint import rng_state, set_rng_state
from ablate.train.optim import build_optimizer
from ablate.train.step import optimizer_step


def _global_norm_seen_by_adamw(grad_clip: float) -> tuple[float, float]:
    """(the gradients' global norm when AdamW's step runs, the norm before any clipping)."""
    torch.manual_seed(0)
    cfg = resolve(make_config({"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 16, "vocab_size": 64,
                               "grad_clip": grad_clip, "device": "cpu"}))
    model = build_model(cfg, "cpu")
    optimizer = build_optimizer(model, cfg, torch.device("cpu"))
    x = torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(1))
    seen = {}
    real_step = optimizer.step

    def step(*args, **kwargs):  # what AdamW is handed: the gradients after clipping
        seen["norm"] = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()
                                                             if p.grad is not None])).item()
        return real_step(*args, **kwargs)
    optimizer.step = step
    _, loss = model(x, x)
    loss.backward()
    raw = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters() if p.grad is not None]))
    optimizer.zero_grad(set_to_none=True)
    optimizer_step(model, model, optimizer, batch=lambda i: (x, x), micro=1, autocast=contextlib.nullcontext,
                   grad_clip=grad_clip)
    return seen["norm"], raw.item()


def test_gradients_are_clipped_to_grad_clip_before_the_optimizer_step():
    clipped, raw = _global_norm_seen_by_adamw(0.01)
    assert raw > 0.1  # so a clip at 0.01 must act
    assert clipped == pytest.approx(0.01, rel=1e-4)
    unclipped, raw_again = _global_norm_seen_by_adamw(0.0)  # 0 = off
    assert unclipped == pytest.approx(raw_again, rel=1e-6) and unclipped > 0.1
    loose, _ = _global_norm_seen_by_adamw(1e6)  # a clip above the norm changes nothing
    assert loose == pytest.approx(raw_again, rel=1e-6)


def test_the_rng_a_run_resumes_with_is_the_one_it_saved():
    """Python's, numpy's and torch's generators: save, draw, restore, draw again: the same draws
    (nothing in today's model draws, so no resume test could see a lost RNG; dropout would)."""
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    saved = rng_state()
    first = (random.random(), np.random.rand(), torch.rand(3).tolist(), np.random.normal())
    random.seed(99)
    np.random.seed(99)
    torch.manual_seed(99)
    set_rng_state(saved)
    assert (random.random(), np.random.rand(), torch.rand(3).tolist(), np.random.normal()) == first
