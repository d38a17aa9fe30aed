"""`ablate plan`: what will run, what it will cost, what is already done. No side effects."""
from __future__ import annotations

import json
import os
from pathlib import Path

from ablate.core import estimate, plugin_keys
from ablate.core.errors import AblateError, value_text
from ablate.core.paths import runs_root
from ablate.core.rundir import CKPT, RETRYABLE, checked_state
from ablate.plan import measured, simcache
from ablate.plan.grid import Grid
from ablate.plan.simcache import HEADROOM, Measure, fits

GIB = 1024 ** 3


def _as_estimate(sim: dict | None) -> dict:
    """A simulated step's categories as the formula's (params, grads, optimizer, activations,
    temps, total); {} when the simulation failed."""
    if not sim or "total" not in sim:
        return {}
    parts = {"params": ("params", "buffers"), "grads": ("grads",), "optimizer": ("optimizer",),
             "activations": ("activations",), "temps": ("temps", "other"), "total": ("total",)}
    return {k: sum(sim.get(c, 0) for c in cats) for k, cats in parts.items()}


def plugin_sizes(cells, gpus: int, measure: Measure, log=None, cached_only: bool = False,
                 world: int | None = None) -> dict:
    """{run_id: (sizes, memory, attention)} for the cells that use a plugin, which no formula
    knows: the model built on the meta device (measure.sizes: param_counts, ckpt_bytes) and one
    simulated step (measure.step: memory, as the formula's categories, and the attention backend
    it ran: "eager" when a score modification forced the T x T fallback; cached as plan
    --memory's; cached_only: {} for a shape not in the cache). Only grids with plugins get here
    (torch)."""
    used = [c for c in cells if c.config.plugins and plugin_keys.used(c.config)]
    if not used:
        return {}
    sims = simcache.simulate(used, gpus, step=None if cached_only else measure.step, log=log, world=world)
    broken = next((s["error"] for s in sims.values() if s.get("plugin_error")), None)
    if broken:
        raise AblateError(broken)
    by_shape: dict = {}
    out = {}
    for cell in used:
        key = json.dumps(simcache.shape_of(cell.config.to_dict()), sort_keys=True, default=str)
        if key not in by_shape:
            by_shape[key] = measure.sizes(cell.config)
        sim = sims.get(cell.run_id) or {}
        out[cell.run_id] = (by_shape[key], _as_estimate(sim), sim.get("attention"))
    return out


def plan_rows(grid: Grid, cells=None, simulate: bool = False, log=None, measure: Measure | None = None) -> list[dict]:
    """One row per cell; simulate: also the simulated memory per category (row["simulated"], from
    the cache, and measure.step for the shapes not in it). A cell that uses a plugin is sized on
    its model (plugin_sizes, with `measure`): "memory_source" says "simulated" instead of
    "formula". Without `measure`: the cache only, and no cell may use a plugin."""
    cells = grid.cells if cells is None else cells
    gpus, world = grid.resources.gpus, simcache.world_size(grid.resources)
    sims = simcache.simulate(cells, gpus, step=measure and measure.step, log=log, world=world) if simulate else {}
    sized = plugin_sizes(cells, gpus, measure, log=log, world=world) if measure else _needs_no_measure(cells)
    finished = measured.finished_runs(runs_root())
    throughput, noise = measured.throughput(finished), measured.Noise(finished)
    # list the grid's run dirs once instead of probing 10,000 missing status files
    existing = (set(os.listdir(grid.runs_dir)) if grid.runs_dir.is_dir() else set()) | set(grid.shared)
    rows = []
    for cell in cells:
        c = cell.config
        attention = None  # a plugin cell's, as its simulated step ran it (the built-in cells': their config's)
        if cell.run_id in sized:
            params, mem, attention = sized[cell.run_id]
            ckpt = params["ckpt_bytes"]
        else:
            params, mem = estimate.param_counts(c), estimate.memory_breakdown(c, world)
            ckpt = estimate.checkpoint_bytes(c)
        tokens = estimate.total_tokens(c)
        config = c.to_dict()
        known = measured.known_throughput(throughput, config, grid.resources.gpus) if throughput else None
        rows.append({
            "run_id": cell.run_id,
            "state": checked_state(cell.run_dir) if cell.run_id in existing else "new",
            "varied": cell.varied,
            "config": config,
            "n_params": params["total"],
            "n_params_non_embedding": params["non_embedding"],
            "n_params_attention": params["attention"],
            "ckpt_bytes": ckpt,
            "tokens": tokens,
            "flops": estimate.total_flops(c, params),
            "est_peak_mem_bytes": mem.get("total"),
            "memory": mem,
            "memory_source": "simulated" if cell.run_id in sized else "formula",
            "attention": attention,
            "est_hours": (tokens / known[0] / 3600 * world) if known else None,  # GPU-hours: every GPU of every node
            "throughput_device": known[1] if known else None,
            "run_dir": str(cell.run_dir),
            **noise.expected(config).as_row(),
            **({"simulated": sims.get(cell.run_id)} if simulate else {}),
        })
    return rows


