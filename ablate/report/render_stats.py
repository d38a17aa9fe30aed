"""The statistics' tables as people read them: paired differences, three speedups, effects and
interactions, loss-vs-budget fits and the speedup they imply (numbers with their 95% intervals)."""
from __future__ import annotations

import math

import pandas as pd

from ablate.report.render import num
from ablate.report.scaling import EXTRAPOLATE


def interval(mean, lo, hi, spec: str = "+.4f", suffix: str = "") -> str:
    """'+0.0123 [+0.0050, +0.0196]'; the mean alone when no interval is known."""
    m = num(mean, spec)
    if m == "–":
        return "–"
    if isinstance(mean, float) and math.isinf(mean):
        m, suffix_m = "unbounded", ""
    else:
        suffix_m = suffix
    if num(lo) == "–" or num(hi) == "–":
        return m + suffix_m
    top = "∞" if isinstance(hi, float) and math.isinf(hi) else num(hi, spec) + suffix
    return f"{m}{suffix_m} [{num(lo, spec)}{suffix}, {top}]"


def p_value(p) -> str:
    if num(p) == "–":
        return "–"
    return "< 0.001" if p < 0.001 else f"{p:.3f}"


def paired_table(pr: pd.DataFrame) -> pd.DataFrame:
    def loss(r):
        if r.n_pairs == 1:
            return f"{num(r.loss_diff, '+.4f')} (eval noise ±{num(2 * r.loss_eval_sd, '.4f')})"
        return interval(r.loss_diff, r.loss_lo, r.loss_hi)

    def speed(r):
        return r.speedup_bound or interval(r.speedup, r.speedup_lo, r.speedup_hi, ".2f", "x")
    return pd.DataFrame({
        "group": pr.group, "variant": pr.variant, "budget": pr.budget,
        "seeds paired": [f"{n} ({s})" if s else "0" for n, s in zip(pr.n_pairs, pr.paired_seeds)],
        "Δ val loss vs baseline [95%]": [loss(r) for r in pr.itertuples()],
        "p (loss)": [p_value(p) for p in pr.loss_p], "loss verdict": pr.loss_verdict,
        "speedup [95%]": [speed(r) for r in pr.itertuples()],
        "mode": pr.speedup_mode, "p (speedup)": [p_value(p) for p in pr.speedup_p],
        "speedup verdict": pr.speedup_verdict,
        "seed s.d. (loss)": [num(x, ".4f") for x in pr.loss_sd],
        "unpaired": pr.unpaired.replace("", "–"), "note": pr.note})


def tradeoffs_table(tr: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "group": tr.group, "variant": tr.variant, "budget": tr.budget,
        "steps [95%]": [interval(m, lo, hi, ".2f", "x") for m, lo, hi in zip(tr.steps, tr.steps_lo, tr.steps_hi)],
        "tokens/s vs baseline": [num(x, ".2f") + "x" if num(x) != "–" else "–" for x in tr.throughput_ratio],
        "wall clock [95%]": [interval(m, lo, hi, ".2f", "x") for m, lo, hi in zip(tr.wall, tr.wall_lo, tr.wall_hi)],
        "memory (baseline peak / variant's)": [num(x, ".2f") + "x" if num(x) != "–" else "–" for x in tr.memory],
        "memory from": tr.memory_source.replace("", "–"), "verdict": tr.verdict})


def effects_table(ef: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "budget": ef.budget, "kind": ef.kind, "effect": ef.effect, "in words": ef.words,
        "Δ val loss [95%]": [interval(m, lo, hi) for m, lo, hi in zip(ef.estimate, ef.lo, ef.hi)],
        "p": [p_value(p) for p in ef.p], "seeds": ef.n_seeds, "combinations": ef.n_combos, "verdict": ef.verdict})


def fits_table(fits: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame({
        "group": fits.group, "variant": fits.variant, "budgets": fits.budgets, "points": fits.n_points,
        "E [95%]": [interval(m, lo, hi, ".3f") for m, lo, hi in zip(fits.E, fits.E_lo, fits.E_hi)],
        "A [95%]": [interval(m, lo, hi, ".3g") for m, lo, hi in zip(fits.A, fits.A_lo, fits.A_hi)],
        "alpha [95%]": [interval(m, lo, hi, ".3f") for m, lo, hi in zip(fits.alpha, fits.alpha_lo, fits.alpha_hi)],
        "R²": [num(x, ".4f") for x in fits.r2], "lack of fit p": [p_value(p) for p in fits.lof_p],
        "interval scale": [num(x, ".2f") for x in fits.scale], "fit": fits.status})


def scaling_table(curve: pd.DataFrame) -> pd.DataFrame:
    """S(t) at the budgets both arms measured and at EXTRAPOLATE x the largest."""
    if not len(curve):
        return curve
    last = curve.groupby(["group", "variant"]).budget.transform("max")
    rows = curve[curve.measured | (curve.budget == last)]
    return pd.DataFrame({
        "group": rows.group, "variant": rows.variant, "budget": [f"{b:,.0f}" for b in rows.budget],
        "": ["measured" if m else f"{EXTRAPOLATE:g}x the largest" for m in rows.measured],
        "fitted loss [95%]": [interval(m, lo, hi, ".4f") for m, lo, hi in zip(rows.loss_fit, rows.loss_lo, rows.loss_hi)],
        "baseline's fitted loss": [num(x, ".4f") for x in rows.baseline_loss_fit],
        "speedup S(t) [95%]": [interval(m, lo, hi, ".2f", "x") for m, lo, hi in
                               zip(rows.speedup, rows.speedup_lo, rows.speedup_hi)],
        "status": rows.status})
