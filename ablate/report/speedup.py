"""Speedup of each variant over its group's baseline, in the nGPT paper's two modes.

curve mode (one budget): L* = the baseline's final val loss (mean over its finished seeds).
    A variant run's speedup = baseline steps / the first step at which the run's val loss
    reaches L*, linearly interpolated between the two evals around the crossing; the same in
    tokens and in training seconds (evals' `elapsed`). A finished run that never reaches L*
    is "< 1x": that much is certain, the number is not. Runs that failed, diverged, ran out
    of memory or were cancelled give no number (the row shows their state); running runs give
    one once they cross L* ("not reached yet" before). The crossing is found in SQL
    (Store.crossings), so full-resolution curves never reach pandas.
budget mode (the baseline trained at several budgets, each with its own schedule): the
    baseline's final loss is interpolated piecewise-linearly against log(budget); a variant's
    speedup = the budget the baseline needs to match the variant's final loss / the variant's
    budget. Outside the baseline's budgets the line is extrapolated and flagged: what the data
    shows for sure is a bound ("> 4.00x" when the variant beats the baseline's largest budget),
    the extrapolated estimate is printed beside it, never alone.

Seeds: a speedup is computed per variant seed (against the mean baseline); the table gives
the mean and standard error over seeds. Every row names its mode.

Eval noise: every eval records the standard error of its val loss (the spread of its batches).
The gap that a speedup rests on (curve mode: the variant's final loss - L*; budget mode: the
variant's final loss - the baseline's at the same budget) is compared with the two cells' eval
standard errors combined, sigma = sqrt(se_v^2 + se_b^2). Within NOISE_SIGMAS sigma the row
says "within eval noise" instead of a number: the data cannot tell the two apart. (All cells
are scored on the same windows, so the noise of a difference is smaller than this sigma: the
flag errs on the side of claiming less.) Budget mode also gives the speedups that loss +- 2
sigma would read off the baseline's line (noise_lo .. noise_hi).

Best lr: a variant stands at its best lr, which is only an optimum when it is inside the lr
sweep; a best lr at the lowest or highest lr swept is named in the row (lr_note).
"""
from __future__ import annotations

import math

import numpy as np
import pandas as pd

BAD = ("failed", "diverged", "oom", "cancelled")
NOISE_SIGMAS = 2.0  # a gap under this many combined eval standard errors is not a result
COLUMNS = ["group", "variant", "mode", "budget", "baseline_budget", "lr", "baseline_lr", "target_loss",
           "variant_loss", "speedup", "speedup_se", "speedup_tokens", "speedup_wall", "n_seeds", "n_reached",
           "extrapolated", "bound", "loss_gap", "gap_se", "within_noise", "noise_lo", "noise_hi", "lr_note",
           "display", "note"]


def _mean_se(values) -> tuple[float, float]:
    v = [x for x in map(_num, values) if math.isfinite(x)]  # null (None, NaN, pd.NA) and inf left out
    if not v:
        return math.nan, math.nan
    return float(np.mean(v)), (float(np.std(v, ddof=1) / math.sqrt(len(v))) if len(v) > 1 else math.nan)


def crossing_value(row, col: str) -> float:
    """Value of `col` where the val loss crosses the target, between the previous eval and this one."""
    if row["prev_val_loss"] is None or pd.isna(row["prev_val_loss"]) or pd.isna(row[f"prev_{col}"]):
        return _num(row[col])  # a null (an eval whose tokens or seconds were unreadable) is nan
    l0, l1 = row["prev_val_loss"], row["val_loss"]
    frac = 1.0 if l0 == l1 else (l0 - row["target"]) / (l0 - l1)
    return _num(row[f"prev_{col}"]) + frac * (_num(row[col]) - _num(row[f"prev_{col}"]))


def _fmt(x: float, se: float = math.nan) -> str:
    return f"{x:.2f}x" + (f" ± {se:.2f}" if math.isfinite(se) else "")


def _num(x) -> float:
    return float(x) if x is not None and pd.notna(x) else math.nan


