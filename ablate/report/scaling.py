"""Loss vs budget, fitted, and the speedup it implies, measured and extrapolated.

Per variant (and its baseline) in each group, the final val loss at each budget (max_iters, each
budget at its best lr, every finished seed a point) is fitted with the saturating power law of
the scaling-law literature (Kaplan et al. 2020 in steps, Chinchilla's data term, Marin's
per-arm fits):

    L(t) = E + A t^-alpha        (E: the loss this shape reaches with unlimited steps)

The effective speedup at budget t is how many steps the baseline's law needs for the variant's
loss at t, over t (Marin's "effective speedup"):

    S(t) = t_b(L_v(t)) / t,      t_b(L) = (A_b / (L - E_b))^(1 / alpha_b)

which rises with t when the variant's curve bends down faster, the nGPT paper's claim. A variant
whose L(t) goes below the baseline's E_b has no finite S: the baseline never gets there.

Intervals. A parametric bootstrap: N_DRAWS sets of budget means drawn around the fitted law
with the variance a budget's mean loss really has (the seeds' spread around it, pure error from
the seeds at each budget, plus the eval sample's error, which all seeds of a cell share), each
refitted (so the draws stay laws that fall with t, which a normal approximation of three
strongly correlated parameters does not). When the budget means stray from the law more than
that variance allows (lack of fit, an F test, with four budgets or more), the variance is scaled
up by the ratio (the Birge ratio: the lack-of-fit interval), so a form that does not fit widens
its own error bars. S(t)'s interval pairs the two fits' draws (independent: with seeds shared
between the arms this errs wide) and takes the 2.5 and 97.5 percentiles.

Flags: a fit is "poor" when R^2 of the budget means < R2_MIN or the lack of fit is significant
(p < LOF_P); with three budgets the law has as many parameters as points and the form is
untested. S(t) beyond the measured budgets is "extrapolated"; more than the measured
span (in log budget) beyond them, "too far". Poor, untested or too far: greyed in the chart.
"""
from __future__ import annotations

import math
import zlib
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy import stats as st

R2_MIN = 0.95
LOF_P = 0.05
EXTRAPOLATE = 10.0  # S(t) up to 10x the largest budget measured
N_DRAWS = 1000
FIT_COLUMNS = ["group", "variant", "is_baseline", "n_budgets", "n_points", "budgets", "E", "E_lo", "E_hi", "A", "A_lo",
               "A_hi", "alpha", "alpha_lo", "alpha_hi", "r2", "lof_p", "scale", "status"]
CURVE_COLUMNS = ["group", "variant", "budget", "measured", "loss_fit", "loss_lo", "loss_hi", "baseline_loss_fit",
                 "speedup", "speedup_lo", "speedup_hi", "status", "grey", "fit_status", "baseline_fit_status"]


ALPHAS = np.geomspace(0.01, 5.0, 240)  # the exponents tried (then refined): from nearly log to very steep


def power_law(t, E, A, alpha):
    return E + A * np.power(t, -alpha)


@dataclass
class Fit:
    t0: float                  # budgets are fitted as t / t0 (conditioning); A is in steps
    theta: np.ndarray          # (E, A', alpha) with A' = A t0^-alpha
    r2: float
    lof_p: float
    scale: float               # the lack-of-fit factor the budget means' variance carries (>= 1)
    n_budgets: int
    n_points: int
    budgets: list
    status: str                # "ok", or why the form is not to be trusted
    draws: np.ndarray = field(default=None, repr=False)  # (N_DRAWS, 3) refitted parameters, None: unknown

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def _theta(self, draws: bool):
        """(E, A', alpha): scalars, or with draws columns (draws, 1) that broadcast over budgets."""
        return self.theta if not draws else tuple(self.draws[:, i, None] for i in range(3))

    def loss(self, t, draws: bool = False):
        E, A1, alpha = self._theta(draws)
        with np.errstate(over="ignore", invalid="ignore"):
            return E + A1 * np.power(np.asarray(t, dtype=float) / self.t0, -alpha)

    def steps_for(self, loss, draws: bool = False):
        """Budget at which this law reaches `loss`: inf at or below its E (never), nan for a
        law that does not decrease (A' = 0)."""
        E, A1, alpha = self._theta(draws)
        loss = np.asarray(loss, dtype=float)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            t = self.t0 * np.power(A1 / (loss - E), 1.0 / alpha)
        t = np.where(loss <= E, np.inf, t)
        return np.where(A1 > 0, t, np.nan)


