"""Memory, size, throughput, knobs, lr sweep and status tables: one row per (mgroup, variant).

Memory, size and throughput do not depend on the lr, the budget or the seed, so they are
reported per shape: the group without max_iters and lr (mgroup) x the variant. Measured values
come from summary.json (metrics.jsonl's peak for a job still running); the plan's estimate
(`plan_estimates`, or plan.estimate on the run's own config) stands beside them, and fills in
the size of a cell that has no summary (marked "estimate"). Memory by category (mem_*) is the
run's tracked step where it ran one (source "tracked"), else the plan's simulation of its shape
(source "simulated", from `ablate plan --memory`'s cache). Byte columns stay in bytes here;
render.py turns them into GiB / MiB.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from ablate.core import estimate
from ablate.core.config import ADDED_DEFAULTS, MEMORY_KNOBS, make_config
from ablate.core.errors import AblateError
from ablate.plan.plan import memory_unit as plan_memory_unit

GIB = 2 ** 30
KEY = ["mgroup", "variant"]
PROBLEM = ("failed", "diverged", "oom", "cancelled")


def memory_unit(mem: pd.DataFrame) -> tuple[str, int]:
    """The plan's unit for these byte columns: GiB, or MiB when every number is under 1 GiB."""
    values = pd.concat([mem.get(c, pd.Series(dtype=float)) for c in ("peak_alloc", "est_total", "mem_total")])
    return plan_memory_unit(pd.to_numeric(values, errors="coerce").dropna().tolist() or [GIB])


def _config(config_json):
    try:
        return make_config(json.loads(config_json))
    except (AblateError, TypeError, ValueError, AttributeError):
        return None  # a config from another ablate version: no estimate rather than a crash


def _plan(g: pd.DataFrame, plan_estimates: dict | None, world_size: float = 1) -> tuple[dict, dict]:
    """(memory breakdown, param counts) for a shape's runs: the plan's estimate for any of them,
    else plan.estimate on the first run's own config (per process of world_size)."""
    cfg = _config(g.config_json.iloc[0] or "null")
    mem = next((plan_estimates[r] for r in g.run_id if r in (plan_estimates or {})), None)
    try:
        if mem is None and cfg is not None:
            mem = estimate.memory_breakdown(cfg, 1 if pd.isna(world_size) else int(world_size))
        counts = estimate.param_counts(cfg) if cfg is not None else {}
        counts["ckpt_bytes"] = estimate.checkpoint_bytes(cfg) if cfg is not None else None
    except (TypeError, KeyError, estimate.NoFormula):  # a plugin cell: only the plan's simulation, and its run
        counts = {}
    return mem or {}, counts


def _first(s: pd.Series):
    s = s.dropna()
    return s.iloc[0] if len(s) else None


def _max(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.max()) if len(s) else math.nan


def _mean(s: pd.Series) -> float:
    s = pd.to_numeric(s, errors="coerce").dropna()
    return float(s.mean()) if len(s) else math.nan


def _per_shape(runs: pd.DataFrame, fn) -> pd.DataFrame:
    rows = []
    runs = runs.sort_values(["morder", "vorder"], kind="stable")
    for (mgroup, variant), g in runs.groupby(KEY, sort=False):
        rows.append({"mgroup": mgroup, "variant": variant, "is_baseline": bool(g.is_baseline.all()),
                     "states": ",".join(sorted(set(g.state))), **fn(g)})
    return pd.DataFrame(rows)


def _vs_baseline(df: pd.DataFrame, col: str, out: str) -> pd.DataFrame:
    """Add out (difference) and out_pct vs the baseline row of the same mgroup."""
    df[out], df[f"{out}_pct"] = math.nan, math.nan
    for mgroup, g in df.groupby("mgroup", sort=False):
        base = g[g.is_baseline][col].dropna()
        if len(base):
            b = float(base.iloc[0])
            df.loc[g.index, out] = g[col] - b
            df.loc[g.index, f"{out}_pct"] = 100.0 * (g[col] - b) / b if b else math.nan
    return df


# memory categories as the report shows them <- memtrack's categories (summary tracked_*, plan cache)
MEM_PARTS = {"params": ("params", "buffers"), "grads": ("grads",), "optimizer": ("optimizer",),
             "activations": ("activations",), "temps": ("temps", "other")}
EST_PARTS = ("params", "grads", "optimizer", "activations", "temps")


