"""The `ablate` command: parse, call one function, print. Thin on purpose.

plan, status, report, query and cancel never import torch, so they start fast on a login node;
only `train` (and the jobs it runs) do.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from ablate.errors import AblateError


def _grid(args):
    from ablate.plan.grid import load_grid

    grid = load_grid(args.grid)
    for w in grid.warnings:
        print(f"warning: {w}", file=sys.stderr)
    return grid


def _cells(grid, args):
    from ablate.plan.grid import select

    return select(grid.cells, getattr(args, "where", None) or [])


def cmd_plan(args) -> int:
    from ablate.plan.plan import explain, format_table, lr_sweep_warning, plan_rows

    grid = _grid(args)
    if warning := lr_sweep_warning(grid):
        print(f"warning: {warning}", file=sys.stderr)
    rows = plan_rows(grid, _cells(grid, args))
    if args.explain:
        match = [r for r in rows if r["run_id"].startswith(args.explain)]
        if not match:
            raise AblateError(f"--explain: no cell with run_id {args.explain!r} in {args.grid}")
        print(explain(match[0]))
    elif args.json:
        print(json.dumps(rows, indent=1, default=str))
    else:
        print(f"grid {grid.name}: {grid.path}")
        print(format_table(grid, rows))
    return 0


def _retry(value):
    return tuple(v.strip() for v in value.split(",")) if value else ()


def cmd_submit(args) -> int:
    from ablate.launch.submit import default_executor, submit

    grid = _grid(args)
    submit(grid, _cells(grid, args), executor=args.executor or default_executor(), retry=_retry(args.retry),
           force=args.force, jobs=args.jobs, gpus=args.gpus, array_parallelism=args.array_parallelism,
           wait=True if args.verb == "run" else args.wait, detach=args.detach and args.verb != "run")
    return 0


def cmd_report(args) -> int:
    from ablate.plan import estimate
    from ablate.plan.grid import reports_root, runs_root
    from ablate.report import make_report
    from ablate.store import Store

    grid = _grid(args)
    store = Store(Path(args.db) if args.db else runs_root() / "ablate.duckdb")
    store.ingest(runs_root(), grid=grid.name, rebuild=args.rebuild)
    out = reports_root() / grid.name
    estimates = {c.run_id: estimate.memory_breakdown(c.config) for c in grid.cells}
    make_report(store, grid.name, grid.compare, out, plan_estimates=estimates, log_x=args.log_x)
    print(f"report written to {out}/ (index.html, summary.md, charts)")
    summary = out / "summary.md"
    if summary.exists() and not args.quiet:
        print(summary.read_text())
    return 0


def cmd_run(args) -> int:
    print("== plan")
    args.json, args.explain = False, None
    cmd_plan(args)
    print("== submit")
    cmd_submit(args)
    print("== report")
    args.db, args.rebuild, args.quiet, args.log_x = None, False, False, False
    return cmd_report(args)


def cmd_status(args) -> int:
    from ablate.launch.status import status_report

    print(status_report(_grid(args) if args.grid else None))
    return 0


def cmd_cancel(args) -> int:
    from ablate.launch.status import cancel

    grid = _grid(args)
    for line in cancel(grid, _cells(grid, args)):
        print(line)
    return 0


def cmd_train(args) -> int:
    from ablate.train.trainer import main as train_main  # the only verb that imports torch

    return train_main([args.run_dir])  # 75 when preempted (checkpoint saved), as the jobs see it


def cmd_data(args) -> int:
    from ablate.train.data import prepare

    dataset = args.dataset if args.dataset != "text" else f"text:{args.file}"
    if args.dataset == "text" and not args.file:
        raise AblateError("ablate data prepare text FILE: FILE is required")
    path = prepare(dataset, args.tokenizer)
    meta = json.loads((Path(path) / "meta.json").read_text())
    print(f"{path}: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens")
    return 0


def cmd_query(args) -> int:
    import pandas as pd

    from ablate.plan.grid import runs_root
    from ablate.store import Store

    store = Store(Path(args.db) if args.db else runs_root() / "ablate.duckdb")
    if not args.no_ingest:
        store.ingest(runs_root())
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
        print(store.query(args.sql).to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablate", description="Declarative GPT architecture ablations.")
    sub = p.add_subparsers(dest="verb", required=True)

    def grid_cmd(name, fn, help_):
        s = sub.add_parser(name, help=help_)
        s.add_argument("grid", help="grid YAML file")
        s.add_argument("--where", action="append", metavar="KEY=VALUE", help="only cells with this value (repeatable)")
        s.set_defaults(fn=fn)
        return s

    s = grid_cmd("plan", cmd_plan, "expand a grid: every cell, its state and its cost (no side effects)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--explain", metavar="RUN_ID", help="memory breakdown of one cell")

    def submit_args(s):
        s.add_argument("--executor", choices=("local", "slurm", "debug"), help="default: slurm if sbatch is on PATH, else local")
        s.add_argument("--retry", nargs="?", const="all", metavar="STATES",
                       help="also re-run failed / diverged / oom / cancelled cells (all, or e.g. failed,oom)")
        s.add_argument("--force", action="store_true", help="retrain cells even if done (deletes their results)")
        s.add_argument("--jobs", type=int, metavar="N", help="local: concurrent jobs on a CPU-only machine (cores divided)")
        s.add_argument("--gpus", metavar="IDS", help="local: GPUs to use, e.g. 0,1,2,3 (default: all visible)")
        s.add_argument("--array-parallelism", type=int, metavar="N", help="slurm: at most N tasks of an array at once")
        s.add_argument("--wait", action="store_true", help="slurm: show progress until every cell has ended")
        s.add_argument("--detach", action="store_true", help="local: return at once, the cells keep running")

    submit_args(grid_cmd("submit", cmd_submit, "run every cell that is not done"))
    s = grid_cmd("report", cmd_report, "ingest run dirs into DuckDB and write reports/<grid>/")
    s.add_argument("--db", help="DuckDB file (default runs/ablate.duckdb)")
    s.add_argument("--rebuild", action="store_true", help="rebuild the store from runs/")
    s.add_argument("--quiet", action="store_true", help="do not print summary.md")
    s.add_argument("--log-x", action="store_true", help="loss curves on a log step / token axis")
    submit_args(grid_cmd("run", cmd_run, "plan + submit + wait + report"))

    s = sub.add_parser("status", help="states of a grid's cells, checked against the scheduler")
    s.add_argument("grid", nargs="?", help="grid YAML file (default: every run under the runs dir)")
    s.set_defaults(fn=cmd_status)
    grid_cmd("cancel", cmd_cancel, "cancel queued/running cells (running ones save a checkpoint)")
    s = sub.add_parser("train", help="train one run dir (what every job runs)")
    s.add_argument("run_dir")
    s.set_defaults(fn=cmd_train)
    s = sub.add_parser("data", help="prepare a data set")
    s.add_argument("action", choices=("prepare",))
    s.add_argument("dataset", help="shakespeare | openwebtext | text")
    s.add_argument("file", nargs="?", help="the UTF-8 file, for 'text'")
    s.add_argument("--tokenizer", choices=("gpt2", "char"), default="gpt2")
    s.set_defaults(fn=cmd_data)
    s = sub.add_parser("query", help="run SQL against the DuckDB store")
    s.add_argument("sql")
    s.add_argument("--db")
    s.add_argument("--no-ingest", action="store_true")
    s.set_defaults(fn=cmd_query)
    return p


def _bare_retry(argv: list[str]) -> list[str]:
    """`--retry GRID.yaml` means --retry=all then the grid: argparse would take the grid as STATES."""
    from ablate.plan.rundir import RETRYABLE

    words = {"all", *RETRYABLE}
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        if a == "--retry" and not set(out[i + 1].split(",")) <= words and not out[i + 1].startswith("-"):
            out[i] = "--retry=all"
    return out


def main(argv=None) -> int:
    args = build_parser().parse_args(_bare_retry(sys.argv[1:] if argv is None else argv))
    try:
        return args.fn(args) or 0
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