def _needs_no_measure(cells) -> dict:
    if any(c.config.plugins and plugin_keys.used(c.config) for c in cells):
        raise AblateError("cells that use a plugin are sized on their model: plan_rows needs a Measure")
    return {}


def human_count(n: float) -> str:
    """124M, 2.68B, 950: counts (parameters, tokens, hours) to 3 significant digits."""
    r = float(f"{n:.3g}")  # round first: 999,960 is 1M, not 1e+03k
    if abs(r) >= 1e15:
        return human_flops(r)
    for div, suffix in ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(r) >= div:
            return f"{r / div:g}{suffix}"
    return f"{r:g}"


def human_flops(n: float) -> str:
    """2.3e18: FLOP counts span 1e12 (a CPU demo) to 1e24, which no prefix reads well across."""
    if not n:
        return "0"
    mantissa, exponent = f"{n:.2e}".split("e")
    return f"{mantissa}e{int(exponent)}"


def human_hours(hours: float, gpu: bool) -> str:
    """~45 min, ~5.2 GPU-hours, ~31.2M hours: a duration of compute (summed over cells and GPUs)."""
    unit = "GPU-hours" if gpu else "hours"
    if hours < 1:
        minutes = round(hours * 60)
        return f"{'~' if minutes else '<'}{max(1, minutes)} {'GPU-' if gpu else ''}min"
    return f"~{human_count(hours)} {unit}"


def memory_unit(values) -> tuple[str, float]:
    """GiB, or MiB when every figure is under 1 GiB (a CPU demo's 127 MiB is not "0.12GiB")."""
    values = [v for v in values if v is not None]
    return ("GiB", GIB) if values and max(values) >= GIB else ("MiB", 2 ** 20)


def _num(x: float) -> str:
    return f"{x:.3g}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


MEMORY_COLUMNS = (("weights", ("params", "buffers")), ("grads", ("grads",)), ("optim", ("optimizer",)),
                  ("acts", ("activations",)), ("temps", ("temps", "other")))


def format_table(grid: Grid, rows: list[dict], capacity: tuple[float, str] | None = None) -> str:
    """The plan as a table. Rows with "simulated" (plan --memory) get memory per category;
    capacity: (GiB, what) of the GPU to check each cell against."""
    keys = grid.varied_keys
    sims = [r.get("simulated") or {} for r in rows]
    with_memory = any("total" in s for s in sims)
    unit, scale = memory_unit([r["est_peak_mem_bytes"] for r in rows] + [s.get("total") for s in sims])
    head = ["run_id", *keys, "state", "params", "tokens", "FLOPs", "eval se"]
    if with_memory:
        head += [name for name, _ in MEMORY_COLUMNS] + ["peak", "estimate"] + (["fits"] if capacity else [])
    else:
        head += ["est. peak"]
    body = []
    for r, sim in zip(rows, sims):
        line = [r["run_id"], *[value_text(r["varied"].get(k)) for k in keys], r["state"], human_count(r["n_params"]),
                human_count(r["tokens"]), human_flops(r["flops"]), _se_text(r)]
        est = "n/a" if r["est_peak_mem_bytes"] is None else _num(r["est_peak_mem_bytes"] / scale)
        if with_memory and "total" in sim:
            line += [_num(sum(sim.get(c, 0) for c in cats) / scale) for _, cats in MEMORY_COLUMNS]
            line += [_num(sim["total"] / scale), est] + ([fits(sim["total"], capacity[0])] if capacity else [])
        elif with_memory:
            line += ["n/a"] * len(MEMORY_COLUMNS) + ["n/a", est] + ([""] if capacity else [])
        else:
            line += [f"{est} {unit}" if est != "n/a" else est]
        body.append(line)
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()  # noqa: E731
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    if with_memory:
        out += ["", *_memory_notes(unit, sims, capacity)]
    if any(r.get("memory_source") == "simulated" for r in rows):
        out += ["", "cells that use a plugin: parameters counted on the model (meta device), estimated memory = "
                    "one simulated step (FakeTensorMode), not the formula"]
        out += _eager_attention_note(rows, sims, grid.resources.gpus)
    out += ["", _noise_note(rows)]
    todo = [r for r in rows if r["state"] != "done"]
    hours = [r["est_hours"] for r in todo]
    devices = sorted({str(r["throughput_device"]) for r in todo})
    cost = (f"{human_hours(sum(hours), bool(grid.resources.gpus))} (from measured tokens/s on {', '.join(devices)})"
            if todo and all(h is not None for h in hours) else f"{human_flops(sum(r['flops'] for r in todo))} FLOPs")
    out.append("")
    out.append(f"{len(rows)} cells, {len(todo)} to run{_to_run_split(todo)}, "
               f"{human_count(sum(r['tokens'] for r in todo))} tokens to train, cost {cost}")
    return "\n".join(out)


