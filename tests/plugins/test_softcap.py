"""The shipped plugin plugins/softcap.py: Gemma 2's attention-score and final-logit soft-caps,
each against a plain formulation written here; a huge cap is no cap; loss_chunk still chunks
the logit cap; the kernel each cell runs and records; what the plan simulates; the grid end to
end through the CLI, where the report compares baseline / logit cap / attention cap / both."""
import json
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from ablate.model import backends
from ablate.model.gpt import attention_backend
from ablate.model.ops import rope_cos_sin
from ablate.model.points import parts_of
from ablate.plan import plugins as loader
from conftest import ablate_cli
from plugin_helpers import ROOT, batch, cfg_for, loss_and_grads, model, plugin, single_thread  # noqa: F401

PLUGIN = ("softcap",)


def caps(attn=None, logit=None, **kw):
    return cfg_for(PLUGIN, attn_softcap=attn, logit_softcap=logit, **kw)


def same_weights(cfg, like):
    """cfg's model holding `like`'s weights (the soft-caps add no parameter)."""
    m = model(cfg)
    m.load_state_dict(like.state_dict())
    return m


def test_a_huge_cap_is_no_cap():
    base = model(caps())
    capped = same_weights(caps(1e9, 1e9), base)
    assert (base.attn_backend, capped.attn_backend) == ("sdpa", "eager")  # two kernels, one function
    idx, targets = batch(base.config)
    torch.testing.assert_close(capped(idx)[0], base(idx)[0], atol=1e-5, rtol=1e-5)
    loss_c, grads_c = loss_and_grads(capped, idx, targets)
    loss_b, grads_b = loss_and_grads(base, idx, targets)
    torch.testing.assert_close(loss_c, loss_b, atol=1e-6, rtol=1e-6)
    for name in grads_b:
        torch.testing.assert_close(grads_c[name], grads_b[name], atol=1e-6, rtol=1e-4, msg=name)


def attention_by_hand(block, cfg, x, cap):
    """One block's attention written out: q, k from the block's own projections and RoPE,
    scores q.k / sqrt(hd), c tanh(s / c) when cap, causal mask, softmax, times v, W_o."""
    heads, v = block.attn.qkv(x)
    q, k = block.qk(heads, rope_cos_sin(cfg.context, cfg.head_dim))
    rep = cfg.n_head // cfg.kv_heads
    k, v = k.repeat_interleave(rep, dim=2), v.repeat_interleave(rep, dim=2)
    s = torch.einsum("bihd,bjhd->bhij", q, k) / cfg.head_dim ** 0.5
    if cap is not None:
        s = cap * torch.tanh(s / cap)
    s = s.masked_fill(torch.ones(cfg.context, cfg.context, dtype=torch.bool).triu(1), float("-inf"))
    return block.attn.c_proj(torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v).flatten(2))


