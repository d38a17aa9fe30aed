"""Main effects and two-way interactions of a factorial grid's factors on final val loss.

The factors are the grid's comparison keys that take several values: the group keys and the
variant keys (arch, n_kv_head, window, context, a plugin's key...), never the lr (each cell
stands at its best lr) nor the budget (effects are given per budget). Each factor has a
reference level: the baseline's value for a variant key, the smallest value for a group key.

- main effect of A = a: the change in loss from A's reference level to a, averaged over the
  combinations of the other factors where both cells exist;
- interaction of A = a with B = b: the difference of differences,
      (L[a, b] - L[ref_a, b]) - (L[a, ref_b] - L[ref_a, ref_b]),
  averaged over the other factors' combinations where all four cells exist. "Does GQA hurt nGPT
  more than GPT?" is the row n_kv_head x arch: "n_kv_head=1 vs n_kv_head=4 changes the loss
  by +0.012 more under ngpt than under gpt".

Each effect is a contrast, sum_i c_i L_i, over cells; it is computed seed by seed (blocked on
the seed, as paired.py pairs two cells: the seeds that every cell of the contrast finished) and
its interval and p-value are stats.mean_interval's, the cells' eval noise folded in as
sqrt(sum c_i^2 se_i^2). One seed: "one seed: eval noise only". A grid with one factor has no
effects beyond paired.py's differences: the table is empty.
"""
from __future__ import annotations

import itertools
import math

import pandas as pd

from ablate.core.config import SWEPT
from ablate.report import compare as cmp
from ablate.report import stats

COLUMNS = ["budget", "kind", "factors", "effect", "words", "estimate", "lo", "hi", "p", "n_seeds", "n_combos", "sd",
           "eval_sd", "verdict"]


def factors(runs: pd.DataFrame, comp) -> list:
    """The comparison keys that take several values among the runs, the baseline's keys first."""
    keys = [k for k in dict.fromkeys([*comp.group_by, *comp.variant_keys]) if k in runs and k not in SWEPT]
    keys = [k for k in keys if runs[k].map(repr).nunique() > 1]
    return sorted(keys, key=lambda k: (k not in comp.baseline, keys.index(k)))


def references(runs: pd.DataFrame, comp, keys: list) -> dict:
    """Each factor's reference level: the baseline's value, else the smallest value."""
    ref = cmp.reference(runs, comp)
    out = {}
    for k in keys:
        if k in comp.variant_keys and k in ref:
            out[k] = ref[k]
        else:
            out[k] = min(runs[k].tolist(), key=cmp.order_key)
    return out


def _levels(runs: pd.DataFrame, key: str) -> list:
    seen = {}
    for v in runs[key].tolist():
        seen.setdefault(repr(v), v)
    return sorted(seen.values(), key=cmp.order_key)


def _contrast(coefs: dict, cells: dict) -> stats.Estimate:
    """sum c_i L_i over the seeds that every cell finished; eval noise sqrt(sum c_i^2 se_i^2)."""
    seeds = set.intersection(*(set(cells[c]["seeds"]) for c in coefs))
    values = [sum(w * cells[c]["seeds"][s] for c, w in coefs.items()) for s in sorted(seeds)]
    ses = [cells[c]["eval_se"] for c in coefs]
    eval_sd = math.sqrt(sum(w ** 2 * se ** 2 for w, se in zip(coefs.values(), ses))) \
        if all(math.isfinite(se) for se in ses) else 0.0
    return stats.mean_interval(values, eval_sd)


def _row(budget, kind, names, effect, words, est: stats.Estimate, m: int) -> dict:
    return {"budget": budget, "kind": kind, "factors": names, "effect": effect, "words": words,
            "estimate": est.mean, "lo": est.lo, "hi": est.hi, "p": est.p, "n_seeds": est.n, "n_combos": m,
            "sd": est.sd, "eval_sd": est.eval_sd, "verdict": est.verdict}


