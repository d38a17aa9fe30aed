"""Seed statistics: intervals, p-values and seed counts for differences measured over seeds.

The model behind every number (README "Statistics"). A cell's final val loss for seed s is

    y_s = mu + u_s + w

u_s: what the seed changes (init draws, data order), independent from seed to seed; w: the eval
sample's error. Every seed of a grid is scored on the same fixed val windows, so w is one draw
shared by all the seeds of a cell: averaging seeds never removes it. evals.jsonl records its
standard error (se). For two cells paired by seed, d_s = y_v,s - y_b,s, and

    mean(d) - (mu_v - mu_b)  has variance  sd^2 / n + eval_sd^2,   eval_sd^2 = se_v^2 + se_b^2

sd: the seed-to-seed s.d. of d, estimated from the n seeds (n - 1 degrees of freedom); eval_sd
is taken as known (from the eval's batches) and errs on the safe side: cells scored on the same
windows have correlated eval errors, so the error of their difference is smaller than that.
The interval is Student-t with the Welch-Satterthwaite degrees of freedom of that sum of
variances; with one seed only the eval part is known, and the interval is normal.

Seed counts (the planner) come from the same model: the power of that t test at n seeds is the
noncentral t's, and the eval part sets a floor no number of seeds goes below.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as st

LEVEL = 0.95
ALPHA = 1 - LEVEL
SIGNIFICANT = "significant at 95%"
NOT_SIGNIFICANT = "not significant"
ONE_SEED = "one seed: eval noise only"
NO_SEEDS = "no paired seeds"
N_MAX = 100_000  # the planner's search ends here: more seeds than this is "not with seeds"


@dataclass(frozen=True)
class Estimate:
    """The mean of per-seed values (differences, log speedups, contrasts) with its interval."""
    mean: float
    lo: float
    hi: float
    p: float          # two-sided, against 0
    n: int            # seeds
    sd: float         # seed-to-seed s.d. of the values (nan with fewer than two)
    eval_sd: float    # the eval sample's s.d. of the mean, folded in
    df: float         # degrees of freedom of the t (inf: normal)

    @property
    def verdict(self) -> str:
        if self.n == 0:
            return NO_SEEDS
        if self.n == 1:
            return ONE_SEED
        return SIGNIFICANT if self.p < ALPHA else NOT_SIGNIFICANT

    def scaled(self, f) -> tuple[float, float, float]:
        """(mean, lo, hi) through an increasing function (exp for a log speedup)."""
        return f(self.mean), f(self.lo), f(self.hi)


def _finite(x) -> float:
    return float(x) if x is not None and np.isfinite(x) else 0.0


def satterthwaite(seed_var: float, eval_var: float, n: int) -> float:
    """Degrees of freedom of seed_var (estimated from n seeds) + eval_var (known). Two seeds keep
    their one degree of freedom: a variance from two values is too unsure for the approximation
    (simulated, it covered 91% instead of 95%; with 1 it errs wide)."""
    if n < 2 or seed_var <= 0:
        return math.inf
    if n == 2:
        return 1.0
    return (seed_var + eval_var) ** 2 / (seed_var ** 2 / (n - 1))


def quantile(q: float, df: float) -> float:
    return float(st.norm.ppf(q) if math.isinf(df) else st.t.ppf(q, df))


def mean_interval(values, eval_sd: float = 0.0, level: float = LEVEL) -> Estimate:
    """Mean of per-seed values, its `level` interval and two-sided p-value against 0, the eval
    sample's s.d. (of the mean, shared by the seeds) folded in. nan values are left out."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    e = _finite(eval_sd)
    n = len(v)
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, math.nan, 0, math.nan, e, math.nan)
    mean = float(v.mean())
    sd = float(v.std(ddof=1)) if n > 1 else math.nan
    seed_var = sd ** 2 / n if n > 1 else 0.0
    var = seed_var + e ** 2
    df = satterthwaite(seed_var, e ** 2, n)
    if var == 0:  # no spread and no eval noise (a synthetic grid): exact
        p = (0.0 if mean != 0 else 1.0) if n > 1 else math.nan
        return Estimate(mean, mean, mean, p, n, sd, e, df)
    se = math.sqrt(var)
    q = quantile(0.5 + level / 2, df)
    tail = st.norm.sf(abs(mean) / se) if math.isinf(df) else st.t.sf(abs(mean) / se, df)
    return Estimate(mean, mean - q * se, mean + q * se, float(2 * tail), n, sd, e, df)


def power(n: int, delta: float, sd: float, eval_sd: float = 0.0, alpha: float = ALPHA) -> float:
    """Probability that mean_interval over n seeds calls a true mean `delta` significant at
    `alpha` (the noncentral t with the Satterthwaite degrees of freedom)."""
    seed_var, e2 = sd ** 2 / n, _finite(eval_sd) ** 2
    var = seed_var + e2
    if var == 0:
        return 1.0 if delta else alpha
    df = satterthwaite(seed_var, e2, n)
    ncp = abs(delta) / math.sqrt(var)
    crit = quantile(1 - alpha / 2, df)
    if math.isinf(df):
        return float(st.norm.sf(crit - ncp) + st.norm.cdf(-crit - ncp))
    return float(st.nct.sf(crit, df, ncp) + st.nct.cdf(-crit, df, ncp))


def seeds_needed(delta: float, sd: float, eval_sd: float = 0.0, alpha: float = ALPHA, target: float = 0.8,
                 n_max: int = N_MAX) -> int | None:
    """The fewest seeds (>= 2) whose paired t test detects a true mean `delta` with probability
    >= target; None when even n_max seeds do not (the eval noise alone hides delta: more eval
    windows, not more seeds)."""
    if not (delta and math.isfinite(delta) and math.isfinite(sd)):
        return None
    if power(n_max, delta, sd, eval_sd, alpha) < target:
        return None
    lo, hi = 1, 2  # power(lo) < target <= power(hi), power rising with n
    while power(hi, delta, sd, eval_sd, alpha) < target:
        lo, hi = hi, min(2 * hi, n_max)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if power(mid, delta, sd, eval_sd, alpha) >= target else (mid, hi)
    return max(hi, 2)


def seeds_closed_form(delta: float, sd: float, eval_sd: float = 0.0, alpha: float = ALPHA,
                      target: float = 0.8) -> float:
    """The normal approximation: n = sd^2 / (delta^2 / (z_{1-alpha/2} + z_target)^2 - eval_sd^2)
    (inf when the eval noise alone hides delta). A t test needs about z_{1-alpha/2}^2 / 2 more
    (Guenther 1981): seeds_needed is that exact count."""
    z = st.norm.ppf(1 - alpha / 2) + st.norm.ppf(target)
    room = delta ** 2 / z ** 2 - _finite(eval_sd) ** 2
    return float(sd ** 2 / room) if room > 0 else math.inf


def t_correction(alpha: float = ALPHA) -> float:
    """Guenther's additive correction from the normal approximation to the t test's seed count."""
    return float(st.norm.ppf(1 - alpha / 2) ** 2 / 2)


def sd_upper(sd: float, n: int, confidence: float = 0.8) -> float:
    """An upper `confidence` bound on a s.d. estimated from n values (chi-square): a pilot of three
    seeds knows its s.d. only within a factor of about two."""
    if n < 2 or not math.isfinite(sd):
        return math.nan
    return float(sd * math.sqrt((n - 1) / st.chi2.ppf(1 - confidence, n - 1)))
