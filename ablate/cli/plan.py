"""`ablate plan`: the table, the simulated memory (`--memory`), `--fit`, the seed plan, and
what the plan asks of the model and the trainer (MEASURE: torch only for what it must)."""
from __future__ import annotations

import json
import sys

from ablate.cli.common import cells_of, number, read_grid
from ablate.core.errors import AblateError
from ablate.core.paths import runs_root
from ablate.plan import fit
from ablate.plan.plan import explain, format_table, lr_sweep_warning, plan_rows
from ablate.plan.measured import noise_warnings
from ablate.plan.power import with_detect
from ablate.plan.simcache import Measure, gpu_memory_gib, world_size


# ---- what the plan asks of the model and trainer (only when it must: torch)

def simulate_config(args: tuple) -> dict:
    """The plan's worker for one shape not in the simulation cache (picklable: a module function)."""
    from ablate.train.memtrack import simulate_config as simulate_step  # torch: only for a shape not cached
    return simulate_step(args)


def sizes_for(cfg) -> dict:
    """Parameter counts and checkpoint bytes of a cell that uses a plugin (its model, on meta)."""
    from ablate.train.build import sizes_for as model_sizes  # torch: only for a grid with plugins
    return model_sizes(cfg)


MEASURE = Measure(step=simulate_config, sizes=sizes_for)


def seed_plan(grid, power, rows: list, as_json: bool):
    """The seed plan from the pilot's seeds in the store: the text printed after the plan table,
    or {"seed_plan": records, "pilot": name} for --json."""
    import pandas as pd  # pandas, scipy, DuckDB: only when a seed plan is asked for (plan stays light)

    from ablate.report.analysis import analyse  # same reason
    from ablate.report.seeds import COLUMNS, format_seed_plan, seed_plan as plan_seeds  # same reason
    from ablate.store import Store  # same reason

    pilot = power.pilot or grid.name
    if (runs_root() / pilot).is_dir():
        with Store(runs_root() / "ablate.duckdb") as store:
            store.ingest(runs_root(), grid=pilot)  # the store is a cache of runs/: bring the pilot's runs up to date
            analysis = analyse(store, pilot, grid.compare, parts=("paired",))
        plan, n_runs = plan_seeds(analysis, power), len(analysis.runs)
    else:  # nothing ran: no pilot, and no store created for it (plan writes nothing)
        plan, n_runs = pd.DataFrame(columns=COLUMNS), 0
    if as_json:
        return {"seed_plan": plan.astype(object).where(plan.notna(), None).to_dict("records"), "pilot": pilot}
    n_seeds = len({c.config.seed for c in grid.cells})
    return format_seed_plan(plan, pilot, n_runs, power, grid_flops_per_seed=sum(r["flops"] for r in rows) / n_seeds,
                            n_grid_seeds=n_seeds)


def cmd_plan(args) -> int:
    grid = read_grid(args)
    if warning := lr_sweep_warning(grid):
        print(f"warning: {warning}", file=sys.stderr)
    power = with_detect(grid.power, getattr(args, "seeds_for", None))
    memory = getattr(args, "memory", False)
    capacity = _capacity(grid, args) if memory else None  # a bad --gpu-mem is refused before any work
    fit_gib = getattr(args, "fit", None)
    fit_gib = None if fit_gib is None else number("--fit", fit_gib, "GiB of memory per GPU", above=0)
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    cells = cells_of(grid, args)
    rows = plan_rows(grid, cells, simulate=memory, log=log, measure=MEASURE)
    advice = {} if fit_gib is None else fit.advise(cells, grid.resources.gpus, world_size(grid.resources), fit_gib,
                                                   simulate=memory, measure=MEASURE, log=log)
    for r in rows if advice else ():
        r["fit"] = advice.get(r["run_id"])
    seeds = seed_plan(grid, power, rows, args.json) if power is not None and not args.explain else None
    for warning in noise_warnings(grid.path, rows, power.value if power is not None and power.kind == "loss" else None):
        print(f"warning: {warning}", file=sys.stderr)
    if args.explain:
        match = [r for r in rows if r["run_id"].startswith(args.explain)]
        if not match:
            raise AblateError(f"--explain: no cell with run_id {args.explain!r} in {args.grid}")
        print(explain(match[0]))
    elif args.json:
        print(json.dumps(rows if seeds is None else {"cells": rows, **seeds}, indent=1, default=str))
    else:
        print(f"grid {grid.name}: {grid.path}")
        print(format_table(grid, rows, capacity))
        if advice:
            print()
            print(fit.format_fit(grid, rows, advice, fit_gib, world_size(grid.resources), memory))
        if seeds is not None:
            print()
            print(seeds)
    return 0


def _capacity(grid, args):
    """(GiB, what) of the GPU to check cells against: --gpu-mem, else a GPU named in resources."""
    if args.gpu_mem is not None:
        return number("--gpu-mem", args.gpu_mem, "GiB of GPU memory", above=0), "--gpu-mem"
    found = gpu_memory_gib(grid.resources) if grid.resources.gpus else None
    return (found[0], f"{found[1]} in resources") if found else None
