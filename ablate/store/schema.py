"""The DuckDB schema: tables filled from run dirs, and the views the report and `ablate query` read.

Every column of `runs` comes from one place in a run dir, named by the three tables below, so
a renamed field in status.json or summary.json is a one-line change here (nothing else in the
store or the report reads those files by key). Config columns are exactly RunConfig's fields
(typed from their hints); keys the files carry that no column names are kept verbatim in the
*_json columns, so nothing is lost and `json_extract` can reach them.

The store is a cache of runs/: SCHEMA_VERSION changes whenever a column does, and a store with
another version is dropped and rebuilt from the run dirs on open.

Plugin keys (ablate/plan/plugins.py) are columns too, added to `runs` (and to the views) by ingest
when a run that declares them first arrives, typed from their declaration; the `plugins`
column holds the plugins a run used ('qk_norm@<content id>'), null when none. A plugin key may
not take any name in RESERVED_NAMES.
"""
from __future__ import annotations

import hashlib
import json
import typing
from typing import Literal

from ablate.core.config import FIELD_NAMES, FIELD_TYPES, HASHED_NAMES, identity
from ablate.core.rundir import EVAL_FIELDS, METRIC_FIELDS

SCHEMA_VERSION = "10"  # 10: runs.strategy, runs.reshard_after_forward (issue 23); 9: one tokens_per_s, final_* filled while running; 8: runs.plugins and plugin key columns; 7: evals.val_loss_se; 6: broken runs, skipped lines, tracked memory, knobs

# status.json key -> runs column (the config has its own `device`, so status's is `status_device`)
STATUS_COLUMNS = {
    "state": ("state", "VARCHAR"),
    "attempts": ("attempts", "BIGINT"),
    "job_id": ("job_id", "VARCHAR"),
    "executor": ("executor", "VARCHAR"),
    "host": ("host", "VARCHAR"),
    "status_device": ("device", "VARCHAR"),
    "started": ("started", "DOUBLE"),
    "ended": ("ended", "DOUBLE"),
    "heartbeat": ("heartbeat", "DOUBLE"),
    "updated": ("updated", "DOUBLE"),
    "status_step": ("step", "BIGINT"),
    "oom_step": ("oom_step", "BIGINT"),
    "oom_peak_alloc": ("oom_peak_alloc", "BIGINT"),
    "error": ("error", "VARCHAR"),
    "note": ("note", "VARCHAR"),
}

# summary.json key -> runs column. THE place to reconcile summary field names: every field is
# optional (a CPU run has no memory, an unknown GPU no MFU). Keys that repeat the config
# (dtype, compile) or the status (state) are not columns; they stay in summary_json.
SUMMARY_COLUMNS = {
    "params_total": ("params_total", "BIGINT"),
    "params_embedding": ("params_embedding", "BIGINT"),
    "params_non_embedding": ("params_non_embedding", "BIGINT"),
    "params_attention": ("params_attention", "BIGINT"),
    "ckpt_bytes": ("ckpt_bytes", "BIGINT"),
    "peak_alloc": ("peak_alloc", "BIGINT"),
    "peak_reserved": ("peak_reserved", "BIGINT"),
    "device_capacity": ("device_capacity", "BIGINT"),
    # tensor bytes by category at the peak of one tracked step (ablate/train/memtrack.py), any device
    **{f"tracked_{c}": (f"tracked_{c}", "BIGINT") for c in ("params", "buffers", "grads", "optimizer", "activations",
                                                           "temps", "other", "total", "step")},
    "tokens_per_s": ("tokens_per_s", "DOUBLE"),
    "mfu_causal": ("mfu_causal", "DOUBLE"),
    "mfu_nanogpt": ("mfu_nanogpt", "DOUBLE"),
    "peak_flops": ("peak_flops", "DOUBLE"),
    "final_val_loss": ("final_val_loss", "DOUBLE"),
    "final_train_loss": ("final_train_loss", "DOUBLE"),
    "final_eval_step": ("final_eval_step", "BIGINT"),
    "steps": ("steps", "BIGINT"),
    "tokens": ("tokens", "BIGINT"),
    "train_s": ("train_s", "DOUBLE"),
    "wall_s": ("wall_s", "DOUBLE"),
    "attn_backend_used": ("attn_backend", "VARCHAR"),  # what auto resolved to; config has the request
    "device_type": ("device", "VARCHAR"),
    "device_name": ("device_name", "VARCHAR"),
    "world_size": ("world_size", "BIGINT"),
    "torch_version": ("torch_version", "VARCHAR"),
    "ablate_version": ("ablate_version", "VARCHAR"),
}