def _noise(gap: float, *ses) -> tuple[float, bool]:
    """(sigma of a gap between cells, whether the gap is within NOISE_SIGMAS of it): sigma is
    nan, and nothing is within noise, when a cell has no recorded eval standard error."""
    sigma = math.sqrt(sum(_num(se) ** 2 for se in ses))
    return sigma, bool(math.isfinite(sigma) and math.isfinite(gap) and abs(gap) < NOISE_SIGMAS * sigma)


def _edge(cell, name: str) -> str:
    """'ngpt's best lr 0.012 is the highest swept' when a cell's best lr is an end of its sweep."""
    return f"{name}'s best lr {cell.lr:g} is the {cell.lr_edge} swept" if cell.lr_edge else ""


def _finish(row: dict, edges: list[str]) -> dict:
    """Say what the data cannot support next to the number: a gap within eval noise replaces
    the number, a best lr at an end of its sweep is named in the display and the note."""
    edges = [e for e in edges if e]
    row["lr_note"] = "; ".join(edges)
    if row["within_noise"]:
        row["note"] = "; ".join(filter(None, [
            f"final losses {row['loss_gap']:+.4f} apart, eval noise ±{NOISE_SIGMAS * row['gap_se']:.4f} "
            f"({NOISE_SIGMAS:g} s.e.): not a result (as measured: {row['display']})", row["note"]]))
        row["display"] = "within eval noise"
    if edges:
        row["display"] += " (best lr at sweep edge)"
        row["note"] = "; ".join(filter(None, [row["note"], ", ".join(edges) + ": not an optimum, so not "
                                              "best-vs-best (sweep beyond it)"]))
    return row


def curve_mode(store, grid: str, runs: pd.DataFrame, cells: pd.DataFrame) -> list[dict]:
    """One row per variant (best lr) per (group, budget) whose baseline has finished seeds."""
    reps = cells[cells.rep]
    jobs, targets = [], []
    for (group, budget), sub in reps.groupby(["group", "max_iters"], sort=False):
        base = sub[sub.is_baseline & sub.best_lr]
        if base.empty:
            continue
        base = base.iloc[0]
        base_runs = runs[(runs.cell_id == base.cell_id) & (runs.state == "done")]
        ref = {"target": base.mean_val_loss, "steps": base_runs.final_step.mean(),
               "tokens": base_runs.final_tokens.mean(), "elapsed": base_runs.final_elapsed.mean(), "lr": base.lr,
               "cell": base}
        for _, v in sub[~sub.is_baseline].iterrows():
            vr = runs.loc[runs.cell_id == v.cell_id, ["run_id", "state"]]  # two fields: rows are ~150 columns wide
            jobs.append((group, budget, v, ref, vr))
            targets += [{"run_id": r, "target": ref["target"]} for r in vr.run_id]
    hits = store.crossings(grid, pd.DataFrame(targets, columns=["run_id", "target"]))
    hits = {r["run_id"]: r for r in hits.to_dict("records")}
    out = []
    for group, budget, v, ref, vr in jobs:
        sp, sp_tok, sp_wall, first_eval = [], [], [], False
        n_never = n_pending = n_bad = n_init = 0
        for r in vr.to_dict("records"):
            h = hits.get(r["run_id"])
            if r["state"] in BAD:  # a diverged run may cross L* on its way: no speedup from it
                n_bad += 1
            elif h is None:
                n_never += r["state"] == "done"
                n_pending += r["state"] != "done"
            elif crossing_value(h, "step") <= 0:  # at or below L* before training: no finite ratio
                n_init += 1
            else:
                first_eval |= pd.isna(h["prev_step"])
                sp.append(ref["steps"] / max(crossing_value(h, "step"), 1e-12))
                sp_tok.append(ref["tokens"] / max(crossing_value(h, "tokens"), 1e-12) if pd.notna(h["tokens"]) else math.nan)
                wall = crossing_value(h, "elapsed") if pd.notna(h["elapsed"]) else math.nan
                sp_wall.append(ref["elapsed"] / wall if wall and wall > 0 and pd.notna(ref["elapsed"]) else math.nan)
        mean, se = _mean_se(sp)
        n_total = len(vr)
        note, bound, display = "", "", ""
        if n_never:
            bound, mean, se = "<", math.nan, math.nan
            display = "< 1x" + (f" ({n_never} of {n_total} seeds)" if n_total > 1 else "")
            note = "never reaches the baseline's final loss"
        elif sp:
            display = ("≥ " if first_eval else "") + _fmt(mean, se)
            bound = "≥" if first_eval else ""
            if first_eval:
                note = "below L* at its first eval: a lower bound"
            if n_pending or n_bad or n_init:
                note = ", ".join(filter(None, [note, f"{n_pending + n_bad + n_init} of {n_total} seeds without a number"]
                                        + ([f"{n_init} at L* at step 0"] if n_init else [])))
        elif n_init:
            display, bound = "at init", "≥"
            note = "at or below the baseline's final loss before training (step 0): no finite speedup"
        elif n_pending:
            display, note = "not reached yet", "still running"
        else:
            display = note = ",".join(sorted(set(vr.state))) or "no runs"
        gap = _num(v.mean_val_loss) - _num(ref["target"])
        sigma, within = _noise(gap, v.eval_se_val_loss, ref["cell"].eval_se_val_loss)
        out.append(_finish({
            "group": group, "variant": v.variant, "mode": "curve", "budget": budget, "baseline_budget": budget,
            "lr": v.lr, "baseline_lr": ref["lr"], "target_loss": ref["target"], "variant_loss": v.mean_val_loss,
            "speedup": mean, "speedup_se": se, "speedup_tokens": _mean_se(sp_tok)[0] if not n_never else math.nan,
            "speedup_wall": _mean_se(sp_wall)[0] if not n_never else math.nan, "n_seeds": n_total,
            "n_reached": len(sp), "extrapolated": False, "bound": bound, "loss_gap": gap, "gap_se": sigma,
            "within_noise": within, "noise_lo": math.nan, "noise_hi": math.nan, "display": display, "note": note},
            [_edge(v, v.variant), _edge(ref["cell"], ref["cell"].variant)]))
    return out


