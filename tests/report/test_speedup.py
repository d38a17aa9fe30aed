"""Speedup numbers on synthetic grids whose answers are known by construction."""
import math

import numpy as np
import pytest

from ablate.report.speedup import budget_needed
from synthetic import write_run
from report_fixtures import GPT_BASELINE, session_bundle_dir, bundle_cache, env, specs_only  # noqa: F401 (fixtures)

pytestmark = pytest.mark.usefixtures("specs_only")
GPT = GPT_BASELINE


def linear(start: float, slope: float):
    return lambda s: start - slope * s


def row(sp, variant, mode="curve", **where):
    m = (sp.variant == variant) & (sp["mode"] == mode)
    for k, v in where.items():
        m &= sp[k] == v
    assert m.sum() == 1, sp[["group", "variant", "mode", "budget"]]
    return sp[m].iloc[0]


def test_half_the_steps_is_2x_and_never_is_below_1x(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))                    # L* = 2.0 at step 1000
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.002))                   # 2.0 at step 500 (an eval)
    write_run(runs, "g", {"arch": "ngpt", "n_kv_head": 2}, linear(3.0, 0.003))   # 2.0 at 333.3 (between evals)
    write_run(runs, "g", {"arch": "ngpt", "n_kv_head": 1}, linear(3.0, 0.0005))  # 2.5 at the end: never
    sp = report()["speedup"]
    assert len(sp) == 3 and set(sp["mode"]) == {"curve"}
    half = row(sp, "ngpt")
    assert half.speedup == pytest.approx(2.0, abs=1e-12) and half.display == "2.00x"
    assert half.speedup_tokens == pytest.approx(2.0) and half.speedup_wall == pytest.approx(2.0)
    assert half.target_loss == pytest.approx(2.0)
    third = row(sp, "ngpt n_kv_head=2")
    assert third.speedup == pytest.approx(3.0, rel=1e-9)  # linear interpolation between steps 300 and 400
    never = row(sp, "ngpt n_kv_head=1")
    assert never.display == "< 1x" and math.isnan(never.speedup) and never.bound == "<"
    assert math.isnan(never.speedup_tokens) and math.isnan(never.speedup_wall)


def test_wall_clock_speedup_uses_elapsed(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001), step_time=0.01)
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.002), step_time=0.04)  # half the steps, 4x slower each
    r = row(report()["speedup"], "ngpt")
    assert r.speedup == pytest.approx(2.0) and r.speedup_wall == pytest.approx(0.5)


def test_seeds_give_mean_and_standard_error(env):
    runs, store, report = env
    for seed, offset in ((0, -0.05), (1, 0.05)):  # baseline finals 1.95 and 2.05: L* = 2.0
        write_run(runs, "g", {"arch": "gpt", "seed": seed}, lambda s, o=offset: 3.0 + o - 0.001 * s)
    for seed, slope in ((0, 0.002), (1, 0.004)):  # reach 2.0 at steps 500 and 250: 2x and 4x
        write_run(runs, "g", {"arch": "ngpt", "seed": seed}, linear(3.0, slope))
    out = report()
    r = row(out["speedup"], "ngpt")
    assert r.target_loss == pytest.approx(2.0)
    assert r.speedup == pytest.approx(3.0) and r.speedup_se == pytest.approx(1.0)
    assert (r.n_seeds, r.n_reached) == (2, 2) and r.display == "3.00x ± 1.00"
    base = out["cells"][out["cells"].variant == "gpt"].iloc[0]
    assert base.mean_val_loss == pytest.approx(2.0) and base.se_val_loss == pytest.approx(0.05)


def test_one_seed_never_reaching_makes_the_variant_below_1x(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))
    write_run(runs, "g", {"arch": "ngpt", "seed": 0}, linear(3.0, 0.002))
    write_run(runs, "g", {"arch": "ngpt", "seed": 1}, linear(3.0, 0.0009))
    r = row(report()["speedup"], "ngpt")
    assert r.display == "< 1x (1 of 2 seeds)" and math.isnan(r.speedup) and r.n_reached == 1


