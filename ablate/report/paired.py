"""Is it real? Each variant against its baseline, seed by seed.

A seed gives every cell of a grid the same data order (and, where the shapes match, the same
initial draws), so the fair comparison is seed s of the variant against seed s of the baseline:
what the two seeds share cancels in the difference. For each variant at each budget (both at
their best lr, as everywhere in the report):

- loss: d_s = the variant's final val loss - the baseline's, seed s, at the same budget; the
  mean over the paired seeds, its 95% interval and p-value (stats.mean_interval: Student-t over
  seeds with the eval sample's noise folded in).
- speedup: per seed, the baseline's seed s reading the variant's seed s (budget mode: the budget
  the baseline's own loss(log budget) line needs for the variant's final loss / the variant's
  budget; curve mode: the baseline's steps / the step at which the variant crosses the baseline's
  final loss); the interval is a t on log speedup (a ratio: multiplicative, never below 0),
  exponentiated: a geometric mean with its interval. The eval noise enters through the slope
  of the line the speedup is read from.

Seeds are paired only when both sides finished; a seed that finished on one side only is listed
in `unpaired` with the other side's state, never silently dropped. One paired seed: the eval
noise is all that is known ("one seed: eval noise only", with today's 2-standard-error rule).
A seed that never reaches the baseline's loss has no finite speedup: the row gives that bound
and no interval.
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

from ablate.report import stats
from ablate.report.speedup import NOISE_SIGMAS, budget_needed, crossing_value

COLUMNS = ["group", "variant", "budget", "lr", "baseline_lr", "n_pairs", "paired_seeds", "unpaired",
           "loss_diff", "loss_lo", "loss_hi", "loss_p", "loss_sd", "loss_eval_sd", "loss_df", "loss_verdict",
           "within_noise", "speedup_mode", "speedup_n", "speedup", "speedup_lo", "speedup_hi", "speedup_p",
           "log_speedup_sd", "log_speedup_eval_sd", "speedup_verdict", "speedup_bound", "speedup_extrapolated",
           "seed_seconds", "device", "cell_id", "baseline_cell_id", "note"]


RUN_FIELDS = ["run_id", "cell_id", "seed", "state", "final_val_loss", "final_step", "wall_s", "device_name", "device"]


class _Runs:
    """The runs' few fields this module reads, per cell (a grid's runs have ~150 columns:
    taking whole rows is most of the time on a 1,000-run grid)."""

    def __init__(self, runs: pd.DataFrame):
        narrow = runs.reindex(columns=RUN_FIELDS)
        self.by_cell = {c: g.to_dict("records") for c, g in narrow.groupby("cell_id", sort=False)}

    def finished(self, cell_id) -> dict:
        """{seed: run} of a cell's finished runs with a final loss."""
        return {int(r["seed"]): r for r in self.by_cell.get(cell_id, [])
                if r["state"] == "done" and pd.notna(r["final_val_loss"])}

    def states(self, cell_id) -> dict:
        return {int(r["seed"]): r["state"] for r in self.by_cell.get(cell_id, [])}


def _unpaired(v_states: dict, b_states: dict, paired: list) -> str:
    """'seed 2 (variant done, baseline failed)' for every seed that finished on one side only."""
    out = []
    for s in sorted(set(v_states) | set(b_states)):
        if s in paired:
            continue
        v, b = v_states.get(s, "no run"), b_states.get(s, "no run")
        if "done" in (v, b):
            out.append(f"seed {s} (variant {v}, baseline {b})")
    return "; ".join(out)


def _num(x) -> float:
    return float(x) if x is not None and pd.notna(x) else math.nan


def _log_budget_slope(bud, los, loss: float) -> float:
    """|d log(budget) / d loss| of the baseline's line at `loss`: how far an eval error moves a
    budget-mode speedup (in log units per unit of loss)."""
    eps = 1e-6
    hi, lo = budget_needed(bud, los, loss - eps)[0], budget_needed(bud, los, loss + eps)[0]
    return abs(math.log(hi) - math.log(lo)) / (2 * eps) if hi > 0 and lo > 0 else math.nan


