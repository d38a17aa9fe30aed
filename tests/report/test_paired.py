"""Seed pairing on small synthetic grids whose answers are known by construction: which seeds
pair, what is said about the others, one seed, and the per-seed speedups in both modes."""
import math

import numpy as np
import pytest

from ablate.report import stats
from synthetic import ending_at, write_run
from report_fixtures import session_bundle_dir, bundle_cache, env, specs_only  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("specs_only")
ONE_GROUP = {"baseline": {"arch": "gpt"}, "group_by": []}


def run(runs, arch, seed, final, max_iters=100, **kw):
    write_run(runs, "g", {"arch": arch, "seed": seed, "max_iters": max_iters, "eval_interval": 50},
              ending_at(final, max_iters), **{"eval_se": 0.005, **kw})


def test_only_seeds_finished_on_both_sides_pair_and_the_rest_is_listed(env):
    runs, store, report = env
    for s, (b, v) in enumerate([(2.00, 1.95), (2.02, 1.96), (2.01, 1.97), (2.03, 1.9)]):
        run(runs, "gpt", s, b, state="failed" if s == 3 else "done")   # the baseline's seed 3 failed
        if s != 2:                                                      # the variant has no seed 2
            run(runs, "ngpt", s, v)
    run(runs, "ngpt", 4, 1.9)                                           # and a seed 4 the baseline never ran
    r = report(ONE_GROUP)["paired"].iloc[0]
    assert (r.n_pairs, r.paired_seeds) == (2, "0,1")
    assert r.unpaired == ("seed 2 (variant no run, baseline done); seed 3 (variant done, baseline failed); "
                          "seed 4 (variant done, baseline no run)")
    assert r.loss_diff == pytest.approx(np.mean([1.95 - 2.00, 1.96 - 2.02]))
    direct = stats.mean_interval([-0.05, -0.06], math.sqrt(2) * 0.005)
    assert (r.loss_lo, r.loss_hi) == pytest.approx((direct.lo, direct.hi))


def test_one_seed_keeps_the_eval_noise_rule(env):
    runs, store, report = env
    run(runs, "gpt", 0, 2.000)
    run(runs, "ngpt", 0, 1.990)        # 0.010 apart, eval noise 2 x sqrt(2) x 0.005 = 0.014: within it
    out = report(ONE_GROUP)
    r = out["paired"].iloc[0]
    assert r.loss_verdict == stats.ONE_SEED and r.within_noise
    assert "one paired seed: within eval noise (gap -0.0100" in r.note
    md = out["paths"]["summary.md"].read_text()
    assert "| -0.0100 (eval noise ±0.0141) |" in md and "one seed: eval noise only" in md


def test_curve_mode_speedups_are_per_seed_and_geometric(env):
    """One budget: the variant's seed s against the baseline's seed s final loss. Linear curves from
    4.2: the variant crosses 4.2 - d_b at step 100 d_b / d_v, a speedup of d_v / d_b."""
    runs, store, report = env
    for s, (b, v) in enumerate([(2.2, 1.2), (2.2, 0.2), (2.7, 1.2)]):  # speedups 1.5, 2.0, 2.0
        run(runs, "gpt", s, b)
        run(runs, "ngpt", s, v)
    r = report(ONE_GROUP)["paired"].iloc[0]
    assert r.speedup_mode == "curve" and r.speedup_n == 3
    logs = np.log([1.5, 2.0, 2.0])
    assert r.speedup == pytest.approx(math.exp(logs.mean()), rel=1e-6)
    assert r.speedup_lo < r.speedup < r.speedup_hi and r.speedup_verdict == stats.SIGNIFICANT


def test_a_seed_that_never_reaches_the_baseline_gives_a_bound_not_an_interval(env):
    runs, store, report = env
    for s, (b, v) in enumerate([(2.2, 1.2), (2.2, 2.5)]):  # seed 1 ends above its baseline seed: never there
        run(runs, "gpt", s, b)
        run(runs, "ngpt", s, v)
    r = report(ONE_GROUP)["paired"].iloc[0]
    assert r.speedup_bound == "< 1x in 1 of 2 seeds" and math.isnan(r.speedup) and math.isnan(r.speedup_lo)
    assert r.speedup_verdict == "bound only"


def test_a_seed_already_there_at_step_0_is_not_called_below_1x(env):
    runs, store, report = env
    run(runs, "gpt", 0, 2.2)
    write_run(runs, "g", {"arch": "ngpt", "seed": 0, "max_iters": 100, "eval_interval": 50}, lambda s: 2.1,
              eval_se=0.005)  # below the baseline's final loss from its first eval on
    r = report(ONE_GROUP)["paired"].iloc[0]
    assert r.speedup_bound == "at the baseline loss at step 0 in 1 of 1 seeds" and math.isnan(r.speedup)


def test_budget_mode_speedup_reads_each_seed_off_its_own_baseline_line(env):
    """The baseline's loss falls 0.1 per doubling of the budget (a straight line in log budget,
    what budget mode interpolates); each seed shifts every cell of that seed alike. nGPT at budget
    b ends where the baseline ends at 2b: 2x for every seed, whatever the seed's shift."""
    runs, store, report = env
    loss = lambda b: 3.0 - 0.1 * math.log2(b / 100)  # noqa: E731
    for s, shift in enumerate([0.0, 0.03, -0.02]):
        for b in (100, 200, 400, 800):
            run(runs, "gpt", s, loss(b) + shift, max_iters=b)
        for b in (100, 200, 400):
            run(runs, "ngpt", s, loss(2 * b) + shift, max_iters=b)
    pr = report(ONE_GROUP)["paired"].set_index("budget")
    assert list(pr.speedup_mode) == ["budget"] * 3
    for b in (100, 200, 400):
        assert pr.speedup[b] == pytest.approx(2.0, rel=1e-9)
        assert pr.loss_diff[b] == pytest.approx(loss(2 * b) - loss(b))  # the same gap in every seed
        assert pr.log_speedup_eval_sd[b] == pytest.approx(math.sqrt(2) * 0.005 / (0.1 / math.log(2)), rel=1e-3)


def test_three_speedups_side_by_side(env):
    """nGPT needs half the steps (2x), runs at half the tokens/s (1x in wall clock) and needs half
    the memory (2x): the table shows all three, and says where it wins and where it does not."""
    runs, store, report = env
    gib = 2 ** 30
    for s, (b, v) in enumerate([(2.2, 0.2), (2.3, 0.4), (2.1, 0.0)]):  # curve mode: speedup 2.0 in every seed
        run(runs, "gpt", s, b, tokens_per_s=2000.0, peak_alloc=2 * gib)
        run(runs, "ngpt", s, v, tokens_per_s=1000.0, peak_alloc=gib)
    out = report(ONE_GROUP)
    t = out["tradeoffs"].iloc[0]
    assert t.steps == pytest.approx(2.0) and t.throughput_ratio == pytest.approx(0.5)
    assert t.wall == pytest.approx(1.0) and t.memory == pytest.approx(2.0) and t.memory_source == "CUDA allocator"
    assert t.verdict == "wins in steps (2.00x); even in wall clock; wins in memory (2.00x)"
    md = out["paths"]["summary.md"].read_text()
    assert "## Speedup in steps, wall clock and memory" in md and "| 2.00x [" in md and "| 0.50x |" in md