def fit_means(x, y, w) -> np.ndarray:
    """Least squares of L = E + A' x^-alpha (E >= 0, A' >= 0) to rows of budget means y (draws, k) with
    weights w (k,) (the seeds behind each mean): variable projection, (E, A') in closed form for
    each alpha of ALPHAS, the best alpha refined by a parabola in log alpha. Returns (draws, 3)."""
    y = np.atleast_2d(y)
    u = np.power(x[None, :], -ALPHAS[:, None])                       # (alphas, k)
    Sw, Su, Suu = w.sum(), u @ w, (u * u) @ w                        # scalars and (alphas,)
    Sy, Suy, Syy = y @ w, (y * w) @ u.T, (y * y) @ w                 # (draws,), (draws, alphas), (draws,)
    det = Sw * Suu - Su ** 2
    A1 = np.clip((Sw * Suy - Su * Sy[:, None]) / det, 0, None)      # a rising law is the flat one
    E = (Sy[:, None] - A1 * Su) / Sw
    below = E < 0  # a cross-entropy is never negative: there E = 0 and A' alone is fitted
    E = np.where(below, 0.0, E)
    A1 = np.where(below, np.clip(Suy / Suu, 0, None), A1)
    ssr = Syy[:, None] - 2 * E * Sy[:, None] - 2 * A1 * Suy + E ** 2 * Sw + 2 * E * A1 * Su + A1 ** 2 * Suu
    i = np.clip(np.argmin(ssr, axis=1), 1, len(ALPHAS) - 2)
    rows = np.arange(len(y))
    la = np.log(ALPHAS)
    f0, f1, f2 = ssr[rows, i - 1], ssr[rows, i], ssr[rows, i + 1]
    curv = f0 - 2 * f1 + f2
    step = np.where(curv > 0, 0.5 * (f0 - f2) / np.where(curv > 0, curv, 1), 0.0)
    alpha = np.exp(la[i] + np.clip(step, -1, 1) * (la[1] - la[0]))
    ua = np.power(x[None, :], -alpha[:, None])                       # (draws, k)
    su, suu, suy = ua @ w, (ua * ua) @ w, (y * ua) @ w
    A1 = np.clip((Sw * suy - su * Sy) / (Sw * suu - su ** 2), 0, None)
    E = (Sy - A1 * su) / Sw
    A1 = np.where(E < 0, np.clip(suy / suu, 0, None), A1)
    return np.column_stack([np.clip(E, 0, None), A1, alpha])


