"""`ablate report`: what each change buys, from the store. No torch.

    make_report(store, "quickstart", {"baseline": {"arch": "gpt"}, "group_by": ["context"]},
                "reports/quickstart", plan_estimates={run_id: memory_breakdown},
                planned=[{"run_id": ..., **config}], simulated={run_id: memtrack breakdown})

writes, into out_dir: loss_curves, loss_vs_tokens, speedup, memory, size, throughput, and when
there is something to show lr_sweep (the grid sweeps lr), effects (a factorial grid) and
speedup_vs_budget (three budgets or more), each as .png and .svg; speedup.csv, paired.csv,
tradeoffs.csv, effects.csv, scaling.csv, scaling_fits.csv, memory.csv, size.csv (raw numbers,
bytes); summary.md (every table); index.html (every chart and table, JavaScript inlined, opens
offline). Works on a grid that is still running (curves so far, "not reached yet") or empty (a
report that says what is missing). The speedup, paired, effects and scaling tables are also
stored in DuckDB tables of those names for `ablate query`.

The report's parts: analysis (the numbers: compare, speedup, paired, effects, scaling over
stats), tables (memory, size, throughput, lr sweep, status), tradeoffs (three speedups),
charts and stat_charts (altair), render and render_stats (files); this module puts them
together.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from ablate.core import plugin_keys
from ablate.core.errors import value_text
from ablate.report import charts, render, render_stats, stat_charts, tables, tradeoffs
from ablate.report import compare as cmp
from ablate.report.analysis import analyse

MAX_CHART_ROWS = 4500  # under altair's 5,000-row limit, whatever the grid size


def _not_planned(store, grid: str, run_ids) -> list:
    """The run ids of the grid's name in the store that its file does not plan (another version
    of the file, another file with the same name): left out of the report, and said so."""
    if run_ids is None:
        return []
    return store.query("select run_id from runs where grid = ? and run_id not in (select unnest(?::VARCHAR[])) "
                       "order by run_id", [grid, list(run_ids)]).run_id.tolist()


def _curves(store, grid: str, cells: pd.DataFrame, run_ids=None) -> tuple[pd.DataFrame, str]:
    """The curves to draw (each cell's representative, downsampled in SQL so that all of them
    fit under MAX_CHART_ROWS) and a note when there were too many to draw them all."""
    reps = cells[cells.rep]
    note = ""
    if len(reps) > MAX_CHART_ROWS // 2:  # two points a curve at least
        note = f"first {MAX_CHART_ROWS // 2} of {len(reps)} curves drawn"
        reps = reps.head(MAX_CHART_ROWS // 2)
    if not len(reps):
        return pd.DataFrame(columns=["cell_id", "step", "tokens", "val_loss", "group", "variant", "series",
                                     "max_iters", "lr"]), note
    per_curve = max(2, min(300, MAX_CHART_ROWS // len(reps)))
    cur = store.curves(grid, reps.cell_id.tolist(), max_points=per_curve, run_ids=run_ids)
    # the legend names each curve's lr whenever lrs differ (per-arch lrs, or a sweep's best lrs)
    named = (cells.n_lrs > 1).any() or reps.lr.nunique() > 1
    reps = reps.assign(series=[f"{v}, lr {lr:g}" if named else v for v, lr in zip(reps.variant, reps.lr)])
    cur = cur.merge(reps[["cell_id", "group", "variant", "series", "max_iters", "lr", "gorder", "vorder"]],
                    on="cell_id")
    return cur.sort_values(["gorder", "vorder", "max_iters", "cell_id", "step"], ignore_index=True), note


def _method(runs: pd.DataFrame, comp, cells: pd.DataFrame) -> list[str]:
    """How the comparison was made, in words: baseline, groups, variants, lr sweep, budgets, eval."""
    base = " ".join(f"{k}={value_text(v)}" for k, v in comp.baseline.items())
    lines = [f"Baseline: {base}. " + (f"Compared within each {', '.join(comp.group_by)}" if comp.group_by else
                                     "All cells form one comparison group")
             + (f"; variants differ in {', '.join(comp.variant_keys)}." if comp.variant_keys else ".")]
    if len(cells) and (cells.n_lrs > 1).any():
        lines.append("lr sweep: each variant stands at its best lr (lowest mean final val loss) at each budget, "
                     "as in the nGPT paper; the lr sweep chart shows every lr.")
    if len(cells) and (cells.groupby("group").max_iters.nunique() > 1).any():
        lines.append("Several budgets (max_iters, each with its own full lr schedule) in a group: budget-mode "
                     "speedup = the budget the baseline needs to match a variant's final loss / the variant's.")
    windows = (runs.eval_iters * runs.batch_size).dropna()
    if len(windows):
        n = f"{int(windows.min()):,}" + (f"-{int(windows.max()):,}" if windows.nunique() > 1 else "")
        lines.append(f"Val loss: {n} fixed windows of the val split per eval, the same for every cell of a "
                     "context whatever its seed; a gap under 2 eval standard errors is reported as "
                     "within eval noise, not as a result.")
    return lines


def _answer(sp: pd.DataFrame, cells: pd.DataFrame, runs: pd.DataFrame, paired: pd.DataFrame) -> list[str]:
    """The result in plain words: per group and variant, its speedups by budget (budget mode,
    the paper's, when the grid has it), the seed-paired loss differences and their verdicts, and
    what the seeds can and cannot say."""
    lines = []
    for (group, variant), rows in sp.groupby(["group", "variant"], sort=False):
        mode = "budget" if (rows["mode"] == "budget").any() else "curve"
        rows = rows[rows["mode"] == mode].sort_values("budget")
        base = cells[(cells.group == group) & cells.is_baseline].variant
        lines.append(f"Result{'' if group == 'all' else f' ({group})'}: {variant} vs "
                     f"{base.iloc[0] if len(base) else 'the baseline'}, {mode}-mode speedup: "
                     + "; ".join(f"{d} at {b:,} steps" for d, b in zip(rows.display, rows.budget)) + ".")
    for (group, variant), rows in paired.groupby(["group", "variant"], sort=False):
        parts = [f"{b:,} steps {render_stats.interval(d, lo, hi) if n > 1 else f'{d:+.4f}'} ({v})"
                 for b, d, lo, hi, n, v in zip(rows.budget, rows.loss_diff, rows.loss_lo, rows.loss_hi, rows.n_pairs,
                                                rows.loss_verdict) if n > 0]
        if parts:
            lines.append(f"Seed-paired{'' if group == 'all' else f' ({group})'}: {variant} - baseline final val loss, "
                         "95% interval: " + "; ".join(parts) + ".")
    done = runs[runs.state == "done"]
    if lines and len(done) and done.groupby("cell_id").seed.nunique().max() == 1:
        lines.append("One seed per cell: ± and noise ranges are the eval's standard errors only; how much "
                     "another seed would move a result is not measured by this grid.")
    return lines


def _intro(grid: str, runs: pd.DataFrame, comp, status: dict, cells: pd.DataFrame,
           sp: pd.DataFrame, paired: pd.DataFrame, ignored: list, reused: dict) -> list[str]:
    n = status["n_runs"]
    counts = ", ".join(f"{v} {k}" for k, v in sorted(status["counts"].items(), key=lambda kv: -kv[1]))
    lines = [f"{n} runs in the store ({counts})." if n else
             f"No runs of grid '{grid}' in the store: nothing has been submitted yet (or runs/ is elsewhere)."]
    if reused:
        by = sorted(set(reused.values()))
        lines.append(f"{len(reused)} cells are shared with other grids ({', '.join(by)}) that ran them first: "
                     "reused, not trained again (" + ", ".join(sorted(reused)[:10]) + (" ..." if len(reused) > 10
                                                                                        else "") + ").")
    if ignored:
        lines.append(f"{len(ignored)} other runs of grid '{grid}' in the store are not cells of this grid file "
                     "(another version of it, or another file with the same name) and were left out: "
                     + ", ".join(ignored[:10]) + (" ..." if len(ignored) > 10 else ""))
    if status["missing"]:
        lines.append(f"{len(status['missing'])} planned runs have no run dir yet (not submitted): "
                     + ", ".join(status["missing"][:10]) + (" ..." if len(status["missing"]) > 10 else ""))
    running = status["counts"].get("running", 0) + status["counts"].get("queued", 0) + status["counts"].get("pending", 0)
    if running:
        lines.append(f"{running} runs not finished: their curves are shown so far; losses, speedups and sizes "
                     "count finished seeds only.")
    if comp is not None:
        lines += _answer(sp, cells, runs, paired) + _method(runs, comp, cells) + comp.notes
    used = sorted(set(runs.plugins.dropna())) if "plugins" in runs and len(runs) else []
    if used:
        lines.append(f"Plugins used: {', '.join(used)}. No formula knows a plugin: the memory estimate of a cell "
                     "that uses one is the plan's simulated step, its size before it runs unknown.")
    return lines


def _with_planned(runs: pd.DataFrame, planned: list | None, compare: dict | None) -> pd.DataFrame:
    """The runs plus the grid's cells that have no run yet (state "planned"), labelled together:
    the memory chart shows what the plan simulated for those."""
    have = set(runs.run_id)
    todo = [p for p in planned or [] if p["run_id"] not in have]
    if not todo:
        return None
    rows = pd.DataFrame([{**p, "state": "planned", "config_json": json.dumps(
        {k: v for k, v in p.items() if k != "run_id"}, sort_keys=True, default=str),
        "plugins": plugin_keys.used_text(p) if p.get("plugins") else None} for p in todo])  # as ingest
    rows = rows.reindex(columns=list(dict.fromkeys([*runs.columns, *rows.columns])))  # every column a run has
    both = cmp.plain(pd.concat([runs, rows], ignore_index=True) if len(runs) else rows)
    return cmp.annotate(both, cmp.resolve(both, compare))


def make_report(store, grid_name: str, compare: dict | None, out_dir, plan_estimates: dict | None = None,
                log_x: bool = False, planned: list | None = None, simulated: dict | None = None,
                reused: dict | None = None, world_size: int | None = None) -> dict:
    """Write the report of one grid into out_dir (log_x: loss curves on a log step / token axis;
    planned: every cell of the grid file as {"run_id", **config}, and the runs the report covers (other
    runs of the same grid name in the store are left out, and counted); simulated: the plan's cached memory
    simulations by run_id, shown for the cells that have not run; reused: {run_id: grid folder} of the
    cells another grid ran, named in the intro; world_size: the grid's processes per job, for the
    memory of cells not run); returns {"paths": {name: Path},
    "speedup", "memory", "knobs", "size", "throughput", "cells", "lr_sweep", "paired", "tradeoffs",
    "effects", "fits", "scaling" (DataFrames), "status" (dict), "comparison"}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    run_ids = None if planned is None else [p["run_id"] for p in planned]  # the report covers exactly these
    a = analyse(store, grid_name, compare, run_ids=run_ids)
    runs, comp, cells, sp = a.runs, a.comparison, a.cells, a.speedup
    mem_runs = _with_planned(runs, planned, compare)  # None: every planned cell has run
    mem_runs = runs if mem_runs is None else mem_runs
    mem, sz, th = tables.memory(mem_runs, plan_estimates, simulated, world_size), tables.size(runs), tables.throughput(runs)
    kn = tables.knobs(mem_runs, mem, th)
    lr = tables.lr_sweep(cells)
    status = tables.status(runs, plan_estimates)
    curves, curve_note = _curves(store, grid_name, cells, run_ids) if len(runs) else (pd.DataFrame(), "")

    trade = tradeoffs.three_speedups(a.paired, runs, th, mem)

    swept = bool(len(cells)) and bool((cells.n_lrs > 1).any())
    figs = {"loss_curves": charts.loss_curves(curves, "step", curve_note, log_x, swept),
            "loss_vs_tokens": charts.loss_curves(curves, "tokens", curve_note, log_x, swept),
            "speedup": charts.speedup(sp), "memory": charts.memory(mem), "size": charts.size(sz),
            "throughput": charts.throughput(th)}
    optional = {"lr_sweep": (lr, lambda: charts.lr_sweep(lr)),
                "effects": (a.effects, lambda: stat_charts.effects(a.effects)),
                "speedup_vs_budget": (a.scaling, lambda: stat_charts.speedup_vs_budget(a.scaling, a.paired))}
    for name, (data, chart) in optional.items():
        if len(data):
            figs[name] = chart()
        else:  # a previous report's chart would describe other runs
            for suffix in (".png", ".svg"):
                (out / f"{name}{suffix}").unlink(missing_ok=True)
    specs = render.write_charts(figs, out)

    paths = {name: out / f"{name}.png" for name in figs}
    for name, df in (("speedup", sp), ("memory", mem), ("size", sz), ("knobs", kn), ("paired", a.paired),
                     ("tradeoffs", trade), ("effects", a.effects), ("scaling", a.scaling), ("scaling_fits", a.fits)):
        df.to_csv(out / f"{name}.csv", index=False)
        paths[f"{name}.csv"] = out / f"{name}.csv"

    intro = _intro(grid_name, runs, comp, status, cells, sp, a.paired, _not_planned(store, grid_name, run_ids),
                   reused or {})
    broken = store.broken(grid_name)  # run dirs whose config.json is not their own: listed, never data
    if run_ids is not None:
        broken = broken[broken.run_id.isin(run_ids)]
    if len(broken):
        intro.append(f"{len(broken)} run dirs are broken and were not read: "
                     + "; ".join(f"{r.run_id} ({r.problem})" for r in broken.head(5).itertuples())
                     + (" ..." if len(broken) > 5 else ""))
        status["problems"] += [{"run_id": r.run_id, "state": "broken", "error": r.problem} for r in broken.itertuples()]
    problems = pd.DataFrame(status["problems"])
    sections = [
        ("Speedup vs baseline", "speedup", render.speedup_table(sp) if len(sp) else None),
        ("Is it real? Each variant vs its baseline, seed by seed (95% intervals; README \"Statistics\")", None,
         render_stats.paired_table(a.paired) if len(a.paired) else None),
        ("Speedup in steps, wall clock and memory", None,
         render_stats.tradeoffs_table(trade) if len(trade) else None),
        ("Speedup vs budget: fitted, and extrapolated to 10x the largest budget", "speedup_vs_budget",
         render_stats.scaling_table(a.scaling) if len(a.scaling) else None),
        ("Loss vs budget fits, L(t) = E + A t^-alpha (each budget at its best lr)", None,
         render_stats.fits_table(a.fits) if len(a.fits) else None),
        ("Effects and interactions on final val loss", "effects",
         render_stats.effects_table(a.effects) if len(a.effects) else None),
        ("Validation loss curves", "loss_curves", None),
        ("Validation loss vs tokens", "loss_vs_tokens", None),
        ("Final validation loss per cell (mean ± standard error over seeds; eval s.e.: the eval sample's own)",
         "lr_sweep",
         render.loss_table(cells) if len(cells) else None),
        ("Peak memory per GPU", "memory", render.memory_table(mem) if len(mem) else None),
        ("Memory knobs: memory saved and step time paid", None, render.knobs_table(kn) if len(kn) else None),
        ("Model size", "size", render.size_table(sz) if len(sz) else None),
        ("Throughput", "throughput", render.throughput_table(th) if len(th) else None),
        ("Runs that did not finish cleanly", None, problems if len(problems) else None),
    ]
    sections = [(h, c, t) for h, c, t in sections if t is not None or c in figs]  # nothing to show: no heading
    md = [f"# ablate report: {grid_name}\n", *[f"{l}\n" for l in intro]]
    for heading, chart, table in sections:
        md.append(f"\n## {heading}\n")
        if chart in figs:
            md.append(f"![{chart}]({chart}.png)\n")
        if table is not None:
            md.append("\n" + render.markdown(table))
    (out / "summary.md").write_text("".join(md))
    html_sections = [(h, c, render.html_table(t) if t is not None else "") for h, c, t in sections]
    (out / "index.html").write_text(render.index_html(f"ablate report: {grid_name}", intro, html_sections, specs))
    paths.update({"summary.md": out / "summary.md", "index.html": out / "index.html"})
    for name, df in (("speedup", sp), ("paired", a.paired), ("effects", a.effects), ("scaling", a.scaling)):
        store.put_table(name, grid_name, df)  # an empty table still clears the grid's old rows
    return {"paths": paths, "speedup": sp, "memory": mem, "knobs": kn, "size": sz, "throughput": th, "cells": cells,
            "lr_sweep": lr, "status": status, "comparison": comp, "paired": a.paired, "tradeoffs": trade,
            "effects": a.effects, "fits": a.fits, "scaling": a.scaling}