def budget_needed(budgets, losses, loss: float) -> tuple[float, str | None]:
    """Budget at which the baseline's loss(log budget) line first comes down to `loss`.
    Returns (budget, None) inside the measured range, or (extrapolated budget, "above" | "below")
    outside it (nan when the line does not slope down there)."""
    b = np.log(np.asarray(budgets, dtype=float))
    L = np.asarray(losses, dtype=float)
    if loss >= L[0]:
        if loss == L[0]:
            return float(budgets[0]), None
        slope = (L[1] - L[0]) / (b[1] - b[0])
        return (math.exp(b[0] + (loss - L[0]) / slope) if slope < 0 else math.nan), "below"
    for i in range(len(b) - 1):
        if L[i + 1] <= loss <= L[i]:
            frac = (L[i] - loss) / (L[i] - L[i + 1])
            return math.exp(b[i] + frac * (b[i + 1] - b[i])), None
    slope = (L[-1] - L[-2]) / (b[-1] - b[-2])
    return (math.exp(b[-1] + (loss - L[-1]) / slope) if slope < 0 else math.nan), "above"


def loss_at(budgets, losses, budget: float) -> float:
    """The baseline's loss at `budget` on its piecewise-linear loss(log budget) line, the end
    segments extended beyond the measured budgets."""
    b, L, x = np.log(np.asarray(budgets, dtype=float)), np.asarray(losses, dtype=float), math.log(budget)
    i = int(np.clip(np.searchsorted(b, x) - 1, 0, len(b) - 2))
    return float(L[i] + (x - b[i]) * (L[i + 1] - L[i]) / (b[i + 1] - b[i]))