def test_the_attention_cap_is_c_tanh_of_the_scaled_scores():
    """A cap small enough to bind (0.5): the layer equals the formula, and the uncapped formula
    does not (so the check can fail)."""
    m = model(caps(attn=0.5))
    cfg, block = m.config, m.blocks[0]
    x = torch.randn(2, cfg.context, cfg.n_embd) * 4
    y = block.attn(x, rope_cos_sin(cfg.context, cfg.head_dim), block.qk, block.scores)
    torch.testing.assert_close(y, attention_by_hand(block, cfg, x, 0.5), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(y, attention_by_hand(block, cfg, x, None), atol=1e-3)


def test_the_logit_cap_is_c_tanh_of_the_logits_and_loss_chunk_still_applies_it():
    """A cap that binds at init (0.05: the logits start ~N(0, 0.16)): the logits equal the
    formula, not the uncapped ones; the loss is their cross-entropy; chunked equals plain."""
    base = model(caps())
    capped = same_weights(caps(logit=0.05), base)
    chunked = same_weights(caps(logit=0.05, loss_chunk=5), base)
    idx, targets = batch(base.config)
    want = 0.05 * torch.tanh(base(idx)[0] / 0.05)
    torch.testing.assert_close(capped(idx)[0], want, atol=1e-6, rtol=1e-6)
    assert not torch.allclose(want, base(idx)[0], atol=1e-2)
    loss_p, grads_p = loss_and_grads(capped, idx, targets)
    torch.testing.assert_close(loss_p, F.cross_entropy(want.flatten(0, 1), targets.flatten()), atol=1e-6, rtol=1e-6)
    loss_c, grads_c = loss_and_grads(chunked, idx, targets)
    torch.testing.assert_close(loss_c, loss_p, atol=1e-6, rtol=1e-6)
    for name in grads_p:
        torch.testing.assert_close(grads_c[name], grads_p[name], atol=1e-6, rtol=1e-5, msg=name)


def test_each_cell_runs_and_records_its_kernel(monkeypatch):
    """CPU: the attention cap runs as the exact eager fallback, the logit cap keeps SDPA. On CUDA
    (the choice, asked with a pretend flash-attn 2.6): flash-attn's native softcap, which is
    what the part declares: its score_mod is softcap * tanh(score / softcap)."""
    cells = {(a, l): caps(a, l) for a in (None, 50.0) for l in (None, 30.0)}
    assert {k: model(c).attn_backend for k, c in cells.items()} == {
        (None, None): "sdpa", (None, 30.0): "sdpa", (50.0, None): "eager", (50.0, 30.0): "eager"}
    monkeypatch.setattr(backends, "_flash_probe", lambda: (object(), (2, 6)))
    for a, l in cells:
        cfg = caps(a, l, dtype="bf16")
        parts = parts_of(cfg, loader.parts(cfg))
        assert attention_backend(cfg, "cuda", parts) == "flash"
        if a is not None:
            (_, part), s = parts["scores"](cfg), torch.linspace(-300, 300, 601)
            assert part.softcap == a
            torch.testing.assert_close(part.score_mod(s, 0, 0, 0, 0), a * torch.tanh(s / a), atol=0, rtol=0)


def test_a_cap_must_be_positive():
    p = plugin("softcap")
    for key in ("attn_softcap", "logit_softcap"):
        for bad in (0.0, -30.0):
            with pytest.raises(ValueError, match=f"{key} must be > 0"):
                p.check(cfg_for(PLUGIN, **{key: bad}))
    p.check(caps(50.0, 30.0))


def shipped_grid(monkeypatch):
    from ablate.plan.grid import load_grid

    monkeypatch.chdir(ROOT)  # the grid names plugins/softcap.py relative to the checkout
    return load_grid(ROOT / "grids" / "softcap.yaml")


def test_the_shipped_grid_is_baseline_logit_attention_both(monkeypatch):
    grid = shipped_grid(monkeypatch)
    assert [(c.config.attn_softcap, c.config.logit_softcap) for c in grid.cells] == \
        [(None, None), (None, 30.0), (50.0, None), (50.0, 30.0)]
    assert grid.compare["baseline"] == {"attn_softcap": None, "logit_softcap": None}
    assert [c.config.plugins for c in grid.cells][0][0]["points"] == ["head", "scores"]
    assert grid.cells[0].config.max_iters <= 50 and grid.cells[0].config.n_layer * grid.cells[0].config.n_embd <= 256


def test_the_plan_knows_the_attention_cap_holds_the_scores(monkeypatch):
    """The plan simulates each plugin cell's step: the attention-capped cells run the eager
    fallback, whose fp32 (B, H, T, T) scores (one layer's at least) show in their memory, and the
    table says so."""
    from ablate.cli import MEASURE
    from ablate.plan.plan import format_table, plan_rows

    grid = shipped_grid(monkeypatch)
    rows = plan_rows(grid, measure=MEASURE)
    assert [r["attention"] for r in rows] == [None, "sdpa", "eager", "eager"]
    c = grid.cells[0].config
    scores = c.batch_size * c.n_head * c.context ** 2 * 4
    base, logit, attn, both = (r["memory"]["activations"] + r["memory"]["temps"] for r in rows[:4])
    assert attn - base >= scores and both - logit >= scores
    assert "exact eager fallback" in format_table(grid, rows)


TINY_GRID = """name: caps
plugins: [{plugin}]
data: {{dataset: 'text:{text}', tokenizer: char}}
base: {{arch: gpt, n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 12, lr: 3e-3,
        eval_interval: 6, eval_iters: 2, log_interval: 3, device: cpu}}
zip:
  - {{attn_softcap: [null, null, 1.0, 1.0], logit_softcap: [null, 2.0, null, 2.0]}}
compare: {{baseline: {{attn_softcap: null, logit_softcap: null}}}}
"""


def test_both_caps_run_end_to_end_and_the_report_compares_the_four(tmp_path):
    """plan -> submit -> train -> store -> report through the CLI, both caps in one cell among
    them; every summary.json names the kernel that ran; the report compares the three variants
    with the baseline."""
    text = tmp_path / "corpus.txt"
    text.write_text("the quick brown fox jumps over the lazy dog. " * 400)
    grid = tmp_path / "caps.yaml"
    grid.write_text(TINY_GRID.format(plugin=ROOT / "plugins" / "softcap.py", text=text))
    r = ablate_cli("run", grid, "--executor", "local", "--jobs", "2")
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    summaries = {}
    for path in (Path(os.environ["ABLATE_RUNS_DIR"]) / "caps").glob("*/summary.json"):
        config = json.loads((path.parent / "config.json").read_text())["config"]
        summaries[(config.get("attn_softcap"), config.get("logit_softcap"))] = json.loads(path.read_text())
    assert {k: (s["state"], s["attn_backend"], s["attn_kernel"]) for k, s in summaries.items()} == {
        (None, None): ("done", "sdpa", "sdpa-flash"), (None, 2.0): ("done", "sdpa", "sdpa-flash"),
        (1.0, None): ("done", "eager", "eager"), (1.0, 2.0): ("done", "eager", "eager")}
    assert len({s["final_val_loss"] for s in summaries.values()}) == 4  # four different models
    report = (Path(os.environ["ABLATE_REPORTS_DIR"]) / "caps" / "summary.md").read_text()
    speedup = report[report.index("## Speedup"):report.index("## Validation loss curves")]
    first_table = speedup[speedup.index("\n|"):].split("\n\n")[0]  # the speedup table (the statistics' follow)
    assert [line.split(" | ")[1] for line in first_table.splitlines() if line.startswith("| all |")] == \
        ["logit_softcap=2", "attn_softcap=1", "attn_softcap=1 logit_softcap=2"]
    assert "Baseline: attn_softcap=null logit_softcap=null" in report
