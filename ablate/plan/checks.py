"""What a grid says vs what it means: checks and warnings that need the resolved cells.

    check_splits    context against the prepared data's train / val splits (when prepared)
    disguises       warnings: window >= context, warmup past the budget, cells that train the
                    same model under two run ids
    check_baseline  an explicit compare.baseline must match a cell (the error lists the values)
    origin          the line of the value a cell got for a key, for an error that points at it
"""
from __future__ import annotations

from ablate.core.config import RunConfig, derive
from ablate.core.errors import AblateError, value_text
from ablate.plan.yamlload import line_of

RESOLVED_NULL = {"n_kv_head": "n_head", "share_attn": "n_layer", "lr_decay_iters": "max_iters"}  # null = that key


def check_splits(cfg: RunConfig, meta: dict | None) -> None:
    """A batch is context+1 tokens at a random offset: each split of the prepared data (when it is
    prepared: else the trainer checks) must hold context+2 tokens."""
    if not meta:
        return
    for split in ("train", "val"):
        have = meta.get(f"{split}_tokens")
        if isinstance(have, int) and have < cfg.context + 2:
            raise AblateError(f"key 'context': {cfg.context} needs context+2 = {cfg.context + 2:,} tokens in each "
                              f"split, but the prepared {split} split of {cfg.dataset} ({cfg.tokenizer}) has {have:,}")


def disguises(path, cells: list) -> list[str]:
    """Warnings for cells that are another cell in disguise, or that cannot mean what they say:
    window >= context is full causal attention; warmup_iters >= max_iters never reaches the peak
    lr (and then lr_decay_iters and min_lr change nothing). One line per distinct case."""
    out, twins = {}, {}
    for rid, c, _ in cells:
        full = c.window is not None and c.window >= c.context
        if full:
            out.setdefault(("window", c.window, c.context),
                           f"{path}: window {c.window} >= context {c.context} is full causal attention "
                           "(the same computation as window: null)")
        if c.warmup_iters > c.max_iters:
            out.setdefault(("warmup", c.warmup_iters, c.max_iters),
                           f"{path}: warmup_iters {c.warmup_iters} > max_iters {c.max_iters}: the lr never "
                           "reaches its peak")
        if full or c.warmup_iters >= c.max_iters:  # what it computes has another run id: its canonical one
            canonical = derive(c, **({"window": None} if full else {}), **(
                {"lr_decay_iters": c.max_iters, "min_lr": 0.0} if c.warmup_iters >= c.max_iters else {})).run_id()
            twins.setdefault(canonical, []).append(rid)
    ids = {rid for rid, _, _ in cells}
    for canonical, rids in twins.items():
        same = [canonical] * (canonical in ids and canonical not in rids) + rids
        if len(same) > 1:
            out[canonical] = (f"{path}: cells {', '.join(same)} train the same model (they differ only in "
                              "a window >= context, or in lr_decay_iters / min_lr that a warmup past max_iters "
                              "never reaches): all but one are wasted compute")
    return list(out.values())


def check_baseline(ctx, raw_compare, baseline: dict, resolved: list[dict]) -> None:
    """A compare.baseline written in the grid must match some cell: name the values that exist."""
    def match(r, k, v):
        if v is None and k in RESOLVED_NULL:  # null: the resolved default, as the report reads it
            v = r.get(RESOLVED_NULL[k])
        return value_text(r.get(k)) == value_text(v) or num_eq(r.get(k), str(v))

    if any(all(match(r, k, v) for k, v in baseline.items()) for r in resolved):
        return
    hints = "; ".join(f"values of {k} are {values_text(resolved, k)}" for k in baseline)
    raise ctx.error(f"compare.baseline {baseline} matches no cell; {hints}", "baseline", raw_compare, True)


def values_text(rows, key: str, limit: int = 12) -> str:
    """The distinct values of key among rows (dicts or cells), in order, as text."""
    vals = list(dict.fromkeys(value_text(r.get(key)) if isinstance(r, dict) else value_text(r) for r in rows))
    return ", ".join(vals[:limit]) + (f", ... ({len(vals)} values)" if len(vals) > limit else "")


def origin(doc, base, arch_defaults, ex: dict, include, key: str):
    """The line of the value of `key` that a cell got (an axis item, a zip item, an include, the
    seeds, arch_defaults or base): an error points at the value that is wrong, not at the first
    key of that name in the file. Looked up only when there is an error."""
    if key in ex:
        if key == "seed" and isinstance(doc.get("seeds"), list) and "seed" not in (include or {}):
            seeds = doc["seeds"]
            return line_of(seeds, next((i for i, s in enumerate(seeds) if s == ex["seed"]), None))
        if include is not None:
            return line_of(include, key)
        value = ex[key]
        containers = [doc.get("grid") or {}] + [z for z in (doc.get("zip") if isinstance(doc.get("zip"), list)
                                                          else [doc.get("zip") or {}]) if isinstance(z, dict)]
        for c in containers:
            if key in c:
                items = c[key]
                i = next((i for i, v in enumerate(items) if v is value or (type(v) is type(value) and v == value)),
                         None)
                return line_of(items, i) or line_of(c, key)
    arch = ex.get("arch", base.get("arch", "gpt"))
    data = doc.get("data") if isinstance(doc.get("data"), dict) else {}
    for m in ((arch_defaults.get(arch) if isinstance(arch, str) else None) or {}, doc.get("base") or {}, data):
        if isinstance(m, dict) and key in m:
            return line_of(m, key)
    named = next((k for k in ("shards", "corpus", "train") if k in data), None)  # a data set named by its keys
    return line_of(data, named) if key == "dataset" and named else None


def num_eq(actual, text) -> bool:
    try:
        return isinstance(actual, (int, float)) and not isinstance(actual, bool) and float(text) == float(actual)
    except ValueError:
        return False
