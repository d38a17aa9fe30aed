"""Who is compared with whom: comparison groups, variants and the baseline, from the runs alone.

    compare = {"baseline": {"arch": "gpt"}, "group_by": ["context"]}

- varied keys: config keys (hashed, not the seed) that take several values in the grid; a
  plugin's keys are config keys like the others (`plugin_key_columns(runs)`).
- group: the values of `group_by`. Default (as the grid file's default): every varied key
  except the baseline's keys, the seed, the lr sweep (lr, min_lr) and the budget (max_iters),
  nor keys resolved from those (GPT's warmup, lr_decay_iters): several budgets in one group
  is what budget-mode speedup needs, several lrs in one variant is what best-vs-best needs.
- variant: the values of the remaining varied keys, except lr and max_iters (lr is swept
  inside a variant, with min_lr; max_iters is the budget). Keys that are functions of the
  others (a resolved warmup per arch and budget, batch size zipped with context) are not
  variant keys: a key is dropped when the group, the budget and the keys already kept
  determine it. The baseline's keys are kept first and never dropped.
- baseline: the variant whose cells match every key of `baseline` (n_kv_head / share_attn
  null match their resolved value, n_head / n_layer).
- when several lrs share a (group, variant, budget), the variant is represented by its best
  lr (lowest mean final val loss over finished seeds), as in the nGPT paper; the lr sweep
  chart shows them all.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from ablate.core.config import SWEPT  # inside a variant: the lr sweep (+ min_lr) and the budget
from ablate.core.errors import value_text
from ablate.store.schema import CELL_KEYS, CONFIG_COLUMNS, RESERVED_NAMES

# a null in a baseline means the resolved default, which is another key's value
RESOLVED_NULL = {"n_kv_head": "n_head", "share_attn": "n_layer", "lr_decay_iters": "max_iters"}


@dataclass
class Comparison:
    baseline: dict
    group_by: list
    variant_keys: list
    varied: list
    notes: list = field(default_factory=list)


def plugin_key_columns(runs: pd.DataFrame) -> list:
    """The plugin key columns among the runs' (the store adds one per plugin key; a plugin key
    can take no name the store or the report uses, so any other column is one)."""
    return [c for c in runs.columns if c not in RESERVED_NAMES]


def config_keys(runs: pd.DataFrame) -> list:
    return [*CONFIG_COLUMNS, *plugin_key_columns(runs)]


def plain(df: pd.DataFrame, cols=None) -> pd.DataFrame:
    """Config columns as Python values with None for missing (pandas NA breaks `==`)."""
    df = df.copy()
    for c in cols if cols is not None else [c for c in config_keys(df) if c in df]:
        df[c] = df[c].astype(object).where(df[c].notna(), None)
    return df


def same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=0.0)
    return str(a) == str(b)


def fmt(key: str, value) -> str:
    """One key=value for a label: arch bare, booleans as the key or 'no key'."""
    if key == "arch":
        return str(value)
    if isinstance(value, bool):
        return key if value else f"no {key}"
    if isinstance(value, float):
        return f"{key}={value:g}"
    return f"{key}={value_text(value)}"


def _determined(df: pd.DataFrame, by: list, key: str) -> bool:
    """Whether `by` fixes the value of `key` in every row (nulls count as a value)."""
    col = df[key].map(repr)
    if not by:
        return col.nunique() <= 1
    keys = [df[b].map(repr) for b in by]
    return bool((col.groupby(keys).nunique() <= 1).all())


def _independent(runs: pd.DataFrame, keys: list, baseline: dict, given: list) -> list:
    """The keys that are not functions of `given` and of the keys kept before them (in field
    order, the baseline's keys first and always kept): resolved warmup per arch and budget,
    weight decay per arch or a batch size zipped with the context are not axes of their own."""
    kept = []
    for k in sorted(keys, key=lambda k: k not in baseline):
        if k in baseline or not _determined(runs, [*given, *kept], k):
            kept.append(k)
    return sorted(kept, key=keys.index)


def resolve(runs: pd.DataFrame, compare: dict | None) -> Comparison:
    """The comparison for a grid's runs (config columns already `plain`)."""
    compare = compare or {}
    baseline = dict(compare.get("baseline") or {"arch": "gpt"})
    notes = []
    known = config_keys(runs)
    unknown = [k for k in baseline if k not in known]
    if unknown:
        notes.append(f"compare.baseline names unknown keys {unknown}: ignored")
        baseline = {k: v for k, v in baseline.items() if k in known}
    varied = [k for k in [*CELL_KEYS, *plugin_key_columns(runs)] if k in runs and runs[k].map(repr).nunique() > 1]
    group_by = compare.get("group_by")
    if group_by is None:  # the grid file's default, on the axes (not on keys resolved from them)
        swept = [k for k in SWEPT if k in varied]
        group_by = [k for k in _independent(runs, [k for k in varied if k not in swept], baseline, swept)
                    if k not in baseline]
    group_by = [k for k in group_by if k in known]
    variant_keys = _independent(runs, [k for k in varied if k not in group_by and k not in SWEPT], baseline,
                                [*group_by, "max_iters"])
    missing = [k for k in baseline if k not in variant_keys and k not in group_by and k in varied]
    if missing:
        notes.append(f"baseline keys {missing} vary only with other keys; they do not define variants")
    return Comparison(baseline, list(group_by), variant_keys, varied, notes)


def is_baseline(row: dict, baseline: dict) -> bool:
    for k, v in baseline.items():
        have = row.get(k)
        if v is None and k in RESOLVED_NULL:
            v = row.get(RESOLVED_NULL[k])
        if not same(have, v):
            return False
    return True


def reference(runs: pd.DataFrame, comp: Comparison) -> dict:
    """The baseline's value of every variant key: its own value for the baseline's keys, else the
    most common value among the baseline's runs (all runs when none match), so that a label
    names only what a variant changes."""
    rows = runs.to_dict("records")
    base = [r for r in rows if is_baseline(r, comp.baseline)] or rows
    ref = {}
    for k in comp.variant_keys:
        if k in comp.baseline and not (comp.baseline[k] is None and k in RESOLVED_NULL):
            ref[k] = comp.baseline[k]
        else:
            ref[k] = pd.Series([repr(r.get(k)) for r in base]).mode().iloc[0]
            ref[k] = next(r.get(k) for r in base if repr(r.get(k)) == ref[k])
    return ref


def label(row: dict, keys: list, ref: dict | None = None, baseline: dict | None = None) -> str:
    """Group label (all keys), or variant label: the keys whose value differs from the
    baseline's (`ref`); the baseline itself is named by its one key ("gpt") or "baseline"."""
    if ref is None:
        return ", ".join(fmt(k, row.get(k)) for k in keys) or "all"
    parts = [fmt(k, row.get(k)) for k in keys if not same(row.get(k), ref.get(k))]
    if parts:
        return " ".join(parts)
    if baseline and len(baseline) == 1 and next(iter(baseline)) in keys:
        k = next(iter(baseline))
        return fmt(k, row.get(k))
    return "baseline"


def order_key(value) -> tuple:
    """Sort key that puts None first, then numbers by value, then strings."""
    if value is None:
        return (0, 0, "")
    if isinstance(value, (bool, int, float)):
        return (1, float(value), "")
    return (2, 0, str(value))


def _tokens(r: dict) -> float:
    try:
        return float(r["max_iters"] * r["batch_size"] * r["grad_accum"] * r["context"])
    except (TypeError, KeyError):
        return math.nan


def annotate(runs: pd.DataFrame, comp: Comparison) -> pd.DataFrame:
    """Add group, mgroup (the group without budget and lr: memory, size, throughput, lr sweep),
    variant and is_baseline to every run."""
    runs = runs.copy()
    rows = runs.to_dict("records")
    mkeys = [k for k in comp.group_by if k not in SWEPT]
    runs["group"] = [label(r, comp.group_by) for r in rows]
    runs["mgroup"] = [label(r, mkeys) for r in rows]
    ref = reference(runs, comp)
    runs["variant"] = [label(r, comp.variant_keys, ref, comp.baseline) for r in rows]
    runs["is_baseline"] = [is_baseline(r, comp.baseline) for r in rows]
    # display order: groups by their values (context 256 before 1024), baseline first, then variants
    def ranks(keys):
        vals = [tuple(order_key(r.get(k)) for k in keys) for r in rows]
        rank = {v: i for i, v in enumerate(sorted(set(vals)))}
        return [rank[v] for v in vals]
    runs["gorder"], runs["morder"] = ranks(comp.group_by), ranks(mkeys)
    runs["vorder"] = [(0 if b else 1) * 10 ** 6 + v for b, v in zip(runs.is_baseline, ranks(comp.variant_keys))]
    runs["budget_tokens"] = [_tokens(r) for r in rows]
    return runs


CELL_LABELS = ["cell_id", "group", "mgroup", "variant", "is_baseline", "max_iters", "lr", "budget_tokens", "gorder",
               "morder", "vorder"]
CELL_STATS = ["n_runs", "n_done", "states", "mean_val_loss", "se_val_loss", "eval_se_val_loss"]


def cells(runs: pd.DataFrame, stats: pd.DataFrame) -> pd.DataFrame:
    """One row per cell: its labels (from the runs) and the store's `cells` view (mean and
    standard error of the final val loss over finished seeds, the eval's own standard error,
    counts, states), in display order, with best_lr, rep (the cell that stands for its
    variant), n_lrs (lrs swept beside it) and lr_edge ("lowest" / "highest" when the best lr
    is an end of a sweep of two or more lrs: then it is not known to be an optimum) marked."""
    if not len(runs):
        return pd.DataFrame(columns=[*CELL_LABELS, *CELL_STATS, "best_lr", "rep", "n_lrs", "lr_edge"])
    stats = stats.assign(states=[",".join(sorted(s)) for s in stats.states])
    out = runs[CELL_LABELS].drop_duplicates("cell_id").merge(stats[["cell_id", *CELL_STATS]], on="cell_id")
    out = out.sort_values(["gorder", "vorder", "max_iters", "lr"], ignore_index=True)
    # the best lr of each (group, variant, budget): the cell that stands for the variant
    out["best_lr"] = False
    ranked = out[out.n_done > 0].sort_values(["mean_val_loss", "lr"])
    best = ranked.groupby(["group", "variant", "max_iters"], sort=False).head(1).index
    out.loc[best, "best_lr"] = True
    # the cell drawn and compared for a (group, variant, budget): its best lr, or while no lr
    # has finished, every cell (each shows its own progress)
    sweep = out.groupby(["group", "variant", "max_iters"], dropna=False)
    out["rep"] = out.best_lr | ~sweep["best_lr"].transform("any")
    # every lr of the sweep counts as an end, diverged or failed ones too: a larger lr that
    # diverged brackets the optimum from above as well as a worse loss does
    out["n_lrs"] = sweep["lr"].transform("nunique")
    lo, hi = sweep["lr"].transform("min"), sweep["lr"].transform("max")
    out["lr_edge"] = ""
    edge = out.best_lr & (out.n_lrs > 1)
    out.loc[edge & (out.lr == lo), "lr_edge"] = "lowest"
    out.loc[edge & (out.lr == hi), "lr_edge"] = "highest"
    return out