def _se_text(row: dict) -> str:
    """A cell's expected eval standard error: '0.0066' measured, '~0.0095' from the prior."""
    return f"{'' if row['eval_se_runs'] else '~'}{row['eval_se']:.2g}"


def _noise_note(rows: list[dict]) -> str:
    runs = max(r["eval_se_runs"] for r in rows)
    source = f"measured by up to {runs} finished runs of the same data and context" if runs else ""
    if any(not r["eval_se_runs"] for r in rows):
        source += (", " if source else "") + "~ a prior until a run of the same data and context has finished"
    lo, hi = (f(measured.noise_threshold(r["eval_se"]) for r in rows) for f in (min, max))
    gaps = f"{lo:.2g}" if f"{lo:.2g}" == f"{hi:.2g}" else f"{lo:.2g}-{hi:.2g}"
    line = (f"eval se: the expected standard error of each eval's val loss, {source}; the report calls a gap "
            f"between two cells under 2 sqrt(se1^2 + se2^2) = {gaps} 'within eval noise'")
    seeds = [r for r in rows if r["seed_sd"] is not None]
    if seeds:
        line += (f"; finished seeds of {len(seeds)} cells spread by a s.d. of {min(r['seed_sd'] for r in seeds):.2g}-"
                 f"{max(r['seed_sd'] for r in seeds):.2g} (plan --json: seed_sd)")
    return line


def _to_run_split(todo: list[dict]) -> str:
    """' (3 new, 2 resume from a checkpoint, 1 needs --retry, 1 queued or running)': what a submit
    would do with the cells that are not done (submit's rules: launch/submit.py select_cells)."""
    kinds = {"new": 0, "resume from a checkpoint": 0, "start over": 0, "need --retry": 0, "queued or running": 0}
    for r in todo:
        if r["state"] in ("queued", "running"):
            kinds["queued or running"] += 1
        elif r["state"] in RETRYABLE:
            kinds["need --retry"] += 1
        elif r["state"] == "pending":
            kinds["resume from a checkpoint" if (Path(r["run_dir"]) / CKPT).exists() else "start over"] += 1
        else:  # new, broken (--force)
            kinds["new"] += 1
    parts = [f"{n} {k}" for k, n in kinds.items() if n]
    return f" ({', '.join(parts)})" if len(parts) > 1 or (parts and not kinds["new"]) else ""


def _eager_attention_note(rows: list[dict], sims: list[dict], gpus: int) -> list[str]:
    """A line on the cells whose simulated step ran attention as the exact eager fallback."""
    eager = [(r, s) for r, s in zip(rows, sims) if r.get("attention") == "eager" or s.get("attention") == "eager"]
    if not eager:
        return []
    devices = sorted({s.get("device") or "cpu" for _, s in eager})
    line = (f"cells that modify the attention scores where no kernel on {', '.join(devices)} takes the modification "
            f"({len(eager)}): their attention runs as the exact eager fallback, and its (B, H, T, T) scores are in "
            "their memory (summary.json will say attn_backend eager)")
    if devices == ["cpu"] and any(simcache.target_device(r["config"], gpus) == "cuda" for r, _ in eager):
        line += "; on CUDA FlexAttention runs a score_mod without them, so there the figure is an upper bound"
    return [line]


