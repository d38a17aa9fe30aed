"""`ablate plan`: what will run, what it will cost, what is already done. No side effects."""
from __future__ import annotations

import glob
import json
import os
from pathlib import Path

from ablate.plan import estimate
from ablate.plan.grid import Grid, runs_root
from ablate.plan.rundir import SUMMARY, read_json, state_of

GIB = 1024 ** 3
# the fields that decide throughput: equal shape + equal device => comparable tokens/s
SHAPE_KEYS = ("arch", "n_layer", "n_head", "n_embd", "n_kv_head", "share_attn", "window", "context",
              "vocab_size", "batch_size", "dtype", "param_dtype", "compile", "attn_backend")


def _shape(cfg: dict) -> tuple:
    return tuple(cfg.get(k) for k in SHAPE_KEYS)


def measured_throughput(root: Path | None = None) -> dict:
    """tokens/s of finished runs in every grid's run dirs, newest wins:
    {(shape, device type): (tokens/s, device name)}."""
    out = {}
    root = Path(root or runs_root())
    for path in sorted(glob.glob(str(root / "*" / "*" / SUMMARY)), key=os.path.getmtime):
        summary = read_json(path) or {}
        config = (read_json(Path(path).parent / "config.json") or {}).get("config", {})
        if summary.get("tokens_per_s") and summary.get("state") == "done":
            out[(_shape(config), summary.get("device"))] = (summary["tokens_per_s"], summary.get("device_name"))
    return out


def _known_throughput(throughput: dict, config: dict, gpus: int):
    """The measured (tokens/s, device name) for a cell: same shape, same device type (the
    config's device; for `auto`, cuda when the grid asks for GPUs, else whichever was measured)."""
    shape, device = _shape(config), config["device"]
    if device == "auto":
        device = "cuda" if gpus else None
    if device is not None:
        return throughput.get((shape, device))
    return throughput.get((shape, "cuda")) or throughput.get((shape, "cpu"))


def plan_rows(grid: Grid, cells=None) -> list[dict]:
    throughput = measured_throughput()
    # list the grid's run dirs once instead of probing 10,000 missing status files
    existing = set(os.listdir(grid.runs_dir)) if grid.runs_dir.is_dir() else set()
    rows = []
    for cell in cells if cells is not None else grid.cells:
        c = cell.config
        params = estimate.param_counts(c)
        mem = estimate.memory_breakdown(c)
        tokens = estimate.total_tokens(c)
        config = c.to_dict()
        known = _known_throughput(throughput, config, grid.resources.gpus) if throughput else None
        rows.append({
            "run_id": cell.run_id,
            "state": state_of(cell.run_dir) if cell.run_id in existing else "new",
            "varied": cell.varied,
            "config": config,
            "n_params": params["total"],
            "n_params_non_embedding": params["non_embedding"],
            "n_params_attention": params["attention"],
            "ckpt_bytes": estimate.checkpoint_bytes(c),
            "tokens": tokens,
            "flops": estimate.total_flops(c),
            "est_peak_mem_bytes": mem["total"],
            "memory": mem,
            "est_hours": (tokens / known[0] / 3600 * max(1, grid.resources.gpus)) if known else None,
            "throughput_device": known[1] if known else None,
            "run_dir": str(cell.run_dir),
        })
    return rows


def _human(n: float, unit: str = "") -> str:
    for div, suffix in ((1e18, "E"), (1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}{unit}"
    return f"{n:.3g}{unit}"


def format_table(grid: Grid, rows: list[dict]) -> str:
    keys = grid.varied_keys
    head = ["run_id", *keys, "state", "params", "tokens", "est_mem", "flops"]
    body = [[r["run_id"], *[str(r["varied"].get(k)) for k in keys], r["state"], _human(r["n_params"]),
             _human(r["tokens"]), f"{r['est_peak_mem_bytes'] / GIB:.2f}GiB", _human(r["flops"])] for r in rows]
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = lambda cols: "  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip()
    out = [line(head), line(["-" * w for w in widths])] + [line(b) for b in body]
    todo = [r for r in rows if r["state"] != "done"]
    hours = [r["est_hours"] for r in todo]
    devices = sorted({str(r["throughput_device"]) for r in todo})
    cost = (f"~{sum(hours):.2f} {'GPU-' if grid.resources.gpus else ''}hours (from measured tokens/s on "
            f"{', '.join(devices)})"
            if todo and all(h is not None for h in hours) else f"{_human(sum(r['flops'] for r in todo))}FLOPs")
    out.append("")
    out.append(f"{len(rows)} cells, {len(todo)} to run, {_human(sum(r['tokens'] for r in todo))} tokens to train, "
               f"cost {cost}")
    return "\n".join(out)


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
    mem = row["memory"]
    lines = [f"run {row['run_id']}: estimated peak training memory per process"]
    for part in ("params", "grads", "optimizer", "activations", "logits", "total"):
        lines.append(f"  {part:<12} {mem[part] / GIB:9.3f} GiB")
    lines.append(f"  params: {row['n_params']:,} total, {row['n_params_non_embedding']:,} non-embedding, "
                 f"{row['n_params_attention']:,} attention; checkpoint ~{row['ckpt_bytes'] / 1e6:.1f} MB")
    lines.append("config: " + json.dumps(row["config"], sort_keys=True))
    return "\n".join(lines)
