"""Reading run dirs into rows: which dirs changed since the last ingest, and what is in them.

A run dir is any runs/<grid>/<run_id>/ holding a config.json or a status.json; the directory
names are its identity (the same config in two grids is two runs). A dir's fingerprint is the
(mtime_ns, size) of each file we read, taken *before* reading: a job that appends while we read
leaves a newer fingerprint behind, so the next ingest reads that dir again, and a torn last line
(the job mid-write) is skipped by rundir.read_jsonl and picked up once complete.
"""
from __future__ import annotations

import json
import math
import os
import statistics
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from ablate.core import plugin_keys, rundir
from ablate.core.config import ADDED_DEFAULTS
from ablate.store.schema import (BROKEN_COLUMNS, CONFIG_COLUMNS, cell_id, DOC_COLUMNS, EVAL_COLUMNS, PLUGIN_TYPES,
                                 RESERVED_NAMES, RUN_COLUMNS, STATUS_COLUMNS, SUMMARY_COLUMNS, TRAIN_COLUMNS)

FILES = (rundir.CONFIG, rundir.STATUS, rundir.SUMMARY, rundir.EVALS, rundir.METRICS)


@dataclass(frozen=True)
class RunDir:
    grid: str
    run_id: str
    path: Path
    fingerprint: str


def fingerprint(path: Path) -> str:
    parts = []
    for name in FILES:
        try:
            st = os.stat(path / name)
            parts.append(f"{name}:{st.st_mtime_ns}:{st.st_size}")
        except FileNotFoundError:
            parts.append(f"{name}:-")
    return "|".join(parts)


def _subdirs(path: Path) -> list[os.DirEntry]:
    try:
        with os.scandir(path) as it:
            return sorted((e for e in it if e.is_dir() and not e.name.startswith(".")), key=lambda e: e.name)
    except (FileNotFoundError, NotADirectoryError):
        return []


def scan(runs_root, grid: str | None = None) -> list[RunDir]:
    """Every run dir under runs_root (or under runs_root/<grid>), in name order."""
    root = Path(runs_root)
    grids = [root / grid] if grid else [Path(e.path) for e in _subdirs(root)]
    out = []
    for g in grids:
        for e in _subdirs(g):
            p = Path(e.path)
            if (p / rundir.CONFIG).exists() or (p / rundir.STATUS).exists():
                out.append(RunDir(g.name, e.name, p, fingerprint(p)))
    return out


# ---- typed values: a file may hold anything (a job id as an int, a NaN loss); columns may not
def coerce(value, sql_type: str):
    if value is None:
        return None
    t = sql_type.split()[0]
    try:
        if t == "VARCHAR":
            return value if isinstance(value, str) else json.dumps(value, default=str)
        if t == "BOOLEAN":
            return bool(value)
        v = float(value)
        if not math.isfinite(v):
            return None
        return int(v) if t == "BIGINT" else v
    except (TypeError, ValueError, OverflowError):
        return None


def _column(values: list, sql_type: str) -> pd.Series:
    """One typed column from raw JSON values, vectorized: numbers that are not numbers (a string,
    NaN, inf) become NULL, as `coerce` does for a single value."""
    t = sql_type.split()[0]
    if t == "VARCHAR":
        return pd.Series([coerce(v, t) for v in values], dtype=object)
    if t == "BOOLEAN":
        return pd.Series([coerce(v, t) for v in values], dtype="boolean")
    x = pd.to_numeric(pd.Series(values, dtype=object).reset_index(drop=True), errors="coerce").astype("float64")
    x[~np.isfinite(x) | (x.abs() >= 1e300)] = np.nan
    if t == "BIGINT":  # counts: rundir.is_count's range (a 1e300 "step" cannot even be cast to int64)
        x[(x < 0) | (x > rundir.MAX_COUNT)] = np.nan
        return x.round().astype("Int64")
    return x


def frame(columns: dict, types: dict) -> pd.DataFrame:
    """A DataFrame whose dtypes match the SQL types (nullable ints, NaN-free doubles)."""
    return pd.DataFrame({c: _column(columns[c], types[c]) for c in types})