def fit(budgets, losses, eval_se: dict | None = None) -> Fit | None:
    """Fit L(t) = E + A t^-alpha to (budget, loss) points (several seeds per budget allowed);
    eval_se: {budget: the eval sample's standard error there}. None with fewer than 3 budgets."""
    t, y = np.asarray(budgets, dtype=float), np.asarray(losses, dtype=float)
    keep = np.isfinite(t) & np.isfinite(y) & (t > 0)
    t, y = t[keep], y[keep]
    levels = np.unique(t)
    k, n = len(levels), len(t)
    if k < 3:
        return None
    t0 = float(np.exp(np.mean(np.log(levels))))
    x = levels / t0
    means = np.array([y[t == b].mean() for b in levels])
    counts = np.array([(t == b).sum() for b in levels], dtype=float)
    theta = fit_means(x, means, counts)[0]   # all points, unweighted == the means weighted by their seeds
    fitted = power_law(x, *theta)
    ss_pe = float(np.sum((y - means[np.searchsorted(levels, t)]) ** 2))
    ss_lof = float(np.sum(counts * (means - fitted) ** 2))
    grand = np.average(means, weights=counts)
    ss_tot = float(np.sum(counts * (means - grand) ** 2))
    r2 = 1 - ss_lof / ss_tot if ss_tot > 0 else math.nan
    se2 = [eval_se.get(b, math.nan) ** 2 for b in levels] if eval_se else []
    eval_var = float(np.nanmean(se2)) if len(se2) and not np.isnan(se2).all() else 0.0
    df_pe, nbar = n - k, n / k
    if df_pe > 0:  # the variance of a budget mean, times the seeds in it: pure error + shared eval error
        s2 = ss_pe / df_pe + nbar * eval_var
    elif k > 3:    # one seed a budget: the residuals are all there is (eval error included)
        s2 = max(ss_lof / (k - 3), eval_var)
    else:
        s2 = eval_var
    lof_p, scale = math.nan, 1.0
    if k > 3 and df_pe > 0 and s2 > 0:
        F = (ss_lof / (k - 3)) / s2
        lof_p, scale = float(st.f.sf(F, k - 3, df_pe)), max(1.0, F)
    if k == 3:
        status = "3 budgets for 3 parameters: the form is not tested"
    elif (math.isfinite(r2) and r2 < R2_MIN) or (math.isfinite(lof_p) and lof_p < LOF_P):
        status = f"poor fit (R² {r2:.3f}" + (f", lack of fit p = {lof_p:.2g}" if math.isfinite(lof_p) else "") + ")"
    else:
        status = "ok"
    out = Fit(t0, theta, r2, lof_p, scale, k, n, [int(b) for b in levels], status)
    if s2 > 0:  # a parametric bootstrap: new budget means around the fitted law, each refitted
        rng = np.random.default_rng(zlib.crc32(theta.tobytes()))  # the same report twice: the same numbers;
        noise = rng.standard_normal((N_DRAWS, k)) * np.sqrt(s2 * scale / counts)  # two fits: other draws
        out.draws = fit_means(x, fitted + noise, counts)
    return out


def params(f: Fit) -> dict:
    """E, A (in steps), alpha with their 95% intervals from the draws."""
    E, A1, alpha = f.theta
    out = {"E": E, "A": A1 * f.t0 ** alpha, "alpha": alpha}
    if f.draws is None:
        return {**out, **{f"{k}_{s}": math.nan for k in ("E", "A", "alpha") for s in ("lo", "hi")}}
    d = f.draws
    with np.errstate(over="ignore", invalid="ignore"):
        cols = {"E": d[:, 0], "A": d[:, 1] * np.power(f.t0, d[:, 2]), "alpha": d[:, 2]}
    for k, v in cols.items():
        out[f"{k}_lo"], out[f"{k}_hi"] = np.nanpercentile(v, [2.5, 97.5])
    return out


def speedup_curve(v: Fit, b: Fit, budgets) -> pd.DataFrame:
    """S(t) with its interval at each budget t, from the two fits (and their draws)."""
    t = np.asarray(budgets, dtype=float)
    S = b.steps_for(v.loss(t)) / t
    lo = hi = loss_lo = loss_hi = np.full_like(t, np.nan)
    if v.draws is not None and b.draws is not None:
        Lv = v.loss(t, draws=True)              # (draws, budgets)
        Sd = b.steps_for(Lv, draws=True) / t
        ok = ~np.isnan(Sd)
        # no interpolation between draws: a draw may be inf (the baseline never gets there), inf - inf is nan
        lo = np.array([np.percentile(Sd[ok[:, i], i], 2.5, method="lower") if ok[:, i].any() else np.nan
                       for i in range(len(t))])
        hi = np.array([np.percentile(Sd[ok[:, i], i], 97.5, method="higher") if ok[:, i].any() else np.nan
                       for i in range(len(t))])
        loss_lo, loss_hi = np.nanpercentile(Lv, [2.5, 97.5], axis=0)
    return pd.DataFrame({"budget": t, "loss_fit": v.loss(t), "loss_lo": loss_lo, "loss_hi": loss_hi,
                         "baseline_loss_fit": b.loss(t), "speedup": S, "speedup_lo": lo, "speedup_hi": hi})


