"""The seed statistics (ablate/report/stats.py) against closed forms and simulation."""
import math

import numpy as np
import pytest
from scipy import stats as st

from ablate.report import stats


def simulate(rng, n_grids, n, true, sd, eval_sd):
    """n_grids x n per-seed values under the report's model: seed noise + one eval error per grid."""
    return true + rng.normal(0, sd, (n_grids, n)) + rng.normal(0, eval_sd, (n_grids, 1)) if eval_sd else \
        true + rng.normal(0, sd, (n_grids, n))


@pytest.mark.parametrize("n, sd, eval_sd", [(3, 0.01, 0.0), (3, 0.02, 0.014), (3, 0.005, 0.01), (5, 0.01, 0.005),
                                            (10, 0.01, 0.01)])
def test_intervals_cover_the_true_mean_95_percent_of_the_time(n, sd, eval_sd):
    rng = np.random.default_rng(n * 1000 + int(sd * 1e4))
    values = simulate(rng, 4000, n, 0.03, sd, eval_sd)
    est = [stats.mean_interval(v, eval_sd) for v in values]
    cover = np.mean([e.lo <= 0.03 <= e.hi for e in est])
    assert 0.935 <= cover <= 0.965, cover  # 4,000 draws: ± 0.35% s.d.
    if eval_sd:  # the eval noise left out: the same intervals undercover, the test has teeth
        naive = [stats.mean_interval(v, 0.0) for v in values]
        assert np.mean([e.lo <= 0.03 <= e.hi for e in naive]) < 0.92


def test_false_positives_at_the_nominal_level():
    rng = np.random.default_rng(7)
    values = simulate(rng, 4000, 3, 0.0, 0.02, 0.014)  # no effect: p < 0.05 one time in twenty
    rate = np.mean([stats.mean_interval(v, 0.014).p < 0.05 for v in values])
    assert 0.04 <= rate <= 0.065, rate


def test_known_values_and_verdicts():
    e = stats.mean_interval([0.1, 0.12, 0.08])
    t = st.t.ppf(0.975, 2) * 0.02 / math.sqrt(3)  # no eval noise: the plain Student-t interval
    assert (e.mean, e.lo, e.hi, e.df) == (pytest.approx(0.1), pytest.approx(0.1 - t), pytest.approx(0.1 + t), 2)
    assert e.p == pytest.approx(2 * st.t.sf(0.1 / (0.02 / math.sqrt(3)), 2))
    assert e.verdict == stats.SIGNIFICANT
    one = stats.mean_interval([0.02], eval_sd=0.01)  # one seed: only the eval noise is known (normal)
    assert one.verdict == stats.ONE_SEED and one.hi - one.mean == pytest.approx(1.959964 * 0.01, rel=1e-5)
    assert stats.mean_interval([], 0.01).verdict == stats.NO_SEEDS
    assert stats.mean_interval([0.001, -0.002, 0.0005], 0.01).verdict == stats.NOT_SIGNIFICANT
    # Satterthwaite: the eval part (known) adds degrees of freedom to the seed part's n - 1
    e = stats.mean_interval([0.1, 0.12, 0.08], 0.02)
    assert 2 < e.df and e.hi - e.mean > st.norm.ppf(0.975) * math.sqrt(0.02 ** 2 / 3 + 0.02 ** 2)


@pytest.mark.parametrize("d, expected", [(0.5, 34), (1.0, 10), (0.8, 15)])
def test_seeds_needed_matches_the_paired_t_tables(d, expected):
    """G*Power / Cohen's tables: paired t, two-sided alpha 0.05, power 0.8."""
    assert stats.seeds_needed(d, 1.0) == expected


@pytest.mark.parametrize("delta, sd, eval_sd", [(0.01, 0.02, 0.0), (0.02, 0.01, 0.0), (0.05, 0.02, 0.0),
                                                (0.01, 0.01, 0.002), (0.03, 0.02, 0.008)])
def test_seed_count_matches_the_closed_form_within_one_seed(delta, sd, eval_sd):
    """The normal approximation n = sd^2 / (delta^2 / (z_a + z_b)^2 - eval_sd^2), with the t test's
    z_a^2 / 2 more seeds (Guenther), is the planner's count within one seed; the plain normal
    approximation never asks for more."""
    n = stats.seeds_needed(delta, sd, eval_sd)
    closed = stats.seeds_closed_form(delta, sd, eval_sd)
    assert abs(n - math.ceil(closed + stats.t_correction())) <= 1, (n, closed)
    assert n >= math.ceil(closed) - 1


@pytest.mark.parametrize("delta, sd, eval_sd", [(0.02, 0.03, 0.0), (0.03, 0.02, 0.008)])
def test_simulation_confirms_the_planned_power(delta, sd, eval_sd):
    n = stats.seeds_needed(delta, sd, eval_sd, target=0.8)
    rng = np.random.default_rng(n)

    def power(k):
        values = simulate(rng, 3000, k, delta, sd, eval_sd)
        return np.mean([stats.mean_interval(v, eval_sd).p < 0.05 for v in values])
    assert power(n) >= 0.8 - 0.022  # 3,000 draws: ± 0.7% s.d.
    assert power(n - 1) < power(n) + 0.01 and stats.power(n - 1, delta, sd, eval_sd) < 0.8


def test_eval_noise_is_a_floor_seeds_cannot_cross():
    assert stats.seeds_needed(0.01, 0.01, eval_sd=0.004) is None  # 0.01 / 2.8 < 0.004: hidden whatever the seeds
    assert math.isinf(stats.seeds_closed_form(0.01, 0.01, eval_sd=0.004))
    assert stats.seeds_needed(0.01, 0.01, eval_sd=0.002) is not None


def test_sd_upper_bound_is_the_chi_square_bound():
    assert stats.sd_upper(1.0, 3, 0.8) == pytest.approx(math.sqrt(2 / st.chi2.ppf(0.2, 2)))
    assert stats.sd_upper(1.0, 30, 0.8) < 1.2 < stats.sd_upper(1.0, 3, 0.8)


def test_two_seeds_err_wide_not_narrow():
    """Satterthwaite's approximation undercovers with two seeds (91% where seed and eval noise are
    alike): two seeds keep t's one degree of freedom."""
    rng = np.random.default_rng(2)
    values = simulate(rng, 4000, 2, 0.03, 0.01, 0.005)
    assert np.mean([(e := stats.mean_interval(v, 0.005)).lo <= 0.03 <= e.hi for v in values]) >= 0.95
    assert stats.mean_interval([0.1, 0.12], 0.01).df == 1