def read_jsonl(path: Path) -> tuple[list, int]:
    """rundir.read_jsonl_counted's (records, lines skipped): a torn last line, a line that is not
    UTF-8 or not a JSON object, a record whose step is not a step is skipped and counted; only a
    regular file is read. Parsed in one json call when every line is whole and every step is
    valid (the common case: ~5x faster on a 1,000-line file); the other fields are typed column
    by column in `frame`, by the same rules (rundir.valid_record)."""
    f = rundir.open_regular(path)
    if f is None:
        return rundir.read_jsonl_counted(path)  # missing (nothing) or not a regular file (counted)
    with f:
        raw = f.read()
    try:
        lines = raw.decode("utf-8").split("\n")
        records = json.loads("[" + ",".join(lines[:-1]) + "]")  # a blank line fails here, then is skipped below
        if all(isinstance(r, dict) and rundir.is_count(r.get("step")) for r in records):
            return records, int(lines[-1] != "")  # the last piece is "" or a torn line
    except ValueError:  # UnicodeDecodeError, JSONDecodeError
        pass
    return rundir.read_jsonl_counted(path)


def _records(path: Path, columns: dict) -> tuple[list[dict], int]:
    """(the jsonl records, one per step (the last one wins: a resumed job may repeat a step),
    with raw values: typing happens column-wise in `frame`; the number of lines skipped)."""
    records, skipped = read_jsonl(path)  # every step is a valid step (rundir.is_count)
    steps = [r["step"] for r in records]
    if all(a < b for a, b in zip(steps, steps[1:])):  # the common case, steps already increasing
        return records, skipped
    by_step = {r["step"]: r for r in records}
    return [by_step[s] for s in sorted(by_step)], skipped


def plugin_columns(config: dict) -> dict:
    """{column: SQL type} of the plugin keys a config declares (names the store owns are not
    plugin keys: the loader refuses them, a hand-made config.json may not)."""
    try:
        declared = plugin_keys.declared_keys({"plugins": plugin_keys.declarations(config.get("plugins"))})
    except Exception:  # not a declaration: nothing to add (identity_problem has called it broken)
        return {}
    return {k: PLUGIN_TYPES[s["type"]] for k, s in declared.items() if k not in RESERVED_NAMES}


def read_run(rd: RunDir) -> tuple[dict, list[dict], list[dict], dict]:
    """(runs row, eval records, train records, {plugin key column: SQL type}) of one run dir;
    the row also holds the run's plugin key columns."""
    doc = rundir.read_json(rd.path / rundir.CONFIG, default={}) or {}
    status = rundir.read_status(rd.path)
    summary = rundir.read_json(rd.path / rundir.SUMMARY, default=None)
    config = doc.get("config") if isinstance(doc.get("config"), dict) else {}
    evals, skipped_evals = _records(rd.path / rundir.EVALS, EVAL_COLUMNS)
    train, skipped_train = _records(rd.path / rundir.METRICS, TRAIN_COLUMNS)

    row = {"grid": rd.grid, "run_id": rd.run_id, "cell_id": cell_id(config) if config else None,
           "run_dir": str(rd.path)}
    for col, (key, t) in STATUS_COLUMNS.items():
        row[col] = coerce(status.get(key), t)
    # a run dir with a config but no status yet has been written by submit, not started
    row["state"] = row["state"] or (summary or {}).get("state") or "pending"
    for col, t in CONFIG_COLUMNS.items():  # a knob added after the run was made: it ran with the default
        row[col] = coerce(config.get(col, ADDED_DEFAULTS.get(col)), t)
    row["plugins"] = plugin_keys.used_text(config) if config.get("plugins") else None
    extra = plugin_columns(config)
    row.update({col: coerce(config.get(col), t) for col, t in extra.items()})
    for col, (key, t) in SUMMARY_COLUMNS.items():
        row[col] = coerce((summary or {}).get(key), t)
    for col, (key, t) in DOC_COLUMNS.items():
        row[col] = coerce(doc.get(key), t)
    last = {c: coerce((evals[-1] if evals else {}).get(c), t) for c, t in EVAL_COLUMNS.items()}
    tps = [x for x in (coerce(r.get("tokens_per_s"), "DOUBLE") for r in train[1:]) if x]  # [0] holds the warm-up
    peaks = [x for x in (coerce(r.get("mem_peak"), "BIGINT") for r in train) if x is not None]
    row.update(n_evals=len(evals), n_train=len(train), last_step=last["step"], last_tokens=last["tokens"],
               last_elapsed=last["elapsed"], last_val_loss=last["val_loss"],
               last_val_loss_se=last["val_loss_se"], last_train_loss=last["train_loss"],
               max_mem_peak=max(peaks) if peaks else None, skipped_lines=skipped_evals + skipped_train)
    # one obvious column each: the summary's figure once the run has ended, its figure so far until then
    for col, so_far in (("tokens_per_s", statistics.median(tps) if tps else None), ("final_val_loss", last["val_loss"]),
                        ("final_train_loss", last["train_loss"]), ("final_eval_step", last["step"])):
        if row[col] is None:
            row[col] = so_far
    row.update(has_summary=summary is not None, config_json=json.dumps(doc.get("config"), sort_keys=True),
               status_json=json.dumps(status, sort_keys=True, default=str),
               summary_json=json.dumps(summary, sort_keys=True, default=str) if summary is not None else None)
    assert set(row) == set(RUN_COLUMNS) | set(extra)
    return row, evals, train, extra