def _points(runs: pd.DataFrame, cells: pd.DataFrame) -> dict:
    """{(group, variant): (budgets, losses, {budget: eval se}, is_baseline)} of the best-lr cells' finished seeds."""
    done = runs[(runs.state == "done") & runs.final_val_loss.notna()]
    out: dict = {}
    for c in cells[cells.best_lr & (cells.n_done > 0)].itertuples():
        losses = done[done.cell_id == c.cell_id].final_val_loss.astype(float).tolist()
        b, y, se, base = out.setdefault((c.group, c.variant), ([], [], {}, bool(c.is_baseline)))
        b += [int(c.max_iters)] * len(losses)
        y += losses
        se[int(c.max_iters)] = float(c.eval_se_val_loss) if pd.notna(c.eval_se_val_loss) else math.nan
    return out


def budget_grid(measured: list, n: int = 24) -> list:
    """The measured budgets and a log-spaced sweep from the smallest to EXTRAPOLATE x the largest."""
    sweep = np.geomspace(min(measured), EXTRAPOLATE * max(measured), n)
    return sorted({*map(float, measured), *map(float, np.round(sweep))})


def _status(t: float, lo_b: float, hi_b: float, v: Fit, b: Fit, hi: float) -> str:
    if not v.ok or not b.ok:
        return "poor fit" if "poor" in v.status + b.status else "form untested"
    if t > hi_b * (hi_b / lo_b) * (1 + 1e-9):
        return "too far"
    if math.isinf(hi):
        return "unbounded"
    return "measured" if t <= hi_b * (1 + 1e-9) else "extrapolated"


def scaling(runs: pd.DataFrame, cells: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(fits: one row per variant and baseline with three budgets or more; curve: S(t) per
    variant over budget_grid, with status "measured" / "extrapolated" / "too far" / "unbounded"
    / "poor fit" / "form untested" and grey for anything but the first two)."""
    fits, curves = [], []
    if not len(cells):
        return pd.DataFrame(columns=FIT_COLUMNS), pd.DataFrame(columns=CURVE_COLUMNS)
    pts = _points(runs, cells)
    fitted = {key: fit(b, y, se) for key, (b, y, se, _) in pts.items()}
    for (group, variant), f in fitted.items():
        if f is not None:
            fits.append({"group": group, "variant": variant, "is_baseline": pts[(group, variant)][3],
                         "n_budgets": f.n_budgets, "n_points": f.n_points, "budgets": ",".join(map(str, f.budgets)),
                         **params(f), "r2": f.r2, "lof_p": f.lof_p, "scale": f.scale, "status": f.status})
    for group in dict.fromkeys(g for g, _ in pts):
        base = [(v, f) for (g, v), f in fitted.items() if g == group and pts[(g, v)][3] and f is not None]
        if not base:
            continue
        bname, b = base[0]
        for (g, variant), v in fitted.items():
            if g != group or variant == bname or v is None:
                continue
            lo_b, hi_b = max(min(v.budgets), min(b.budgets)), min(max(v.budgets), max(b.budgets))
            c = speedup_curve(v, b, budget_grid(sorted({*v.budgets, *b.budgets})))
            c["status"] = [_status(t, lo_b, hi_b, v, b, h) for t, h in zip(c.budget, c.speedup_hi)]
            c["measured"] = c.budget.isin([float(x) for x in set(v.budgets) & set(b.budgets)])
            curves.append(c.assign(group=group, variant=variant, fit_status=v.status, baseline_fit_status=b.status,
                                   grey=~c.status.isin(["measured", "extrapolated"])))
    curve = pd.concat(curves, ignore_index=True)[CURVE_COLUMNS] if curves else pd.DataFrame(columns=CURVE_COLUMNS)
    return pd.DataFrame(fits, columns=FIT_COLUMNS), curve
