"""The numbers of a report, without its files: who is compared with whom, speedups, the seed-paired
statistics, effects and interactions, and the loss-vs-budget fits. No charts, no altair.

    a = analyse(store, "quickstart", {"baseline": {"arch": "gpt"}})
    a.paired     # per variant and budget: paired loss difference and speedup with intervals

make_report draws and writes these; `ablate plan --seeds-for` reads a pilot's `paired` (the
seed-to-seed spread of the differences) through the same function.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from ablate.report import compare as cmp
from ablate.report import effects as eff
from ablate.report import paired as prd
from ablate.report import scaling as scl
from ablate.report import speedup as spd


@dataclass
class Analysis:
    runs: pd.DataFrame       # every run, annotated (group, variant, is_baseline, ...)
    comparison: object       # compare.Comparison, None for a grid without runs
    cells: pd.DataFrame      # compare.cells: one row per cell, best lr marked
    speedup: pd.DataFrame    # speedup.COLUMNS: curve and budget modes, mean ± s.e. over seeds
    paired: pd.DataFrame     # paired.COLUMNS: seed-paired differences and speedups
    effects: pd.DataFrame    # effects.COLUMNS: main effects and two-way interactions
    fits: pd.DataFrame       # scaling.FIT_COLUMNS: L(t) = E + A t^-alpha per variant
    scaling: pd.DataFrame    # scaling.CURVE_COLUMNS: S(t) per variant, measured and extrapolated


def load_runs(store, grid: str, run_ids=None) -> pd.DataFrame:
    """Every run of the grid (of `run_ids` only, when given: the runs a grid file plans) with its
    final loss / step / tokens / seconds (the `final` view's)."""
    only = "" if run_ids is None else "and r.run_id in (select unnest(?::VARCHAR[]))"
    return store.query(f"""
        select r.* replace (f.final_val_loss as final_val_loss, f.final_train_loss as final_train_loss),
               f.final_step, f.final_tokens, f.final_elapsed
        from runs r join final f on r.grid = f.grid and r.run_id = f.run_id
        where r.grid = ? {only} order by r.run_id""", [grid] + ([list(run_ids)] if run_ids is not None else []))


PARTS = ("speedup", "paired", "effects", "scaling")


def analyse(store, grid: str, compare: dict | None, parts=PARTS, run_ids=None) -> Analysis:
    """The grid's numbers, over `run_ids` only when given (the runs a grid file plans: a report
    covers exactly those); `parts` leaves out what a caller does not read (the seed planner needs
    only "paired"): a part left out is an empty table."""
    runs = cmp.plain(load_runs(store, grid, run_ids))
    comp = cmp.resolve(runs, compare) if len(runs) else None
    if comp is not None:
        runs = cmp.annotate(runs, comp)
    else:
        runs = runs.assign(group=[], mgroup=[], variant=[], is_baseline=[], budget_tokens=[], gorder=[], morder=[],
                           vorder=[])
    stats = store.cell_stats(grid, run_ids)[["cell_id", *cmp.CELL_STATS]]
    cells = cmp.cells(runs, stats)
    out = Analysis(runs, comp, cells, pd.DataFrame(columns=spd.COLUMNS), pd.DataFrame(columns=prd.COLUMNS),
                   pd.DataFrame(columns=eff.COLUMNS), pd.DataFrame(columns=scl.FIT_COLUMNS),
                   pd.DataFrame(columns=scl.CURVE_COLUMNS))
    if not len(runs):
        return out
    if "speedup" in parts:
        out.speedup = spd.speedups(store, grid, runs, cells)
    if "paired" in parts:
        out.paired = prd.paired(store, grid, runs, cells)
    if "effects" in parts:
        out.effects = eff.effects(runs, cells, comp)
    if "scaling" in parts:
        out.fits, out.scaling = scl.scaling(runs, cells)
    return out