def budget_mode(runs: pd.DataFrame, cells: pd.DataFrame) -> list[dict]:
    """One row per variant cell (best lr at each budget) in groups where the baseline finished
    two or more budgets."""
    out = []
    reps = cells[cells.best_lr]
    for group, sub in reps.groupby("group", sort=False):
        base = sub[sub.is_baseline].dropna(subset=["mean_val_loss"]).sort_values("max_iters")
        if base.max_iters.nunique() < 2:
            continue
        bud, los, bud_tok = base.max_iters.tolist(), base.mean_val_loss.tolist(), base.budget_tokens.tolist()
        base_se = base.eval_se_val_loss.mean()  # nan when no baseline eval recorded one
        base_edges = list(dict.fromkeys(_edge(c, c.variant) for c in base.itertuples()))
        for _, v in sub[~sub.is_baseline].sort_values(["variant", "max_iters"]).iterrows():
            seeds = runs[(runs.cell_id == v.cell_id) & (runs.state == "done")].final_val_loss.dropna()
            per_seed = [budget_needed(bud, los, x) for x in seeds]
            sp = [B / v.max_iters for B, _ in per_seed]
            sp_tok = [budget_needed(bud_tok, los, x)[0] / v.budget_tokens for x in seeds]
            sides = [side for _, side in per_seed]
            mean, se = _mean_se(sp)
            extrap = any(sides)
            # a bound only when every seed is beyond the same end; seeds on both sides of an end
            # give a mean that is partly extrapolated, which the display says
            if sides and all(side == "above" for side in sides):
                bound, edge = ">", bud[-1] / v.max_iters
            elif sides and all(side == "below" for side in sides):
                bound, edge = "<", bud[0] / v.max_iters
            else:
                bound, edge = "", math.nan
            if not sp:
                display = "no finished seeds"
            elif bound:
                display = f"{bound} {edge:.2f}x" + (f" (≈{mean:.2f}x extrapolated)" if math.isfinite(mean) else "")
            else:
                display = _fmt(mean, se) + (" (partly extrapolated)" if extrap else "")
            # the gap at equal budget, and the speedups that the loss +- the eval noise would give
            gap = _num(v.mean_val_loss) - loss_at(bud, los, v.max_iters)
            sigma, within = _noise(gap, v.eval_se_val_loss, base_se)
            lo = hi = math.nan
            if sp and math.isfinite(sigma):
                lo, hi = (budget_needed(bud, los, v.mean_val_loss + sign * NOISE_SIGMAS * sigma)[0] / v.max_iters
                          for sign in (1, -1))
            note = "outside the baseline's budgets: extrapolated on log(budget)" if extrap else ""
            if math.isfinite(lo) and math.isfinite(hi) and not within:
                note = "; ".join(filter(None, [f"eval noise: {lo:.2f}x .. {hi:.2f}x", note]))
            out.append(_finish({
                "group": group, "variant": v.variant, "mode": "budget", "budget": v.max_iters,
                "baseline_budget": ",".join(map(str, bud)), "lr": v.lr, "baseline_lr": math.nan,
                "target_loss": math.nan, "variant_loss": v.mean_val_loss, "speedup": mean, "speedup_se": se,
                "speedup_tokens": _mean_se(sp_tok)[0], "speedup_wall": math.nan, "n_seeds": int(v.n_runs),
                "n_reached": len(sp), "extrapolated": extrap, "bound": bound, "loss_gap": gap, "gap_se": sigma,
                "within_noise": within and bool(sp), "noise_lo": lo, "noise_hi": hi, "display": display,
                "note": note}, [_edge(v, v.variant), *base_edges]))
    return out


def speedups(store, grid: str, runs: pd.DataFrame, cells: pd.DataFrame) -> pd.DataFrame:
    rows = curve_mode(store, grid, runs, cells) + budget_mode(runs, cells)
    df = pd.DataFrame(rows, columns=COLUMNS)
    if len(df):  # the cells' display order: groups by value, then variants, then mode and budget
        order = cells.drop_duplicates(["group", "variant"]).set_index(["group", "variant"])[["gorder", "vorder"]]
        df = df.join(order, on=["group", "variant"]).sort_values(["gorder", "vorder", "mode", "budget"], kind="stable")
        df = df.drop(columns=["gorder", "vorder"]).reset_index(drop=True)
    return df
