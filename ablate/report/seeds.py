"""How many seeds does it take? The seed planner behind `ablate plan GRID --seeds-for 0.01`.

From a pilot (any grid in the store with finished seeds; by default the grid itself), each
variant's seed-paired differences against its baseline (paired.py) give the seed-to-seed s.d. of
the difference (sd) and the eval sample's part that no number of seeds removes (eval_sd). The
seeds needed to detect a true gap `delta` (or log speedup) with the paired t test at `alpha`,
with probability `power`, are stats.seeds_needed's (noncentral t, exact), shown beside the
normal approximation's closed form and beside the count a pessimistic s.d. would need (the
pilot's s.d. at its 80% upper confidence bound: three seeds know an s.d. only within ~2x).

What the extra seeds cost: the pair (the variant and its baseline, each at its best lr) once per
seed, in FLOPs (the plan's formula) and in hours at the pilot's measured wall time per run.
Without a pilot (no finished paired seeds, or one seed only) it says so and gives no number:
a seed count from a guessed s.d. is a guess.
"""
from __future__ import annotations

import json
import math

import pandas as pd

from ablate.core import estimate
from ablate.core.config import make_config
from ablate.core.errors import AblateError
from ablate.plan.plan import human_flops, human_hours
from ablate.plan.power import Power
from ablate.report import stats

COLUMNS = ["group", "variant", "budget", "pilot_seeds", "sd", "eval_sd", "seeds_needed", "seeds_if_eval_cancels",
           "closed_form", "seeds_if_sd_high", "to_run", "flops_per_seed", "seconds_per_seed", "device", "note"]


def _flops(runs: pd.DataFrame, cell_ids) -> float:
    """FLOPs of one run of each cell (the plan's formula; nan for a cell no formula knows)."""
    total = 0.0
    for cid in cell_ids:
        rows = runs[runs.cell_id == cid]
        try:
            cfg = make_config(json.loads(rows.config_json.iloc[0]))
            total += estimate.total_flops(cfg, estimate.param_counts(cfg))
        except (IndexError, TypeError, ValueError, AblateError, estimate.NoFormula):
            return math.nan
    return total


def seed_plan(analysis, power: Power) -> pd.DataFrame:
    """One row per variant and budget of the pilot: COLUMNS."""
    rows = []
    for r in analysis.paired.itertuples():
        if power.kind == "loss":
            n, sd, eval_sd = r.n_pairs, r.loss_sd, r.loss_eval_sd
        else:
            n, sd, eval_sd = r.speedup_n, r.log_speedup_sd, r.log_speedup_eval_sd
        eval_sd = eval_sd if math.isfinite(eval_sd) else 0.0
        note = ""
        if n < 2 or not math.isfinite(sd):
            need = closed = high = lower = None
            note = (f"the pilot has {n} paired seed{'s' if n != 1 else ''} here: the seed-to-seed s.d. is not "
                    "measured, no count is guessed")
        else:
            need = stats.seeds_needed(power.delta, sd, eval_sd, power.alpha, power.power)
            closed = stats.seeds_closed_form(power.delta, sd, eval_sd, power.alpha, power.power)
            high = stats.seeds_needed(power.delta, stats.sd_upper(sd, n), eval_sd, power.alpha, power.power)
            lower = stats.seeds_needed(power.delta, sd, 0.0, power.alpha, power.power)
        rows.append({"group": r.group, "variant": r.variant, "budget": r.budget, "pilot_seeds": n, "sd": sd,
                     "eval_sd": eval_sd, "seeds_needed": need, "seeds_if_eval_cancels": lower, "closed_form": closed,
                     "seeds_if_sd_high": high,
                     "to_run": max(0, need - n) if need is not None else None,
                     "flops_per_seed": _flops(analysis.runs, [c for c in (r.cell_id, r.baseline_cell_id) if c]),
                     "seconds_per_seed": r.seed_seconds, "device": r.device, "note": note})
    out = pd.DataFrame(rows, columns=COLUMNS)
    counts = ["seeds_needed", "seeds_if_eval_cancels", "seeds_if_sd_high", "to_run"]
    out[counts] = out[counts].astype(object).where(out[counts].notna(), None)  # ints, or None: no count
    return out