class Batch:
    """Rows of many runs, turned into typed DataFrames for one INSERT per table."""

    def __init__(self):
        self.runs, self.broken = [], []
        self.records = {"evals": ([], [], []), "train": ([], [], [])}  # (grids, run_ids, records)
        self.extra: dict = {}  # plugin key columns of these runs -> SQL type (the first declaration's)

    def add_dir(self, rd: RunDir) -> None:
        """A run dir: its rows, or only a `broken` row when it cannot be trusted (config.json is
        another run's, or edited: see rundir.identity_problem). Nothing of a broken dir is data."""
        problem = rundir.identity_problem(rd.path)
        if problem:
            self.broken.append({"grid": rd.grid, "run_id": rd.run_id, "run_dir": str(rd.path), "problem": problem})
        else:
            self.add(*read_run(rd))

    def add(self, row: dict, evals: list[dict], train: list[dict], extra: dict | None = None) -> None:
        for col, t in (extra or {}).items():  # two declarations of a key with different types: text
            self.extra[col] = t if self.extra.get(col, t) == t else "VARCHAR"
        self.runs.append(row)
        for table, records in (("evals", evals), ("train", train)):
            grids, run_ids, recs = self.records[table]
            grids.extend([row["grid"]] * len(records))
            run_ids.extend([row["run_id"]] * len(records))
            recs.extend(records)

    def frames(self, types: dict | None = None) -> dict:
        """Typed frames; `types`: the store's types of the plugin columns (else the declared ones)."""
        columns = {**RUN_COLUMNS, **self.extra, **{c: t for c, t in (types or {}).items() if c in self.extra}}
        out = {"runs": frame({c: [r.get(c) for r in self.runs] for c in columns}, columns),
               "broken": frame({c: [r[c] for r in self.broken] for c in BROKEN_COLUMNS}, BROKEN_COLUMNS)}
        for table, columns in (("evals", EVAL_COLUMNS), ("train", TRAIN_COLUMNS)):
            grids, run_ids, recs = self.records[table]
            raw = pd.DataFrame.from_records(recs, columns=list(columns)) if recs else \
                pd.DataFrame({c: [] for c in columns})
            df = pd.DataFrame({"grid": pd.Series(grids, dtype=object), "run_id": pd.Series(run_ids, dtype=object)})
            for c, t in columns.items():
                df[c] = _column(raw[c], t)
            out[table] = df
        return out