def _by_category(g: pd.DataFrame, simulated: dict | None) -> dict:
    """mem_<part> bytes and mem_source: the tracked step of a run of this shape (the largest, if
    seeds differ), else the plan's simulation of any of its run ids, else nothing."""
    tracked = g[pd.to_numeric(g.get("tracked_total", pd.Series(dtype=float)), errors="coerce").notna()] \
        if "tracked_total" in g else g.iloc[:0]
    if len(tracked):
        r = tracked.loc[pd.to_numeric(tracked.tracked_total).idxmax()]
        found, source = {c: r.get(f"tracked_{c}") for c in (*sum(MEM_PARTS.values(), ()), "total")}, "tracked"
    else:
        found = next((simulated[r] for r in g.run_id if "total" in (simulated or {}).get(r, {})), None)
        source = "simulated" if found else None
    if not found:
        return {"mem_source": None, "mem_total": math.nan, **{f"mem_{p}": math.nan for p in MEM_PARTS}}
    num = lambda v: float(v) if v is not None and not pd.isna(v) else 0.0  # noqa: E731
    return {"mem_source": source, "mem_total": num(found.get("total")),
            **{f"mem_{p}": sum(num(found.get(c)) for c in cats) for p, cats in MEM_PARTS.items()}}


def memory(runs: pd.DataFrame, plan_estimates: dict | None = None, simulated: dict | None = None,
           world_size: int | None = None) -> pd.DataFrame:
    """simulated: {run_id: memtrack breakdown} for shapes that have not run (the plan's cache).
    Every figure is per process (per GPU: rank 0's); strategy and world_size say over how many
    processes the cell trains (measured in summary.json, else the grid's: world_size)."""
    def fn(g):
        live = g[~g.state.isin(PROBLEM)]
        world = _max(g.world_size) if "world_size" in g else math.nan
        world = world_size if math.isnan(world) and world_size else world
        mem, _ = _plan(g, plan_estimates, world)
        peak = _max(live.peak_alloc)
        if math.isnan(peak):  # no summary yet: the peak a running job has logged so far
            peak = _max(live.max_mem_peak)
        return {"strategy": (_first(g.strategy) if "strategy" in g else None) or "ddp",  # before fsdp: ddp
                "world_size": world,
                "oom": bool((g.state == "oom").any()), "peak_alloc": peak, "peak_reserved": _max(live.peak_reserved),
                "oom_peak_alloc": _max(g.oom_peak_alloc), "device_capacity": _max(g.device_capacity),
                "device_name": _first(g.device_name), **_by_category(live, simulated),
                "plugins": _first(g.plugins) if "plugins" in g else None,  # its estimate is a simulation
                **{f"est_{k}": mem.get(k, math.nan) for k in ("total", *EST_PARTS)}}
    if not len(runs):
        return pd.DataFrame()
    df = _vs_baseline(_per_shape(runs, fn), "peak_alloc", "delta_alloc")
    return _vs_baseline(df, "mem_total", "delta_mem")


