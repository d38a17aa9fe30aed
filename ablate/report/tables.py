"""Memory, size, throughput, lr sweep and status tables: one row per (mgroup, variant).

Memory, size and throughput do not depend on the lr, the budget or the seed, so they are
reported per shape: the group without max_iters and lr (mgroup) x the variant. Measured values
come from summary.json (metrics.jsonl's peak for a job still running); the plan's estimate
(`plan_estimates`, or plan.estimate on the run's own config) stands beside them, and fills in
the size of a cell that has no summary (marked "estimate"). Byte columns stay in bytes here;
render.py turns them into GiB / MiB.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from ablate.errors import AblateError
from ablate.plan import estimate
from ablate.plan.config import make_config

GIB = 2 ** 30
KEY = ["mgroup", "variant"]
PROBLEM = ("failed", "diverged", "oom", "cancelled")


def memory_unit(mem: pd.DataFrame) -> tuple[str, int]:
    """GiB, or MiB when every number is under half a GiB (a small CPU model)."""
    values = pd.concat([mem.get("peak_alloc", pd.Series(dtype=float)), mem.get("est_total", pd.Series(dtype=float))])
    values = pd.to_numeric(values, errors="coerce").dropna()
    return ("MiB", 2 ** 20) if len(values) and values.max() < GIB / 2 else ("GiB", GIB)


def _config(config_json):
    try:
        return make_config(json.loads(config_json))
    except (AblateError, TypeError, ValueError, AttributeError):
        return None  # a config from another ablate version: no estimate rather than a crash


def _plan(g: pd.DataFrame, plan_estimates: dict | None) -> tuple[dict, dict]:
    """(memory breakdown, param counts) for a shape's runs: the plan's estimate for any of them,
    else plan.estimate on the first run's own config."""
    cfg = _config(g.config_json.iloc[0] or "null")
    mem = next((plan_estimates[r] for r in g.run_id if r in (plan_estimates or {})), None)
    try:
        if mem is None and cfg is not None:
            mem = estimate.memory_breakdown(cfg)
        counts = estimate.param_counts(cfg) if cfg is not None else {}
        counts["ckpt_bytes"] = estimate.checkpoint_bytes(cfg) if cfg is not None else None
    except (TypeError, KeyError):
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


def memory(runs: pd.DataFrame, plan_estimates: dict | None = None) -> pd.DataFrame:
    def fn(g):
        live = g[~g.state.isin(PROBLEM)]
        mem, _ = _plan(g, plan_estimates)
        peak = _max(live.peak_alloc)
        if math.isnan(peak):  # no summary yet: the peak a running job has logged so far
            peak = _max(live.max_mem_peak)
        return {"oom": bool((g.state == "oom").any()), "peak_alloc": peak, "peak_reserved": _max(live.peak_reserved),
                "oom_peak_alloc": _max(g.oom_peak_alloc), "device_capacity": _max(g.device_capacity),
                "device_name": _first(g.device_name),
                **{f"est_{k}": mem.get(k, math.nan) for k in
                   ("total", "params", "grads", "optimizer", "activations", "logits")}}
    if not len(runs):
        return pd.DataFrame()
    return _vs_baseline(_per_shape(runs, fn), "peak_alloc", "delta_alloc")


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
        tps = done.tokens_per_s.where(done.tokens_per_s.notna(), done.median_tokens_per_s)
        if not len(done):  # still running: the metrics so far
            tps = g.median_tokens_per_s
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