# config.json top-level keys (beside "config") -> runs column
DOC_COLUMNS = {"version": ("version", "VARCHAR"), "git_sha": ("git_sha", "VARCHAR")}

# jsonl key -> column, in file order; the same names in the files and the tables, typed from the
# run-dir contract's field kinds (core/rundir.py: what every line is checked against)
_SQL_KIND = {"step": "BIGINT", "count": "BIGINT", "float": "DOUBLE"}
EVAL_COLUMNS = {name: _SQL_KIND[kind] for name, kind in EVAL_FIELDS.items()}
TRAIN_COLUMNS = {name: _SQL_KIND[kind] for name, kind in METRIC_FIELDS.items()}

# computed at ingest from the jsonl files: what a running job has reached so far
PROGRESS_COLUMNS = {"n_evals": "BIGINT", "n_train": "BIGINT", "last_step": "BIGINT", "last_tokens": "BIGINT",
                    "last_elapsed": "DOUBLE", "last_val_loss": "DOUBLE", "last_val_loss_se": "DOUBLE",
                    "last_train_loss": "DOUBLE", "max_mem_peak": "BIGINT",
                    "skipped_lines": "BIGINT"}  # jsonl lines skipped: torn, not UTF-8, not JSON objects


def _sql_type(hint) -> str:
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    base = args[0] if typing.get_origin(hint) is typing.Union else hint
    if typing.get_origin(base) is Literal or base in (str, tuple):  # tuple: `plugins`, stored as text
        return "VARCHAR"
    return {bool: "BOOLEAN", int: "BIGINT", float: "DOUBLE"}[base]


CONFIG_COLUMNS = {name: _sql_type(FIELD_TYPES[name]) for name in FIELD_NAMES}
# the keys that make a cell: every hashed config field but the seed (mean / SE are over seeds)
CELL_KEYS = tuple(n for n in FIELD_NAMES if n in HASHED_NAMES and n != "seed")