def test_best_lr_stands_for_each_variant(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt", "lr": 1e-3}, linear(3.0, 0.0008))  # 2.2: worse
    write_run(runs, "g", {"arch": "gpt", "lr": 2e-3}, linear(3.0, 0.001))   # 2.0: the baseline's best
    write_run(runs, "g", {"arch": "ngpt", "lr": 4e-3}, linear(3.0, 0.002))
    write_run(runs, "g", {"arch": "ngpt", "lr": 8e-3}, linear(3.0, 0.0015))
    out = report()
    r = row(out["speedup"], "ngpt")
    assert r.lr == 4e-3 and r.baseline_lr == 2e-3 and r.speedup == pytest.approx(2.0)
    assert (out["paths"]["lr_sweep"]).exists()
    assert len(out["lr_sweep"]) == 4


def test_groups_compare_within_each_context(env):
    runs, store, report = env
    for ctx, slope in ((128, 0.002), (256, 0.004)):
        write_run(runs, "g", {"arch": "gpt", "context": ctx}, linear(3.0, 0.001))
        write_run(runs, "g", {"arch": "ngpt", "context": ctx}, linear(3.0, slope))
    sp = report()["speedup"]
    assert sp.group.tolist() == ["context=128", "context=256"]
    assert sp.speedup.tolist() == pytest.approx([2.0, 4.0])


# ---- budget mode
POWER = lambda b: 2.0 + 40.0 / math.sqrt(b)
BUDGETS = [1000, 2000, 4000, 8000]
BUDGET_COMPARE = {"baseline": {"arch": "gpt"}, "group_by": []}  # max_iters left out: budgets share a group


def ending_at(final: float, max_iters: int):
    return lambda s: 4.0 - (4.0 - final) * s / max_iters


def test_budget_mode_recovers_a_known_compute_factor(env):
    runs, store, report = env
    for b in BUDGETS:
        write_run(runs, "g", {"arch": "gpt", "max_iters": b, "eval_interval": 500}, ending_at(POWER(b), b))
    # nGPT matches the baseline trained twice as long: a 2x speedup at every budget
    for b in BUDGETS:
        write_run(runs, "g", {"arch": "ngpt", "max_iters": b, "eval_interval": 500}, ending_at(POWER(2 * b), b))
    sp = report(BUDGET_COMPARE)["speedup"]
    budget = sp[sp["mode"] == "budget"].set_index("budget")
    for b in (1000, 2000, 4000):
        assert budget.loc[b, "speedup"] == pytest.approx(2.0, rel=1e-9)
        assert not budget.loc[b, "extrapolated"] and budget.loc[b, "display"] == "2.00x"
        assert budget.loc[b, "speedup_tokens"] == pytest.approx(2.0, rel=1e-9)
    # beyond the baseline's largest budget: flagged, shown as the bound the data supports
    top = budget.loc[8000]
    assert top.extrapolated and top.bound == ">" and top.display.startswith("> 1.00x (≈")
    assert "extrapolated" in top.display and "extrapolated" in top.note
    # curve mode runs beside it, one row per budget, labelled
    assert set(sp[sp["mode"] == "curve"].budget) == set(BUDGETS)


def test_budget_mode_between_budgets_interpolates_on_log_budget(env):
    runs, store, report = env
    law = lambda b: 5.0 - 0.25 * math.log(b)  # linear in log(budget): interpolation is exact
    for b in BUDGETS:
        write_run(runs, "g", {"arch": "gpt", "max_iters": b, "eval_interval": 500}, ending_at(law(b), b))
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 1000, "eval_interval": 500}, ending_at(law(3000), 1000))
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 2000, "eval_interval": 500}, ending_at(law(1500), 2000))
    sp = report(BUDGET_COMPARE)["speedup"]
    budget = sp[sp["mode"] == "budget"].set_index("budget")
    assert budget.loc[1000, "speedup"] == pytest.approx(3.0, rel=1e-9)
    assert budget.loc[2000, "speedup"] == pytest.approx(0.75, rel=1e-9) and not budget.loc[2000, "extrapolated"]