def _without_knobs(config_json) -> str | None:
    """A shape's identity with the memory knobs at their defaults (lr and budget do not matter)."""
    try:
        config = json.loads(config_json or "null")
    except (TypeError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    config.update({k: ADDED_DEFAULTS[k] for k in MEMORY_KNOBS})
    for k in ("lr", "min_lr", "max_iters", "lr_decay_iters", "warmup_iters", "seed"):
        config.pop(k, None)
    return json.dumps(config, sort_keys=True, default=str)


def knobs(runs: pd.DataFrame, mem: pd.DataFrame, th: pd.DataFrame) -> pd.DataFrame:
    """Each shape that sets a memory knob beside the same shape without it: the memory saved (%,
    tracked or simulated peak) and the step-time cost (% more time per token, from tokens/s)."""
    if not len(runs) or not len(mem) or not any(k in runs for k in MEMORY_KNOBS):
        return pd.DataFrame()
    shape = runs.sort_values(["morder", "vorder"], kind="stable").drop_duplicates(KEY)
    key = dict(zip(zip(shape.mgroup, shape.variant), map(_without_knobs, shape.config_json)))
    knobbed = {kv for kv, r in zip(zip(shape.mgroup, shape.variant), shape.to_dict("records"))
               if any(r.get(k) not in (None, ADDED_DEFAULTS[k]) for k in MEMORY_KNOBS)}
    plain = {key[kv]: kv for kv in key if kv not in knobbed}
    m = mem.set_index(KEY)
    t = th.set_index(KEY) if len(th) else None
    rows = []
    for kv in key:
        base = plain.get(key[kv])
        if kv not in knobbed or base is None:
            continue
        peak, base_peak = m.loc[kv, "mem_total"], m.loc[base, "mem_total"]
        tps = t.loc[kv, "tokens_per_s"] if t is not None and kv in t.index else math.nan
        base_tps = t.loc[base, "tokens_per_s"] if t is not None and base in t.index else math.nan
        rows.append({"mgroup": kv[0], "variant": kv[1], "without": base[1], "source": m.loc[kv, "mem_source"],
                     "peak": peak, "peak_without": base_peak, "saving_pct": 100.0 * (1 - peak / base_peak)
                     if base_peak else math.nan, "tokens_per_s": tps, "tokens_per_s_without": base_tps,
                     "step_cost_pct": 100.0 * (base_tps / tps - 1) if tps else math.nan})
    return pd.DataFrame(rows)


def size(runs: pd.DataFrame) -> pd.DataFrame:
    def fn(g):
        _, est = _plan(g, None)
        measured = g.params_total.notna().any()
        pick = (lambda col, key: _first(g[col]) if g[col].notna().any() else est.get(key))
        return {"source": "measured" if measured else "estimate",
                "params_total": pick("params_total", "total"),
                "params_non_embedding": pick("params_non_embedding", "non_embedding"),
                "params_attention": pick("params_attention", "attention"),
                "ckpt_bytes": pick("ckpt_bytes", "ckpt_bytes")}
    if not len(runs):
        return pd.DataFrame()
    df = _per_shape(runs, fn)
    for c in ("params_total", "params_non_embedding", "params_attention", "ckpt_bytes"):
        df[c] = pd.to_numeric(df[c], errors="coerce")
    df = _vs_baseline(df, "params_total", "delta_params")
    return _vs_baseline(df, "ckpt_bytes", "delta_ckpt")


def throughput(runs: pd.DataFrame) -> pd.DataFrame:
    def fn(g):
        done = g[g.state == "done"]
        tps = done.tokens_per_s if len(done) else g.tokens_per_s  # still running: its figure so far
        return {"tokens_per_s": _mean(tps), "mfu_causal": _mean(done.mfu_causal),
                "mfu_nanogpt": _mean(done.mfu_nanogpt), "device_name": _first(g.device_name),
                "n_done": len(done)}
    if not len(runs):
        return pd.DataFrame()
    return _vs_baseline(_per_shape(runs, fn), "tokens_per_s", "delta_tokens_per_s")


def lr_sweep(cells: pd.DataFrame) -> pd.DataFrame:
    """Final val loss per cell for the lr chart: only (mgroup, variant, budget) with several lrs."""
    if not len(cells):
        return pd.DataFrame()
    n_lr = cells.groupby(["mgroup", "variant", "max_iters"])["lr"].transform("nunique")
    cols = ["mgroup", "variant", "max_iters", "lr", "mean_val_loss", "se_val_loss", "eval_se_val_loss", "n_done",
            "n_runs", "states", "best_lr", "lr_edge"]
    out = cells[n_lr > 1].sort_values(["morder", "vorder", "max_iters", "lr"])
    return out[cols].reset_index(drop=True)


def _last_line(text) -> str:
    if not isinstance(text, str):
        return ""  # None or NaN
    lines = text.strip().splitlines()
    return lines[-1][:200] if lines else ""


def status(runs: pd.DataFrame, plan_estimates: dict | None = None) -> dict:
    """Counts per state, the runs that went wrong (with their error's last line) and the
    planned runs that have no run dir yet."""
    counts = runs.state.value_counts().to_dict() if len(runs) else {}
    bad = runs[runs.state.isin(PROBLEM)] if len(runs) else runs
    problems = [{"run_id": r["run_id"], "state": r["state"], "group": r.get("group"), "variant": r.get("variant"),
                 "lr": r.get("lr"), "seed": r.get("seed"),
                 "error": _last_line(r.get("error"))}
                for r in bad.to_dict("records")]
    have = set(runs.run_id) if len(runs) else set()
    missing = sorted(set(plan_estimates or {}) - have)
    return {"counts": counts, "problems": problems, "missing": missing, "n_runs": len(runs)}