def cell_id(config: dict) -> str:
    """Short hash of the config without the seed: the runs of one cell differ only by seed."""
    blob = json.dumps(identity(config, CELL_KEYS), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


RUN_COLUMNS = {
    "grid": "VARCHAR NOT NULL", "run_id": "VARCHAR NOT NULL", "cell_id": "VARCHAR", "run_dir": "VARCHAR",
    **{col: t for col, (_, t) in STATUS_COLUMNS.items()},
    **CONFIG_COLUMNS,
    **{col: t for col, (_, t) in SUMMARY_COLUMNS.items()},
    **PROGRESS_COLUMNS,
    **{col: t for col, (_, t) in DOC_COLUMNS.items()},
    "has_summary": "BOOLEAN", "config_json": "VARCHAR", "status_json": "VARCHAR", "summary_json": "VARCHAR",
}
assert len(RUN_COLUMNS) == len(STATUS_COLUMNS) + len(CONFIG_COLUMNS) + len(SUMMARY_COLUMNS) + len(PROGRESS_COLUMNS) \
    + len(DOC_COLUMNS) + 8, "a status / summary column repeats a config column: rename it above"


# DuckDB reserves these words: such a column must be written "window" in SQL (tests/store checks the list)
RESERVED = frozenset({"window"})


def q(name: str) -> str:
    """A column name as SQL: quoted when DuckDB reserves the word."""
    return f'"{name}"' if name in RESERVED else name


PLUGIN_TYPES = {"bool": "BOOLEAN", "int": "BIGINT", "float": "DOUBLE", "str": "VARCHAR"}  # a plugin key's column


def _table(name: str, columns: dict) -> str:
    body = ",\n".join(f"    {q(c)} {t}" for c, t in columns.items())
    return f"CREATE TABLE {name} (\n{body}\n);"


_CELL = ", ".join(map(q, CELL_KEYS))
BROKEN_COLUMNS = {"grid": "VARCHAR NOT NULL", "run_id": "VARCHAR NOT NULL", "run_dir": "VARCHAR", "problem": "VARCHAR"}

TABLE_COLUMNS = {
    "meta": {"key": "VARCHAR PRIMARY KEY", "value": "VARCHAR"},
    # what each run dir looked like when last read: (file, mtime_ns, size) of every file we read,
    # and a digest of the rows that reading produced (a row that differs was not written by ingest)
    "ingested": {"grid": "VARCHAR NOT NULL", "run_id": "VARCHAR NOT NULL", "fingerprint": "VARCHAR",
                 "digest": "VARCHAR", "ingested_at": "DOUBLE"},
    # run dirs that cannot be trusted (config.json is not their own): never data, only listed
    "broken": BROKEN_COLUMNS,
    "runs": RUN_COLUMNS,
    "evals": {"grid": "VARCHAR NOT NULL", "run_id": "VARCHAR NOT NULL", **EVAL_COLUMNS},
    "train": {"grid": "VARCHAR NOT NULL", "run_id": "VARCHAR NOT NULL", **TRAIN_COLUMNS},
}
TABLES = {name: _table(name, cols) for name, cols in TABLE_COLUMNS.items()}

# a cell's statistics over its runs (rows of `final`): the `cells` view's, and the report's over
# exactly the runs its grid file plans (Store.cell_stats)
CELL_STATS_SQL = """\
       count(*) AS n_runs,
       count(*) FILTER (WHERE finished) AS n_done,
       list(run_id ORDER BY seed) AS run_ids,
       list(DISTINCT state) AS states,
       avg(final_val_loss) FILTER (WHERE finished) AS mean_val_loss,
       stddev_samp(final_val_loss) FILTER (WHERE finished)
           / sqrt(count(final_val_loss) FILTER (WHERE finished)) AS se_val_loss,
       -- the eval sample's own noise: seeds are scored on the same windows, so their eval errors
       -- do not average out over seeds; the mean of their standard errors
       avg(final_val_loss_se) FILTER (WHERE finished) AS eval_se_val_loss,
       avg(final_train_loss) FILTER (WHERE finished) AS mean_train_loss"""


def views(extra: tuple = ()) -> dict:
    """The views' SQL; `extra`: plugin key columns of `runs`, carried through like config keys."""
    cell = ", ".join([_CELL, *(f'"{c}"' for c in extra)])
    return {
        # one row per run: its final val loss (summary's, else the last eval: a running job's so far)
        "final": f"""CREATE VIEW final AS
SELECT grid, run_id, cell_id, state, seed, {cell},
       coalesce(final_val_loss, last_val_loss) AS final_val_loss,
       -- the last eval's standard error: the final eval's, since a finished run evals at its last step
       last_val_loss_se AS final_val_loss_se,
       coalesce(final_train_loss, last_train_loss) AS final_train_loss,
       coalesce(final_eval_step, last_step) AS final_step,
       last_tokens AS final_tokens, last_elapsed AS final_elapsed,
       state = 'done' AS finished
FROM runs;""",
        # one row per cell (config without the seed): mean and standard error over finished seeds
        "cells": f"""CREATE VIEW cells AS
SELECT grid, cell_id, {cell},
{CELL_STATS_SQL}
FROM final
GROUP BY grid, cell_id, {cell};""",
    }


VIEWS = views()
VIEW_COLUMNS = ("final_step", "final_tokens", "final_elapsed", "final_val_loss_se", "finished", "n_runs", "n_done",
                "run_ids", "states", "mean_val_loss", "se_val_loss", "eval_se_val_loss", "mean_train_loss")
# what the report adds beside a run's columns (report/compare.py: annotate, cells)
REPORT_COLUMNS = ("group", "mgroup", "variant", "is_baseline", "gorder", "morder", "vorder", "budget_tokens",
                  "best_lr", "rep")
RESERVED_NAMES = frozenset({*RUN_COLUMNS, *VIEW_COLUMNS, *REPORT_COLUMNS})


def ddl() -> str:
    """The whole schema as SQL (pinned by a golden file in tests/store)."""
    return "\n\n".join([*TABLES.values(), *VIEWS.values()]) + "\n"