def _count(x) -> int | None:
    """A seed count from the plan's table: an int, or None where there is none."""
    return None if x is None or (isinstance(x, float) and not math.isfinite(x)) else int(x)


def _cost(n, flops: float, seconds: float) -> str:
    n = _count(n)
    if n is None:
        return "–"
    if n == 0:
        return "none"
    parts = [f"{human_flops(n * flops)} FLOPs" if math.isfinite(flops) else ""]
    if math.isfinite(seconds):
        parts.append(human_hours(n * seconds / 3600, False))
    return ", ".join(p for p in parts if p) or "unknown"


def format_seed_plan(plan: pd.DataFrame, pilot: str, pilot_runs: int, power: Power,
                     grid_flops_per_seed: float | None = None, n_grid_seeds: int = 1) -> str:
    """The seed plan as the CLI prints it, after the plan table."""
    what = "the loss gap" if power.kind == "loss" else "the log speedup"
    head = (f"seeds to detect {power.text} (paired t test, alpha {power.alpha:g}, power {power.power:g}), "
            f"from the pilot '{pilot}'")
    if not pilot_runs or not len(plan):
        return (f"{head}: no pilot. Grid '{pilot}' has no finished runs with a baseline in the store; run it "
                "with two seeds or more first (seeds: [0, 1, 2]), or name a pilot grid in the power: section "
                "(pilot: NAME). No seed count is guessed.")
    cols = ["group", "variant", "budget", "pilot seeds", f"seed s.d. ({what})", "eval s.d. (<=)", "seeds needed",
            "if eval cancels", "normal approx.", "if s.d. at its 80% bound", "to run",
            "cost of those (the pair at its best lrs)"]
    num = lambda x, spec=".4g": "–" if x is None or (isinstance(x, float) and not math.isfinite(x)) else format(x, spec)  # noqa: E731
    count = lambda x, missing="–": missing if _count(x) is None else str(_count(x))  # noqa: E731
    body = []
    for r in plan.itertuples():
        body.append([str(r.group), str(r.variant), f"{r.budget:,}", str(r.pilot_seeds), num(r.sd), num(r.eval_sd),
                     count(r.seeds_needed, "none" if r.pilot_seeds >= 2 else "–"), count(r.seeds_if_eval_cancels),
                     num(r.closed_form, ".1f"), count(r.seeds_if_sd_high), count(r.to_run),
                     _cost(r.to_run, r.flops_per_seed, r.seconds_per_seed)])
    widths = [max(len(c), *(len(b[i]) for b in body)) for i, c in enumerate(cols)]
    line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
    out = [head + ":", line(cols), line(["-" * w for w in widths]), *map(line, body)]
    notes = sorted({f"{r.variant} @ {r.budget:,}: {r.note}" for r in plan.itertuples() if r.note})
    out += [f"  {n}" for n in notes]
    if any(_count(n) is None and p >= 2 for n, p in zip(plan.seeds_needed, plan.pilot_seeds)):
        out.append("none: the eval noise at its upper bound hides the gap whatever the seeds; more eval windows "
                   "(eval_iters) would shrink it")
    out.append("eval s.d.: the eval sample's error of the difference taken as sqrt(se_v^2 + se_b^2), an upper bound "
               "(the cells share their val windows, so their eval errors partly cancel, by an amount evals.jsonl does "
               "not record); 'seeds needed' counts with it, 'if eval cancels' without it: the truth lies between")
    devices = sorted({d for d in plan.device if d})
    out.append(f"hours: the pilot's measured wall time per run ({', '.join(devices) or 'unknown device'}); normal approx.: "
               "sd^2 / (delta^2 / (z_a + z_b)^2 - eval_sd^2), which the t test behind 'seeds needed' exceeds by up to "
               f"~{stats.t_correction(power.alpha):.1f} seeds when few are needed")
    needed = [_count(n) for n in plan.seeds_needed if _count(n) is not None]
    if needed and grid_flops_per_seed:
        most = max(needed)
        out.append(f"a grid's seeds: list runs every cell once per seed: this grid at {most} seeds (it has "
                   f"{n_grid_seeds}) is {human_flops(most * grid_flops_per_seed)} FLOPs")
    return "\n".join(out)