def _memory_notes(unit: str, sims: list[dict], capacity) -> list[str]:
    devices = sorted({s["device"] for s in sims if "device" in s})
    notes = [f"memory in {unit} per process at the peak of one training step: weights, grads, optim (AdamW "
             "moments), acts (kept for backward), temps (backward temporaries); estimate = the analytical formula",
             f"simulated tensor by tensor under FakeTensorMode on {', '.join(devices) or '-'} dispatch "
             "(torch.distributed._tools MemTracker): the CUDA allocator's rounding and context come on top"]
    if any(s.get("target") == "cuda" and s.get("device") == "cpu" for s in sims):
        notes.append("this torch is a CPU-only build: GPU cells were simulated with CPU kernels and CPU autocast")
    if capacity:
        notes.append(f"fits: peak within {HEADROOM:.0%} of {capacity[0]:g} GiB ({capacity[1]}); tight: within 100%")
    errors = {s["error"] for s in sims if "error" in s}
    notes += [f"n/a: {e}" for e in sorted(errors)]
    return notes


def lr_sweep_warning(grid: Grid) -> str | None:
    """One line when the grid sweeps lr but a variant (at a budget) sweeps fewer than three lrs:
    its best lr is then an end of its sweep, and the report cannot call it an optimum."""
    if "lr" not in grid.varied_keys:
        return None
    sweeps: dict = {}
    for cell in grid.cells:
        key = tuple((k, v) for k, v in cell.varied.items() if k not in ("lr", "min_lr", "seed"))
        sweeps.setdefault(key, set()).add(cell.config.lr)
    short = [(key, lrs) for key, lrs in sweeps.items() if len(lrs) < 3]
    if not short:
        return None
    key, lrs = short[0]
    where = " ".join(f"{k}={v}" for k, v in key) or "every cell"
    return (f"{grid.path}: {len(short)} of {len(sweeps)} lr sweeps have fewer than three lrs (e.g. {where}: "
            f"{', '.join(f'{lr:g}' for lr in sorted(lrs))}); a best lr at an end of its sweep is not known to be "
            "an optimum, so best-vs-best speedups need at least three lrs per variant")


def explain(row: dict) -> str:
    """One cell's memory by category (simulated when the plan ran with --memory, and the
    analytical estimate), its sizes and its resolved config."""
    est, sim = row["memory"], row.get("simulated") or {}
    labels = ("params", "grads", "optimizer", "activations", "temps")  # MEMORY_COLUMNS, spelled out
    parts = [(label, cats) for label, (_, cats) in zip(labels, MEMORY_COLUMNS)] + [("peak", ("total",))]
    unit, scale = memory_unit([est.get("total"), sim.get("total")])
    lines = [f"run {row['run_id']}: peak training memory per process, {unit}"]
    what = "estimate" if row.get("memory_source", "formula") == "formula" else "simulated*"
    lines.append(f"  {'':<11} {'simulated' if 'total' in sim else '':>10} {what:>10}")
    for name, cats in parts:
        simulated = f"{sum(sim.get(c, 0) for c in cats) / scale:10.3f}" if "total" in sim else " " * 10
        estimated = f"{sum(est.get(c, 0) for c in cats) / scale:10.3f}" if est else f"{'n/a':>10}"
        lines.append(f"  {name:<11} {simulated} {estimated}")
    if what != "estimate":
        lines.append("  * this cell uses a plugin: no formula, its estimate is the simulated step")
    if "error" in sim:
        lines.append(f"  simulation: {sim['error']}")
    lines.append(f"  params: {row['n_params']:,} total, {row['n_params_non_embedding']:,} non-embedding, "
                 f"{row['n_params_attention']:,} attention; checkpoint ~{row['ckpt_bytes'] / 1e6:.1f} MB")
    lines.append("config: " + json.dumps(row["config"], sort_keys=True))
    return "\n".join(lines)