def test_budget_needed_on_a_power_law_and_outside_the_range():
    losses = [POWER(b) for b in BUDGETS]
    assert budget_needed(BUDGETS, losses, POWER(3000))[0] == pytest.approx(3000, rel=0.05)
    assert budget_needed(BUDGETS, losses, POWER(4000)) == (pytest.approx(4000), None)
    below, side = budget_needed(BUDGETS, losses, POWER(500))
    assert side == "below" and below < 1000
    above, side = budget_needed(BUDGETS, losses, POWER(16000))
    assert side == "above" and above > 8000
    flat, side = budget_needed(BUDGETS, [2.0, 2.0, 2.0, 2.0], 1.0)
    assert side == "above" and math.isnan(flat)  # no slope: no made-up number


def test_budget_mode_below_the_smallest_budget_is_a_bound(env):
    runs, store, report = env
    for b in (1000, 2000):
        write_run(runs, "g", {"arch": "gpt", "max_iters": b}, ending_at(POWER(b), b))
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 2000}, ending_at(POWER(500), 2000))
    r = row(report(BUDGET_COMPARE)["speedup"], "ngpt", mode="budget")
    assert r.extrapolated and r.bound == "<" and r.display.startswith("< 0.50x")


def test_running_and_failed_variants(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.004), state="running", steps=600)  # crossed at 250
    write_run(runs, "g", {"arch": "ngpt", "n_kv_head": 2}, linear(3.0, 0.001), state="running", steps=300)
    write_run(runs, "g", {"arch": "ngpt", "n_kv_head": 1}, state="oom", steps=0)
    write_run(runs, "g", {"arch": "ngpt", "n_kv_head": 4, "window": 64}, linear(3.0, 0.1), state="diverged",
              steps=200, error="Traceback...\nloss is nan at step 200")
    sp = report()["speedup"]
    assert row(sp, "ngpt").speedup == pytest.approx(4.0)
    assert row(sp, "ngpt n_kv_head=2").display == "not reached yet"
    assert row(sp, "ngpt n_kv_head=1").display == "oom"
    assert row(sp, "ngpt window=64").display == "diverged"


def test_unfinished_baseline_gives_no_made_up_speedup(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001), state="running", steps=500)
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.002))
    out = report()
    assert len(out["speedup"]) == 0
    assert "1 runs not finished" in out["paths"]["summary.md"].read_text()


def test_speedup_is_stored_for_ablate_query(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.002))
    report()
    assert store.query("select variant, mode, speedup from speedup where grid = 'g'").values.tolist() == \
        [["ngpt", "curve", pytest.approx(2.0)]]
    assert np.isclose(float(open(report()["paths"]["speedup.csv"]).read().splitlines()[1].split(",")[9]), 2.0)


def test_stale_speedup_rows_are_cleared(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))
    ngpt = write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.002))
    report()
    for p in ngpt.iterdir():
        p.unlink()
    ngpt.rmdir()
    assert len(report()["speedup"]) == 0
    assert store.query("select count(*) n from speedup where grid = 'g'").n[0] == 0


def test_a_variant_at_the_target_before_training_is_not_a_huge_number(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))  # L* = 2.0 at step 1000
    write_run(runs, "g", {"arch": "ngpt"}, lambda s: 1.5)  # already below L* at its step-0 eval
    r = row(report()["speedup"], "ngpt")
    assert r.display == "at init" and math.isnan(r.speedup) and math.isnan(r.speedup_tokens)
    assert "step 0" in r.note


