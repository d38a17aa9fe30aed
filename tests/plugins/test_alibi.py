"""The shipped plugin plugins/alibi.py: ALiBi's bias against a T x T bias built by hand from the
paper's own slope code, no rotary embedding left, the same score_mod in FlexAttention and in the
eager fallback, what it refuses, and its grid."""
import math

import pytest
import torch

from ablate.model.ops import rope_cos_sin
from plugin_helpers import ROOT, cfg_for, model, plugin, single_thread  # noqa: F401


def get_slopes(n):
    """ALiBi's slopes as its authors wrote them (ofirpress/attention_with_linear_biases,
    fairseq/models/transformer.py), verbatim but for names."""
    def get_slopes_power_of_2(n):
        start = 2 ** (-2 ** -(math.log2(n) - 3))
        ratio = start
        return [start * ratio ** i for i in range(n)]

    if math.log2(n).is_integer():
        return get_slopes_power_of_2(n)
    closest_power_of_2 = 2 ** math.floor(math.log2(n))
    return get_slopes_power_of_2(closest_power_of_2) + get_slopes(2 * closest_power_of_2)[0::2][:n - closest_power_of_2]


@pytest.mark.parametrize("n_head, n_embd, n_kv_head", [(4, 64, 2), (6, 96, 6), (12, 96, 3)])
def test_alibi_is_the_papers_bias_on_unrotated_heads(n_head, n_embd, n_kv_head):
    """One block's attention equals softmax(q.k / sqrt(hd) + bias) v, q and k the plain
    projections (no RoPE), bias[h, i, j] = -m_h (i - j) from the paper's slopes, causal."""
    m = model(cfg_for(("alibi",), alibi=True, n_head=n_head, n_embd=n_embd, n_kv_head=n_kv_head))
    cfg, block = m.config, m.blocks[0]
    T, hd = cfg.context, cfg.head_dim
    x = torch.randn(2, T, n_embd)
    y = block.attn(x, rope_cos_sin(T, hd), block.qk, block.scores)

    q = (x @ block.attn.c_q.weight.T).view(2, T, n_head, hd)
    k = (x @ block.attn.c_k.weight.T).view(2, T, n_kv_head, hd).repeat_interleave(n_head // n_kv_head, dim=2)
    v = (x @ block.attn.c_v.weight.T).view(2, T, n_kv_head, hd).repeat_interleave(n_head // n_kv_head, dim=2)
    bias = torch.zeros(n_head, T, T)
    for h, slope in enumerate(get_slopes(n_head)):
        for i in range(T):
            for j in range(T):
                bias[h, i, j] = -slope * (i - j) if j <= i else float("-inf")
    s = torch.einsum("bihd,bjhd->bhij", q, k) / hd ** 0.5 + bias
    want = block.attn.c_proj(torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).flatten(2))
    torch.testing.assert_close(y, want, atol=1e-5, rtol=1e-5)


def test_without_the_bias_positions_are_gone_and_with_it_distance_counts():
    """No RoPE: a causal model that sees only content gives the last token the same output
    whatever the order of the tokens before it; ALiBi's bias makes the order matter again."""
    m = model(cfg_for(("alibi",), alibi=True, n_layer=1))
    idx = torch.randint(0, 64, (1, 16))
    shuffled = torch.cat([idx[:, :-1].flip(1), idx[:, -1:]], dim=1)  # same tokens, last one last
    with torch.no_grad():
        assert not torch.allclose(m(idx)[0][0, -1], m(shuffled)[0][0, -1], atol=1e-4)
        for block in m.blocks:
            block.scores = block.scores[:1]  # the plain scores part only: no bias
            block.attn.backend = "sdpa"
        torch.testing.assert_close(m(idx)[0][0, -1], m(shuffled)[0][0, -1], atol=1e-5, rtol=1e-5)


@pytest.mark.filterwarnings("ignore:flex_attention called without torch.compile")
def test_flexattention_runs_the_same_bias():
    """FlexAttention calls score_mod on scalar indices, the eager fallback on broadcast tensors:
    the same logits (FlexAttention's own CPU forward, no gradients)."""
    m = model(cfg_for(("alibi",), alibi=True, n_head=6, n_embd=96, n_kv_head=3))
    assert m.attn_backend == "eager"
    idx = torch.randint(0, 64, (2, 16))
    with torch.no_grad():
        eager = m(idx)[0]
        for block in m.blocks:
            block.attn.backend = "flex"
        torch.testing.assert_close(m(idx)[0], eager, atol=1e-5, rtol=1e-5)


def test_alibi_adds_no_parameters_and_refuses_ngpt():
    on, off = model(cfg_for(("alibi",), alibi=True)), model(cfg_for(("alibi",)))
    assert on.state_dict().keys() == off.state_dict().keys()
    with pytest.raises(ValueError, match="alibi is for arch gpt"):
        plugin("alibi").check(cfg_for(("alibi",), alibi=True, arch="ngpt"))


def test_the_shipped_grid_compares_rope_with_alibi(monkeypatch):
    from ablate.plan.grid import load_grid

    monkeypatch.chdir(ROOT)
    grid = load_grid(ROOT / "grids" / "alibi.yaml")
    assert [c.config.alibi for c in grid.cells] == [False, True]
    assert grid.compare["baseline"] == {"alibi": False}