def _budget_speedups(v: pd.Series, v_seeds: dict, base_lines: dict) -> tuple[dict, list, list]:
    """Per seed: (speedup, side) from the baseline's own seed; the slopes for the eval noise."""
    out, slopes = {}, []
    for s, row in v_seeds.items():
        line = base_lines.get(s)
        if line is None:
            continue
        bud, los = line
        needed, side = budget_needed(bud, los, row["final_val_loss"])
        out[s] = (needed / v.max_iters, side)
        slopes.append(_log_budget_slope(bud, los, row["final_val_loss"]))
    return out, slopes, []  # budget mode reads every seed off a line: none is censored


def _curve_speedups(v_seeds: dict, b_seeds: dict, hits: dict) -> tuple[dict, list, list]:
    """Per paired seed: (speedup, None) where the variant crossed the baseline seed's final loss;
    seeds without a finite speedup in `censored` as "never" (the variant never got there: below
    1x) or "at init" (there at step 0: unbounded); the slopes for the eval noise."""
    out, slopes, censored = {}, [], []
    for s in sorted(v_seeds.keys() & b_seeds.keys()):
        h = hits.get((v_seeds[s]["run_id"], b_seeds[s]["final_val_loss"]))
        if h is None or not crossing_value(h, "step") > 0:
            censored.append("never" if h is None else "at init")
            continue
        step = crossing_value(h, "step")
        out[s] = (b_seeds[s]["final_step"] / step, None)
        dl = _num(h["prev_val_loss"]) - _num(h["val_loss"])
        dstep = _num(h["step"]) - _num(h["prev_step"])
        slopes.append(abs(dstep / dl) / step if dl and math.isfinite(dl) and math.isfinite(dstep) else math.nan)
    return out, slopes, censored


def _speedup(per_seed: dict, slopes: list, censored: list, eval_sd: float, n_total: int) -> dict:
    """The speedup columns from per-seed speedups: geometric mean and interval (t on log)."""
    slope = float(np.nanmean(slopes)) if len(slopes) and not np.isnan(slopes).all() else math.nan
    log_eval = slope * eval_sd if math.isfinite(slope) and math.isfinite(eval_sd) else 0.0
    ratios = [sp for sp, _ in per_seed.values() if sp > 0 and math.isfinite(sp)]
    est = stats.mean_interval(np.log(ratios), log_eval)
    mean, lo, hi = est.scaled(math.exp)
    cols = {"speedup_n": est.n, "speedup": mean, "speedup_lo": lo, "speedup_hi": hi, "speedup_p": est.p,
            "log_speedup_sd": est.sd, "log_speedup_eval_sd": log_eval, "speedup_verdict": est.verdict,
            "speedup_bound": "", "speedup_extrapolated": any(side for _, side in per_seed.values())}
    if censored:  # a seed without a finite speedup: the bound, no interval
        bound = "; ".join(f"{'< 1x' if kind == 'never' else 'at the baseline loss at step 0'} in "
                          f"{censored.count(kind)} of {n_total} seeds" for kind in dict.fromkeys(censored))
        cols.update(speedup=math.nan, speedup_lo=math.nan, speedup_hi=math.nan, speedup_p=math.nan,
                    speedup_bound=bound, speedup_verdict="bound only")
    elif cols["speedup_extrapolated"] and est.n:
        cols["speedup_verdict"] += " (extrapolated)"
    return cols


def _targets(jobs: list) -> pd.DataFrame:
    """Curve mode's (variant run, baseline seed's final loss) pairs, for one Store.crossings call."""
    rows = [{"run_id": v_seeds[s]["run_id"], "target": b_seeds[s]["final_val_loss"]}
            for *_, v_seeds, b_seeds, budget_mode in jobs if not budget_mode for s in v_seeds.keys() & b_seeds.keys()]
    return pd.DataFrame(rows, columns=["run_id", "target"])


