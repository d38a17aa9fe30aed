"""Groups, variants and baseline from resolved configs (no store needed)."""
import itertools

import pandas as pd

from ablate.report import compare as cmp
from ablate.store.schema import cell_id
from synthetic import config_for


def runs_of(cells: list[dict]) -> pd.DataFrame:
    rows = []
    for i, over in enumerate(cells):
        c = config_for(over).to_dict()
        rows.append({**c, "run_id": f"r{i}", "cell_id": cell_id(c), "state": "done"})
    return cmp.plain(pd.DataFrame(rows))


def test_resolved_keys_are_not_axes():
    """GPT's warmup (20% of max_iters) and weight decay differ per arch and budget after resolve;
    they must neither split groups nor name variants."""
    runs = runs_of([{"arch": a, "context": c, "max_iters": m}
                    for a, c, m in itertools.product(["gpt", "ngpt"], [128, 256], [1000, 2000])])
    assert {"warmup_iters", "weight_decay", "lr_decay_iters"} <= set(cmp.resolve(runs, {}).varied)
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}})  # no group_by: the default
    assert comp.group_by == ["context"] and comp.variant_keys == ["arch"]  # budgets share a group
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}, "group_by": ["context"]})
    assert comp.variant_keys == ["arch"]  # budgets inside the group: budget mode


def test_per_arch_lr_does_not_hide_the_arch():
    runs = runs_of([{"arch": "gpt", "lr": 1e-3}, {"arch": "gpt", "lr": 2e-3},
                    {"arch": "ngpt", "lr": 4e-3}, {"arch": "ngpt", "lr": 8e-3}])
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}, "group_by": []})
    assert comp.variant_keys == ["arch"]


def test_zipped_batch_size_follows_its_context():
    runs = runs_of([{"arch": a, "context": c, "batch_size": b}
                    for a in ("gpt", "ngpt") for c, b in ((128, 32), (256, 16))])
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}, "group_by": ["context"]})
    assert comp.variant_keys == ["arch"]
    out = cmp.annotate(runs, comp)
    assert sorted(set(out.group)) == ["context=128", "context=256"]


def test_ablation_baseline_with_resolved_nulls_and_labels():
    zips = [{}, {"n_kv_head": 2}, {"tie_embeddings": True}, {"share_attn": 2}, {"window": 64}]
    runs = runs_of([{"arch": a, **z} for a in ("gpt", "ngpt") for z in zips])
    baseline = {"n_kv_head": None, "tie_embeddings": False, "share_attn": None, "window": None}
    comp = cmp.resolve(runs, {"baseline": baseline, "group_by": ["arch"]})
    assert comp.variant_keys == ["n_kv_head", "tie_embeddings", "share_attn", "window"]
    out = cmp.annotate(runs, comp)
    gpt = out[out.arch == "gpt"]
    assert gpt.is_baseline.tolist() == [True, False, False, False, False]
    assert gpt.variant.tolist() == ["baseline", "n_kv_head=2", "tie_embeddings", "share_attn=2", "window=64"]
    assert out.group.tolist()[:5] == ["gpt"] * 5


def test_labels_name_only_what_changes():
    runs = runs_of([{"arch": "gpt"}, {"arch": "ngpt"}, {"arch": "ngpt", "n_kv_head": 2}])
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}, "group_by": []})
    out = cmp.annotate(runs, comp)
    assert out.variant.tolist() == ["gpt", "ngpt", "ngpt n_kv_head=2"]
    assert out.group.tolist() == ["all"] * 3


def test_default_groups_keep_budgets_and_lrs_inside_a_variant():
    """max_iters is the budget axis as lr is the sweep axis: without group_by, GPT and nGPT at
    several budgets and lrs are one group (budget mode, best lr per arch), not one group per
    budget (curve mode only) or per lr (same-lr comparisons)."""
    runs = runs_of([{"arch": a, "max_iters": m, "lr": lr, "min_lr": lr / 10}
                    for a in ("gpt", "ngpt") for m in (100, 200, 400) for lr in (1e-3, 2e-3)])
    comp = cmp.resolve(runs, {"baseline": {"arch": "gpt"}})
    assert comp.group_by == [] and comp.variant_keys == ["arch"]
    out = cmp.annotate(runs, comp)
    assert set(out.group) == {"all"} and set(out.variant) == {"gpt", "ngpt"}