def test_budget_seeds_on_both_sides_of_the_range_are_not_shown_as_a_bound(env):
    runs, store, report = env
    for b in BUDGETS:
        write_run(runs, "g", {"arch": "gpt", "max_iters": b, "eval_interval": 500}, ending_at(POWER(b), b))
    # seed 0 matches the baseline at 3000 steps (inside the range), seed 1 at 32000 (beyond it)
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 2000, "eval_interval": 500, "seed": 0},
              ending_at(POWER(3000), 2000))
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 2000, "eval_interval": 500, "seed": 1},
              ending_at(POWER(32000), 2000))
    r = row(report(BUDGET_COMPARE)["speedup"], "ngpt", mode="budget")
    assert r.extrapolated and r.bound == "" and r.display.endswith("(partly extrapolated)")
    assert r.n_reached == 2 and r.speedup > 1.5  # the mean of both seeds, one of them extrapolated


# ---- eval noise and the edges of an lr sweep
def test_a_final_gap_within_eval_noise_is_not_a_result(env):
    """nGPT ends 0.004 below L*: a 1.0x-ish crossing at the very end. With eval standard errors
    of 0.01 that gap is noise and the row says so; measured on 20x less noisy evals it is a number."""
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001), eval_se=0.01)       # L* = 2.0
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.001004), eval_se=0.01)   # 1.996 at step 1000
    r = row(report()["speedup"], "ngpt")
    assert r.within_noise and r.display == "within eval noise"
    assert r.loss_gap == pytest.approx(-0.004) and r.gap_se == pytest.approx(math.sqrt(2) * 0.01)
    assert "not a result" in r.note and "1.00x" in r.note  # the measured number stays in the note
    runs2 = runs.parent / "runs2"
    write_run(runs2, "g", {"arch": "gpt"}, linear(3.0, 0.001), eval_se=0.0005)
    write_run(runs2, "g", {"arch": "ngpt"}, linear(3.0, 0.001004), eval_se=0.0005)
    store.ingest(runs2, rebuild=True)
    from ablate.report import make_report
    r = row(make_report(store, "g", GPT, runs.parent / "r2")["speedup"], "ngpt")
    assert not r.within_noise and r.display == "1.00x"


def test_never_reaching_within_eval_noise_is_not_below_1x(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001), eval_se=0.01)
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.00099), eval_se=0.01)   # 2.01: never reaches 2.0
    r = row(report()["speedup"], "ngpt")
    assert r.display == "within eval noise" and "< 1x" in r.note


def test_runs_without_eval_standard_errors_are_not_flagged(env):
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001))
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, 0.001004))
    r = row(report()["speedup"], "ngpt")
    assert not r.within_noise and math.isnan(r.gap_se) and r.display == "1.00x"


def test_budget_mode_gap_at_equal_budget_and_its_noise_range(env):
    runs, store, report = env
    law = lambda b: 5.0 - 0.25 * math.log(b)
    for b in BUDGETS:
        write_run(runs, "g", {"arch": "gpt", "max_iters": b, "eval_interval": 500}, ending_at(law(b), b), eval_se=0.01)
    # 2x: far beyond noise; 1.02x: 0.005 below the baseline at the same budget, within noise
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 1000, "eval_interval": 500}, ending_at(law(2000), 1000),
              eval_se=0.01)
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 2000, "eval_interval": 500}, ending_at(law(2040), 2000),
              eval_se=0.01)
    sp = report(BUDGET_COMPARE)["speedup"]
    clear, tie = row(sp, "ngpt", "budget", budget=1000), row(sp, "ngpt", "budget", budget=2000)
    assert clear.display == "2.00x" and clear.loss_gap == pytest.approx(-0.25 * math.log(2))
    sigma = math.sqrt(2) * 0.01
    assert clear.noise_lo == pytest.approx(2 * math.exp(-2 * sigma / 0.25))
    assert clear.noise_hi == pytest.approx(2 * math.exp(2 * sigma / 0.25))
    assert "eval noise: 1.79x .. 2.24x" in clear.note
    assert tie.within_noise and tie.display == "within eval noise"