def paired(store, grid: str, runs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    """One row per variant per budget (best lrs) in groups with a finished baseline: COLUMNS."""
    reps = cells[cells.best_lr]
    runs = _Runs(runs)
    jobs = []
    for group, sub in reps.groupby("group", sort=False):
        base = sub[sub.is_baseline].sort_values("max_iters")
        if base.empty:
            continue
        base_cells = {int(c.max_iters): c for c in base.itertuples()}
        base_seeds = {b: runs.finished(c.cell_id) for b, c in base_cells.items()}
        budget_mode = len(base_cells) >= 2
        lines = {}  # seed -> the baseline's own (budgets, losses), two budgets or more
        for s in sorted({s for seeds in base_seeds.values() for s in seeds}):
            pts = [(b, seeds[s]["final_val_loss"]) for b, seeds in sorted(base_seeds.items()) if s in seeds]
            if len(pts) >= 2:
                lines[s] = ([b for b, _ in pts], [x for _, x in pts])
        for _, v in sub[~sub.is_baseline].sort_values(["vorder", "max_iters"]).iterrows():
            b_cell = base_cells.get(int(v.max_iters))
            jobs.append((group, v, b_cell, lines, runs.finished(v.cell_id),
                         base_seeds.get(int(v.max_iters), {}), budget_mode))
    hits = store.crossings(grid, _targets(jobs)) if jobs else pd.DataFrame()
    hits = {(r["run_id"], r["target"]): r for r in hits.to_dict("records")}
    rows = [_row(runs, hits, *job) for job in jobs]
    return pd.DataFrame(rows, columns=COLUMNS)


def _row(runs: _Runs, hits, group, v, b_cell, lines, v_seeds, b_seeds, budget_mode) -> dict:
    pairs = sorted(v_seeds.keys() & b_seeds.keys())
    b_states = runs.states(b_cell.cell_id) if b_cell is not None else {}
    eval_sd = math.sqrt(_num(v.eval_se_val_loss) ** 2 + (_num(b_cell.eval_se_val_loss) ** 2 if b_cell is not None
                                                          else math.nan))
    loss = stats.mean_interval([v_seeds[s]["final_val_loss"] - b_seeds[s]["final_val_loss"] for s in pairs], eval_sd)
    notes = []
    if b_cell is None:
        notes.append(f"the baseline has no cell at {int(v.max_iters):,} steps: no loss difference")
    if not math.isfinite(eval_sd):
        notes.append("no eval standard error recorded: seed spread only")
    if budget_mode:
        per_seed, slopes, censored = _budget_speedups(v, v_seeds, lines)
        n_total = len(v_seeds)
    else:
        per_seed, slopes, censored = _curve_speedups(v_seeds, b_seeds, hits)
        n_total = len(pairs)
    sp = _speedup(per_seed, slopes, censored, eval_sd, n_total)
    if sp["speedup_extrapolated"]:
        notes.append("a seed's speedup lies beyond the baseline's budgets: extrapolated on log(budget)")
    within = bool(loss.n >= 1 and math.isfinite(eval_sd) and abs(loss.mean) < NOISE_SIGMAS * eval_sd)
    if loss.n == 1:
        notes.append(f"one paired seed: {'within' if within else 'beyond'} eval noise "
                     f"(gap {loss.mean:+.4f}, {NOISE_SIGMAS:g} s.e. = ±{NOISE_SIGMAS * eval_sd:.4f})")
    seconds = [r.get("wall_s") for r in v_seeds.values()], [r.get("wall_s") for r in b_seeds.values()]
    seed_seconds = sum(float(np.nanmean([_num(x) for x in side])) if side else math.nan for side in seconds)
    devices = sorted({str(r.get("device_name") or r.get("device")) for r in [*v_seeds.values(), *b_seeds.values()]})
    return {"group": group, "variant": v.variant, "budget": int(v.max_iters), "lr": v.lr,
            "baseline_lr": b_cell.lr if b_cell is not None else math.nan, "n_pairs": len(pairs),
            "paired_seeds": ",".join(map(str, pairs)),
            "unpaired": _unpaired(runs.states(v.cell_id), b_states, pairs),
            "loss_diff": loss.mean, "loss_lo": loss.lo, "loss_hi": loss.hi, "loss_p": loss.p, "loss_sd": loss.sd,
            "loss_eval_sd": eval_sd, "loss_df": loss.df, "loss_verdict": loss.verdict, "within_noise": within,
            "speedup_mode": "budget" if budget_mode else "curve", **sp, "seed_seconds": seed_seconds,
            "device": ", ".join(devices), "cell_id": v.cell_id,
            "baseline_cell_id": b_cell.cell_id if b_cell is not None else None, "note": "; ".join(notes)}