def _cells(runs: pd.DataFrame, best: pd.DataFrame, keys: list) -> dict:
    """{budget: {factor values (repr): {"seeds": {seed: loss}, "eval_se"}}} of the best-lr cells."""
    narrow = runs[["cell_id", "seed", "state", "final_val_loss", *keys]]
    done = narrow[(narrow.state == "done") & narrow.final_val_loss.notna()]
    first = narrow.drop_duplicates("cell_id").set_index("cell_id")
    out: dict = {}
    for c in best.itertuples():
        key = tuple(repr(first.loc[c.cell_id, k]) for k in keys)
        seeds = done[done.cell_id == c.cell_id]
        out.setdefault(int(c.max_iters), {})[key] = {
            "seeds": dict(zip(seeds.seed.astype(int), seeds.final_val_loss.astype(float))),
            "eval_se": float(c.eval_se_val_loss) if pd.notna(c.eval_se_val_loss) else math.nan}
    return out


def effects(runs: pd.DataFrame, cells: pd.DataFrame, comp) -> pd.DataFrame:
    """Main effects and two-way interactions per budget: COLUMNS (empty with fewer than two factors)."""
    keys = factors(runs, comp) if comp is not None and len(runs) else []
    best = cells[cells.best_lr & (cells.n_done > 0)] if len(cells) else cells
    if len(keys) < 2 or not len(best):
        return pd.DataFrame(columns=COLUMNS)
    ref = references(runs, comp, keys)
    levels = {k: _levels(runs, k) for k in keys}
    rows = []
    for budget, table in sorted(_cells(runs, best, keys).items()):
        def cell(assign: dict):  # the cell with these factor values (the rest from `assign` too)
            return tuple(repr(assign[k]) for k in keys)

        others_of = lambda used: [k for k in keys if k not in used]  # noqa: E731
        for a in keys:
            for lv in levels[a]:
                if cmp.same(lv, ref[a]):
                    continue
                combos = _combos(table, keys, others_of([a]), levels)
                pairs = [(cell({**c, a: lv}), cell({**c, a: ref[a]})) for c in combos]
                pairs = [(x, y) for x, y in pairs if x in table and y in table]
                if not pairs:
                    continue
                m = len(pairs)
                coefs = {}
                for x, y in pairs:
                    coefs[x], coefs[y] = coefs.get(x, 0) + 1 / m, coefs.get(y, 0) - 1 / m
                est = _contrast(coefs, table)
                over = others_of([a])
                words = (f"{cmp.fmt(a, lv)} instead of {cmp.fmt(a, ref[a])}: final val loss {est.mean:+.4f}"
                         + (f" (averaged over {', '.join(over)})" if over and m > 1 else ""))
                rows.append(_row(budget, "main", a, f"{cmp.fmt(a, lv)} vs {cmp.fmt(a, ref[a])}", words, est, m))
        for by, a in itertools.combinations(keys, 2):  # `by`: the earlier factor (the baseline's keys first)
            for la, lb in itertools.product(levels[a], levels[by]):
                if cmp.same(la, ref[a]) or cmp.same(lb, ref[by]):
                    continue
                quads = []
                for c in _combos(table, keys, others_of([a, by]), levels):
                    q = [cell({**c, a: x, by: y}) for x, y in ((la, lb), (ref[a], lb), (la, ref[by]), (ref[a], ref[by]))]
                    if all(k in table for k in q):
                        quads.append(q)
                if not quads:
                    continue
                m = len(quads)
                coefs: dict = {}
                for q in quads:
                    for k, w in zip(q, (1, -1, -1, 1)):
                        coefs[k] = coefs.get(k, 0) + w / m
                est = _contrast(coefs, table)
                change = f"{cmp.fmt(a, la)} vs {cmp.fmt(a, ref[a])}"
                words = (f"{change} changes the loss by {est.mean:+.4f} more under {cmp.fmt(by, lb)} than under "
                         f"{cmp.fmt(by, ref[by])}")
                rows.append(_row(budget, "interaction", f"{a} x {by}", f"{change} × {cmp.fmt(by, lb)}", words, est, m))
    return pd.DataFrame(rows, columns=COLUMNS)


def _combos(table: dict, keys: list, others: list, levels: dict) -> list:
    """The assignments of the `others` factors (as dicts) that appear among the cells."""
    if not others:
        return [{}]
    idx = [keys.index(k) for k in others]
    by_repr = {k: {repr(v): v for v in levels[k]} for k in others}
    seen = dict.fromkeys(tuple(key[i] for i in idx) for key in table)
    return [{k: by_repr[k][r] for k, r in zip(others, combo)} for combo in seen]
