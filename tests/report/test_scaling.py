"""Loss-vs-budget fits and the speedup they imply (ablate/report/scaling.py): known laws
recovered from noisy seeds, a wrong form flagged, S(t) intervals that cover, and the report's
labels for what not to trust."""
import math

import numpy as np
import pytest

from ablate.report import scaling as sc
from synthetic import ending_at, write_run
from report_fixtures import session_bundle_dir, bundle_cache, env, specs_only  # noqa: F401 (fixtures)

BUDGETS = np.array([100, 200, 400, 800, 1600, 3200])
E, A, ALPHA = 1.8, 12.0, 0.35
LAW = lambda t: E + A * np.power(t, -ALPHA)  # noqa: E731
WRONG = {"U-shaped (overtrained at large budgets)": lambda t: 2.2 + 0.15 * np.log(t / 800) ** 2,
         "a step": lambda t: np.where(t < 700, 2.6, 2.3)}
SEED_SD, EVAL_SE = 0.01, 0.005


def noisy(rng, law, seeds: int = 3):
    """Per-seed points: seed noise, plus one eval error per budget shared by its seeds."""
    b = np.repeat(BUDGETS, seeds)
    shared = dict(zip(BUDGETS, rng.normal(0, EVAL_SE, len(BUDGETS))))
    return b, law(b) + rng.normal(0, SEED_SD, len(b)) + np.array([shared[x] for x in b])


def test_known_law_recovered_within_the_stated_tolerance():
    """README's tolerance: from 6 budgets (100-3,200 steps) x 3 seeds (s.d. 0.01, eval s.e. 0.005),
    E within 0.1, A within 10%, alpha within 0.03 in 90% of fits or more; the 95% intervals of E
    and alpha cover the truth 90-99% of the time; the right form is called poor rarely."""
    rng = np.random.default_rng(0)
    ok = cover_e = cover_alpha = poor = 0
    n = 120
    for _ in range(n):
        b, y = noisy(rng, LAW)
        f = sc.fit(b, y, {x: EVAL_SE for x in BUDGETS})
        p = sc.params(f)
        ok += abs(p["E"] - E) <= 0.1 and abs(p["A"] / A - 1) <= 0.1 and abs(p["alpha"] - ALPHA) <= 0.03
        cover_e += p["E_lo"] <= E <= p["E_hi"]
        cover_alpha += p["alpha_lo"] <= ALPHA <= p["alpha_hi"]
        poor += not f.ok
    assert ok / n >= 0.9, ok / n
    assert 0.9 <= cover_e / n <= 0.99 and 0.9 <= cover_alpha / n <= 0.99, (cover_e / n, cover_alpha / n)
    assert poor / n <= 0.1


@pytest.mark.parametrize("form", list(WRONG))
def test_a_wrong_form_is_flagged(form):
    rng = np.random.default_rng(1)
    for _ in range(20):
        b, y = noisy(rng, WRONG[form])
        f = sc.fit(b, y, {x: EVAL_SE for x in BUDGETS})
        assert not f.ok and f.status.startswith("poor fit"), (form, f.status, f.r2, f.lof_p)
        assert f.scale > 1  # its intervals widen by the lack of fit


def test_speedup_intervals_cover_a_known_speedup():
    """The variant reaches at t what the baseline reaches at 2t: S(t) = 2 at every budget, measured
    and extrapolated to 10x the largest."""
    rng = np.random.default_rng(2)
    t = [800.0, 3200.0, 32000.0]
    hits = np.zeros(len(t))
    n = 100
    for _ in range(n):
        fb = sc.fit(*noisy(rng, LAW), {x: EVAL_SE for x in BUDGETS})
        fv = sc.fit(*noisy(rng, lambda x: LAW(2 * x)), {x: EVAL_SE for x in BUDGETS})
        c = sc.speedup_curve(fv, fb, t)
        hits += ((c.speedup_lo <= 2) & (c.speedup_hi >= 2)).to_numpy()
    assert (hits / n >= 0.9).all() and (hits / n <= 1.0).all(), hits / n


def test_below_the_baselines_floor_the_speedup_is_unbounded():
    rng = np.random.default_rng(3)
    fb = sc.fit(*noisy(rng, LAW), {x: EVAL_SE for x in BUDGETS})
    fv = sc.fit(*noisy(rng, lambda x: 1.5 + A * np.power(x, -ALPHA)), {x: EVAL_SE for x in BUDGETS})  # E_v < E_b
    c = sc.speedup_curve(fv, fb, [32000.0, 1e6])
    assert math.isinf(c.speedup.iloc[-1]) and math.isinf(c.speedup_hi.iloc[-1])


@pytest.mark.usefixtures("specs_only")
@pytest.mark.parametrize("budgets, status", [((100, 200, 400), "form untested"), ((100, 200, 400, 800), "too far")])
def test_report_labels_what_not_to_trust(env, budgets, status):
    """Three budgets: as many parameters as points, the form untested (every S(t) grey); four
    budgets spanning 8x: 10x beyond the largest is more than the measured span: 'too far'."""
    runs, store, report = env
    for seed in range(2):
        for b in budgets:
            for arch, eff in (("gpt", 1.0), ("ngpt", 2.0)):
                final = float(LAW(eff * b)) + 0.01 * (seed - 0.5)
                write_run(runs, "g", {"arch": arch, "max_iters": b, "seed": seed, "eval_interval": 50},
                          ending_at(final, b), eval_se=0.005)
    out = report({"baseline": {"arch": "gpt"}, "group_by": []})
    curve, fits = out["scaling"], out["fits"]
    assert set(fits.variant) == {"gpt", "ngpt"} and (fits.n_budgets == len(budgets)).all()
    last = curve[curve.budget == curve.budget.max()].iloc[0]
    assert last.budget == pytest.approx(10 * max(budgets)) and last.status == status and last.grey
    if status == "too far":
        measured = curve[curve.measured]
        assert list(measured.budget) == [float(b) for b in budgets] and not measured.grey.any()
        assert measured.speedup.to_numpy() == pytest.approx(2.0, rel=0.05)
        assert fits.status.eq("ok").all() and (fits.r2 > 0.99).all()
    else:
        assert curve.grey.all() and fits.status.str.contains("not tested").all()
    d = out["paths"]["scaling.csv"].parent
    assert (d / "speedup_vs_budget.png").exists() and (d / "scaling_fits.csv").exists()
    assert "Speedup vs budget" in (d / "summary.md").read_text()