def test_a_best_lr_at_the_edge_of_its_sweep_is_named_next_to_the_speedup(env):
    """nGPT's best lr is the largest it swept (its optimum may lie beyond); GPT's is bracketed by
    a worse lr below and a diverged lr above, which counts as an end of the sweep."""
    runs, store, report = env
    write_run(runs, "g", {"arch": "gpt", "lr": 1e-3}, linear(3.0, 0.0008))
    write_run(runs, "g", {"arch": "gpt", "lr": 2e-3}, linear(3.0, 0.001))
    write_run(runs, "g", {"arch": "gpt", "lr": 4e-3}, lambda s: 3 + s, state="diverged", steps=100)
    for lr, slope in ((2e-3, 0.0015), (4e-3, 0.0018), (8e-3, 0.002)):
        write_run(runs, "g", {"arch": "ngpt", "lr": lr}, linear(3.0, slope))
    out = report()
    r = row(out["speedup"], "ngpt")
    assert r.lr == 8e-3 and r.baseline_lr == 2e-3 and r.speedup == pytest.approx(2.0)
    assert r.display == "2.00x (best lr at sweep edge)"
    assert r.lr_note == "ngpt's best lr 0.008 is the highest swept" and "not an optimum" in r.note
    cells = out["cells"].set_index(["variant", "lr"])
    assert cells.loc[("gpt", 2e-3), "lr_edge"] == "" and cells.loc[("ngpt", 8e-3), "lr_edge"] == "highest"
    # the lr chart draws the diverged lr instead of dropping it, and marks the edge
    lr = out["lr_sweep"]
    assert len(lr) == 6 and lr.set_index(["variant", "lr"]).loc[("gpt", 4e-3), "states"] == "diverged"


def test_a_best_lr_inside_the_sweep_has_no_edge_note(env):
    runs, store, report = env
    for lr, slope in ((1e-3, 0.0008), (2e-3, 0.001), (4e-3, 0.0009)):
        write_run(runs, "g", {"arch": "gpt", "lr": lr}, linear(3.0, slope))
    for lr, slope in ((2e-3, 0.0015), (4e-3, 0.002), (8e-3, 0.0018)):
        write_run(runs, "g", {"arch": "ngpt", "lr": lr}, linear(3.0, slope))
    r = row(report()["speedup"], "ngpt")
    assert r.display == "2.00x" and r.lr_note == "" and "edge" not in r.note


@pytest.mark.parametrize("sigmas, within", [(1.9, True), (2.1, False), (1.2, True), (0.5, True), (3.0, False)])
def test_the_eval_noise_rule_is_two_combined_standard_errors_on_both_sides_of_it(env, sigmas, within):
    """A gap is 'within eval noise' under NOISE_SIGMAS = 2 combined standard errors and a result
    above: tested near the threshold on both sides (a rule at 1 sigma passed every earlier test)."""
    from ablate.report.speedup import NOISE_SIGMAS

    runs, store, report = env
    se = 0.01
    gap = sigmas * math.sqrt(2) * se  # two cells, one s.e. each
    write_run(runs, "g", {"arch": "gpt"}, linear(3.0, 0.001), eval_se=se)              # L* = 2.0 at step 1000
    write_run(runs, "g", {"arch": "ngpt"}, linear(3.0, (1.0 + gap) / 1000), eval_se=se)  # 2.0 - gap at step 1000
    r = row(report()["speedup"], "ngpt")
    assert NOISE_SIGMAS == 2.0 and bool(r.within_noise) is within
    assert r.loss_gap == pytest.approx(-gap) and r.gap_se == pytest.approx(math.sqrt(2) * se)
    assert (r.display == "within eval noise") is within


def test_budget_mode_reads_the_baseline_between_its_budgets_on_log_budget():
    """The baseline's loss between two of its budgets is interpolated on log(budget), not on the
    budget itself (every earlier test's variant budget was one the baseline trained)."""
    from ablate.report.speedup import loss_at

    assert loss_at([100, 400], [3.0, 2.0], 200) == pytest.approx(2.5)  # log 200 is halfway: linear says 2.667
    assert loss_at([100, 400, 1600], [3.0, 2.0, 1.5], 800) == pytest.approx(1.75)
    budget, where = budget_needed([100, 400], [3.0, 2.0], 2.5)
    assert where is None and budget == pytest.approx(200.0)  # and back: the inverse on the same line
