"""Three speedups side by side: what a variant buys in steps, in wall clock and in memory.

- steps (compute-equivalent): paired.py's speedup, seed-paired, with its interval;
- wall clock (throughput-adjusted): the steps speedup x the variant's training tokens/s over the
  baseline's (tables.throughput: median after warm-up, mean over finished runs of the shape), so
  a trick that saves steps but slows each one down shows it; the interval is the steps interval
  scaled by that ratio (the throughput's own run-to-run noise is not in it);
- memory: the baseline's peak / the variant's (tensors at the peak of a training step, tracked
  or simulated, else the CUDA allocator's peak): above 1x the variant needs less.

One row per paired row, and a verdict in words naming what wins and what loses.
"""
from __future__ import annotations

import math

import pandas as pd

from ablate.report import stats

COLUMNS = ["group", "variant", "budget", "steps", "steps_lo", "steps_hi", "steps_verdict", "throughput_ratio",
           "wall", "wall_lo", "wall_hi", "memory", "memory_source", "verdict"]


def _per_shape(df: pd.DataFrame, value) -> dict:
    """{(mgroup, variant): value(row)} and {(mgroup): value of its baseline}."""
    if not len(df):
        return {}, {}
    mine = {(r.mgroup, r.variant): value(r) for r in df.itertuples()}
    base = {r.mgroup: value(r) for r in df.itertuples() if r.is_baseline}
    return mine, base


def _peak(r) -> tuple[float, str]:
    if pd.notna(r.mem_total):
        return float(r.mem_total), str(r.mem_source)
    return (float(r.peak_alloc), "CUDA allocator") if pd.notna(r.peak_alloc) else (math.nan, "")


def _words(steps: float, verdict: str, wall: float, memory: float) -> str:
    def side(name, x, caveat=""):
        if not math.isfinite(x):
            return f"{name} unknown"
        if abs(x - 1) < 0.005:
            return f"even in {name}"
        return f"{'wins' if x > 1 else 'loses'} in {name} ({x:.2f}x)" + caveat
    caveat = "" if verdict.startswith(stats.SIGNIFICANT) else ", one seed" if verdict == stats.ONE_SEED else \
        ", not significant"
    return "; ".join([side("steps", steps, caveat), side("wall clock", wall), side("memory", memory)])


def three_speedups(paired: pd.DataFrame, runs: pd.DataFrame, throughput: pd.DataFrame,
                   memory: pd.DataFrame) -> pd.DataFrame:
    if not len(paired):
        return pd.DataFrame(columns=COLUMNS)
    mgroup = dict(zip(runs.group, runs.mgroup))
    tps, tps_base = _per_shape(throughput, lambda r: float(r.tokens_per_s) if pd.notna(r.tokens_per_s) else math.nan)
    peak, peak_base = _per_shape(memory, _peak)
    rows = []
    for r in paired.itertuples():
        m = mgroup.get(r.group)
        ratio = tps.get((m, r.variant), math.nan) / tps_base.get(m, math.nan)
        mine, source = peak.get((m, r.variant), (math.nan, ""))
        base = peak_base.get(m, (math.nan, ""))[0]
        mem = base / mine if mine and math.isfinite(mine) and math.isfinite(base) else math.nan
        wall = [x * ratio for x in (r.speedup, r.speedup_lo, r.speedup_hi)]
        rows.append({"group": r.group, "variant": r.variant, "budget": r.budget, "steps": r.speedup,
                     "steps_lo": r.speedup_lo, "steps_hi": r.speedup_hi, "steps_verdict": r.speedup_verdict,
                     "throughput_ratio": ratio, "wall": wall[0], "wall_lo": wall[1], "wall_hi": wall[2],
                     "memory": mem, "memory_source": source,
                     "verdict": _words(r.speedup, r.speedup_verdict, wall[0], mem)})
    return pd.DataFrame(rows, columns=COLUMNS)
