"""Store: the DuckDB cache of runs/ (one writer process at a time; always rebuildable).

    store = Store("runs/ablate.duckdb")
    store.ingest("runs", grid="quickstart")     # only the run dirs that changed are read
    store.query("select arch, final_val_loss from final")

`ingest` is one transaction: an interrupted ingest leaves the previous state. Rows are keyed by
(grid, run_id); re-reading a run replaces all of its rows (delete + insert), so ingesting twice
changes nothing. Run dirs that disappeared from runs/ disappear from the store.

Nothing in the store is trusted that a run dir does not back: every ingest checks that the tables
and views are all there (else it rebuilds), and that each run's rows still hash to the digest
recorded when they were read (a row edited or added by anything but ingest makes that run be read
again from its run dir, or leave the store when it has none). Run dirs whose config.json is not
their own go to the `broken` table, never into `runs`. `ablate query` reads through
`Store(..., read_only=True)`: a read-only connection with no file system or extension access
(DuckDB settings, locked), bounded memory and threads, one statement. Opening waits for another
command's hold on the file and rebuilds a damaged file (connect.py).
"""
from __future__ import annotations

import time
from pathlib import Path

import duckdb
import pandas as pd

from ablate.core.errors import AblateError
from ablate.store import ingest as ing
from ablate.store.connect import connect, interruptible
from ablate.store.schema import CELL_STATS_SQL, RUN_COLUMNS, SCHEMA_VERSION, TABLE_COLUMNS, VIEWS, ddl, views

BATCH_RUNS = 200  # run dirs per INSERT: bounds memory on a 10,000-run grid
READ_STATEMENTS = ("SELECT", "EXPLAIN", "PRAGMA", "CALL")
TABLE_KEYS = ("runs", "broken", "evals", "train")  # the tables holding rows of a (grid, run_id)


class Store:
    def __init__(self, db_path, read_only: bool = False, limits: dict | None = None):
        """limits: a reader's DuckDB memory_limit / threads (connect.reader_limits)."""
        self.path = str(db_path)
        if self.path != ":memory:" and not read_only:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        if read_only and not Path(self.path).exists():
            raise AblateError(f"no store at {self.path}: `ablate report` (or `ablate query` without "
                              "--no-ingest) creates it")
        self.con = connect(self.path, read_only, limits)
        self.read_only = read_only
        if not read_only:
            self._ensure_schema()
        self.last_read: list[tuple[str, str]] = []  # (grid, run_id) read by the last ingest

    # ---- schema
    def _ensure_schema(self, drop: bool = False) -> None:
        """Create the schema, or drop and re-create it (the next ingest reads every run dir again)
        when asked, when its version differs, or when a table, a column or a view is missing."""
        have = {r[0] for r in self.con.execute("select table_name from information_schema.tables").fetchall()}
        version = None
        if "meta" in have:
            rows = self.con.execute("select value from meta where key = 'schema_version'").fetchall()
            version = rows[0][0] if rows else None
        if version == SCHEMA_VERSION and not drop and self._intact(have):
            return
        for view in VIEWS:
            self.con.execute(f"DROP VIEW IF EXISTS {view}")
        for table in have - set(VIEWS):
            self.con.execute(f'DROP TABLE IF EXISTS "{table}"')
        self.con.execute(ddl())
        self.con.execute("insert into meta values ('schema_version', ?)", [SCHEMA_VERSION])

    def _intact(self, have: set) -> bool:
        cols: dict = {}
        for table, column in self.con.execute("select table_name, column_name from information_schema.columns "
                                              "order by table_name, ordinal_position").fetchall():
            cols.setdefault(table, []).append(column)
        # runs may have plugin key columns after its own
        return all(cols.get(t, [])[:len(c)] == list(c) and (t == "runs" or len(cols[t]) == len(c))
                   for t, c in TABLE_COLUMNS.items()) and set(VIEWS) <= have

    def plugin_columns(self) -> dict:
        """{column: SQL type} of the plugin keys `runs` has gained (ingest adds them), in order."""
        rows = self.con.execute("select column_name, data_type from information_schema.columns where table_name = "
                                "'runs' order by ordinal_position").fetchall()
        return {c: t for c, t in rows if c not in RUN_COLUMNS}

    def _add_plugin_columns(self, wanted: dict) -> bool:
        """Give `runs` a column for every plugin key in `wanted` ({column: SQL type}); a key that
        two plugins declare with different types becomes text. The views are re-created with
        the new columns. Returns whether anything changed."""
        have = self.plugin_columns()
        new = {c: t for c, t in wanted.items() if c not in have}
        retype = [c for c, t in wanted.items() if c in have and have[c] != t and have[c] != "VARCHAR"]
        if not new and not retype:
            return False
        for view in VIEWS:
            self.con.execute(f"DROP VIEW IF EXISTS {view}")
        for c, t in new.items():
            self.con.execute(f'ALTER TABLE runs ADD COLUMN "{c}" {t}')
        for c in retype:
            self.con.execute(f'ALTER TABLE runs ALTER COLUMN "{c}" SET DATA TYPE VARCHAR')
        for sql in views(tuple(self.plugin_columns())).values():
            self.con.execute(sql)
        return True

    def _digests(self, scope: str, args: list, keys: pd.DataFrame | None = None) -> dict:
        """{(grid, run_id): digest of all of its rows (sum and count of the rows' hashes)}, for the
        scope, or only for `keys` (grid, run_id)."""
        if keys is not None:
            self.con.register("digest_keys", keys)
            scope, args = "semi join digest_keys k on t.grid = k.grid and t.run_id = k.run_id", []
        parts = " union all ".join(
            f"select t.grid, t.run_id, hash(t)::hugeint as h from {table} t {scope}" for table in TABLE_KEYS)
        try:
            rows = self.con.execute(f"select grid, run_id, sum(h)::varchar || '/' || count(*) from ({parts}) "
                                    "group by grid, run_id", args * len(TABLE_KEYS)).fetchall()
        finally:
            if keys is not None:
                self.con.unregister("digest_keys")
        return {(g, r): d for g, r, d in rows}

    # ---- ingest
    def ingest(self, runs_root, grid: str | None = None, rebuild: bool = False) -> dict:
        """Bring the store up to date with runs_root (all grids, or one). Returns counts:
        scanned (run dirs found), read (re-read because they changed), unchanged, removed, and
        the rows now held for that scope (runs, evals, train).

        rebuild=True drops every table and re-reads every run dir under runs_root, whatever
        `grid` says: the store is a cache and must never hold half of runs/ after a rebuild."""
        if self.read_only:
            raise AblateError(f"the store {self.path} is open read-only")
        if rebuild:
            self._ensure_schema(drop=True)
            grid = None
        else:
            self._ensure_schema()  # a table dropped or altered since: rebuild
        found = ing.scan(runs_root, grid)
        scope, args = ("where grid = ?", [grid]) if grid else ("", [])
        known = {(g, r): (fp, dg) for g, r, fp, dg in
                 self.con.execute(f"select grid, run_id, fingerprint, digest from ingested {scope}", args).fetchall()}
        # rows that are not what ingest wrote (edited, added, deleted by anything else) are not trusted
        actual = self._digests(scope, args)
        untrusted = {k for k in known.keys() | actual.keys() if actual.get(k) != known.get(k, (None, None))[1]}
        changed = [rd for rd in found if known.get((rd.grid, rd.run_id), (None,))[0] != rd.fingerprint
                   or (rd.grid, rd.run_id) in untrusted]
        present = {(rd.grid, rd.run_id) for rd in found}
        # run dirs deleted from runs/ leave the store too, unless runs/ itself is missing (a wrong
        # directory must not empty the cache); rows no run dir backs leave it always
        removed = [k for k in known if k not in present] if Path(runs_root).is_dir() else []
        removed += [k for k in untrusted if k not in present and k not in removed]

        self.con.execute("BEGIN TRANSACTION")
        try:  # one transaction: an ingest interrupted (or out of disk) leaves the previous state
            stale = pd.DataFrame([(rd.grid, rd.run_id) for rd in changed] + removed, columns=["grid", "run_id"],
                                 dtype=object)
            if len(stale):
                self.con.register("stale_keys", stale)
                for table in (*TABLE_KEYS, "ingested"):
                    self.con.execute(f"DELETE FROM {table} USING stale_keys s "
                                     f"WHERE {table}.grid = s.grid AND {table}.run_id = s.run_id")
                self.con.unregister("stale_keys")
            now = time.time()
            altered = False  # a new plugin column changes every row's hash: all digests are re-taken
            for i in range(0, len(changed), BATCH_RUNS):
                batch = ing.Batch()
                for rd in changed[i:i + BATCH_RUNS]:
                    batch.add_dir(rd)
                altered |= self._add_plugin_columns(batch.extra)
                for table, df in batch.frames(self.plugin_columns()).items():
                    self._insert(table, df)
            if altered:  # every other run was checked above, before the column came
                fresh = self._digests("", [])
                self.con.register("fresh", pd.DataFrame({"grid": [k[0] for k in fresh], "run_id": [k[1] for k in fresh],
                                                         "digest": list(fresh.values())}, dtype=object))
                self.con.execute("UPDATE ingested SET digest = fresh.digest FROM fresh "
                                 "WHERE ingested.grid = fresh.grid AND ingested.run_id = fresh.run_id")
                self.con.unregister("fresh")
            if changed:  # each run's digest, of the rows just written
                keys = pd.DataFrame({"grid": [rd.grid for rd in changed], "run_id": [rd.run_id for rd in changed]},
                                    dtype=object)
                digests = self._digests(scope, args, keys)
                self._insert("ingested", pd.DataFrame({
                    "grid": [rd.grid for rd in changed], "run_id": [rd.run_id for rd in changed],
                    "fingerprint": [rd.fingerprint for rd in changed],
                    "digest": [digests.get((rd.grid, rd.run_id)) for rd in changed], "ingested_at": now}))
            self.con.execute("COMMIT")
        except BaseException as e:
            self.con.execute("ROLLBACK")
            if isinstance(e, duckdb.Error) and "No space left" in str(e):
                raise AblateError(f"no space left on device at {Path(self.path).parent} while writing the store "
                                  f"{self.path}: nothing was changed; free space, then run the command again") from None
            raise
        self.last_read = [(rd.grid, rd.run_id) for rd in changed]
        counts = {"scanned": len(found), "read": len(changed), "unchanged": len(found) - len(changed),
                  "removed": len(removed)}
        for table in ("runs", "evals", "train"):
            counts[table] = self.con.execute(f"select count(*) from {table} {scope}", args).fetchall()[0][0]
        return counts

    def _insert(self, table: str, df: pd.DataFrame) -> None:
        if not len(df):
            return
        self.con.register("incoming", df)
        self.con.execute(f"INSERT INTO {table} BY NAME SELECT * FROM incoming")
        self.con.unregister("incoming")

    # ---- reading
    def read(self, sql: str) -> pd.DataFrame:
        """A user's query (`ablate query`): one read statement, on a read-only sandboxed store."""
        if not self.read_only:
            raise AblateError("a user's query runs on a read-only store (Store(path, read_only=True))")
        try:
            statements = self.con.extract_statements(sql)
        except duckdb.Error as e:
            raise AblateError(f"query failed: {str(e).splitlines()[0]}") from None
        if len(statements) != 1:
            raise AblateError(f"ablate query runs exactly one statement, got {len(statements)}")
        kind = statements[0].type.name
        if kind not in READ_STATEMENTS:
            raise AblateError(f"ablate query only reads ({', '.join(READ_STATEMENTS)}), got {kind}: the store is a "
                              "cache of runs/, changed only by ingest")
        return self.query(statements[0].query)

    def broken(self, grid: str) -> pd.DataFrame:
        """The grid's run dirs that cannot be trusted, and why."""
        return self.query("select run_id, run_dir, problem from broken where grid = ? order by run_id", [grid])

    def query(self, sql: str, params=None) -> pd.DataFrame:
        try:
            return interruptible(self.con, lambda: self.con.execute(sql, params or []).df())
        except (duckdb.InterruptException, RuntimeError) as e:  # Ctrl-C while DuckDB ran: "Query interrupted"
            if isinstance(e, duckdb.InterruptException) or "interrupted" in str(e).lower():
                raise KeyboardInterrupt from None  # the user's interrupt, not a failed query
            raise
        except duckdb.Error as e:
            raise AblateError(f"query failed: {str(e).splitlines()[0]}") from None

    @staticmethod
    def _only(column: str, values) -> tuple[str, list]:
        """(an `and column in (...)` clause, its argument) keeping the given values; nothing for None."""
        return ("", []) if values is None else (f"and {column} in (select unnest(?::VARCHAR[]))", [list(values)])

    def cell_stats(self, grid: str, run_ids=None) -> pd.DataFrame:
        """The `cells` view's statistics of a grid's cells, over `run_ids` only (all of the grid's
        runs when None): a report covers exactly the runs its grid file plans."""
        only, args = self._only("run_id", run_ids)
        return self.query(f"select cell_id,\n{CELL_STATS_SQL}\nfrom final where grid = ? {only} group by cell_id",
                          [grid, *args])

    def curves(self, grid: str, cell_ids=None, max_points: int = 200, run_ids=None) -> pd.DataFrame:
        """Val loss curves, one per cell (mean over its seeds at each eval step; over `run_ids`
        only when given), at most max_points rows per cell: every k-th eval counted back from the
        last one, so the final eval is always kept and k = ceil(n / max_points). Done in SQL: a
        1,000-run grid with 1,000 evals each never reaches pandas at full size."""
        cells, cell_args = self._only("r.cell_id", cell_ids)
        runs, run_args = self._only("r.run_id", run_ids)
        cells += " " + runs
        args = [grid, *cell_args, *run_args, max(1, int(max_points))]
        return self.query(f"""
            with c as (
                select r.cell_id, e.step, avg(e.tokens) as tokens, avg(e.elapsed) as elapsed,
                       avg(e.val_loss) as val_loss, count(*) as n_seeds
                from evals e join runs r on e.grid = r.grid and e.run_id = r.run_id
                where e.grid = ? and e.val_loss is not null {cells}
                group by r.cell_id, e.step),
            n as (
                select *, row_number() over (partition by cell_id order by step) as rn,
                       count(*) over (partition by cell_id) as n
                from c)
            select cell_id, step, tokens, elapsed, val_loss, n_seeds from n
            where (n - rn) % cast(ceil(n / ?) as bigint) = 0
            order by cell_id, step""", args)

    def crossings(self, grid: str, targets: pd.DataFrame) -> pd.DataFrame:
        """For each (run_id, target) row: the first eval whose val loss is <= target and the eval
        before it (prev_*; null when the first eval already is), or no row when never reached."""
        if not len(targets):
            return pd.DataFrame(columns=["run_id", "target", "step", "tokens", "elapsed", "val_loss",
                                         "prev_step", "prev_tokens", "prev_elapsed", "prev_val_loss"])
        self.con.register("targets", targets[["run_id", "target"]])
        try:
            return self.query("""
                with e as (
                    select e.run_id, t.target, e.step, e.tokens, e.elapsed, e.val_loss,
                           lag(e.step) over w as prev_step, lag(e.tokens) over w as prev_tokens,
                           lag(e.elapsed) over w as prev_elapsed, lag(e.val_loss) over w as prev_val_loss
                    from evals e join targets t on e.run_id = t.run_id
                    where e.grid = ? and e.val_loss is not null
                    window w as (partition by e.run_id, t.target order by e.step))
                select * from e where val_loss <= target
                qualify row_number() over (partition by run_id, target order by step) = 1
                order by run_id, target""", [grid])
        finally:
            self.con.unregister("targets")

    def put_table(self, name: str, grid: str, df: pd.DataFrame) -> None:
        """Replace `grid`'s rows of a derived table (e.g. speedup, written by the report) so that
        `ablate query` can read it; the table is re-created when its columns changed."""
        # text columns as text even when every value is missing (DuckDB would type them NULL, and the
        # next grid's text could not go in)
        df = df.assign(grid=grid, **{c: df[c].astype("string") for c in df.columns if df[c].dtype == object})
        cols = self.con.execute("select column_name from information_schema.columns where table_name = ? "
                                "order by ordinal_position", [name]).fetchall()
        if not len(df):  # nothing to store: only forget the grid's old rows
            if cols:
                self.con.execute(f'DELETE FROM "{name}" WHERE grid = ?', [grid])
            return
        self.con.register("incoming", df)
        try:
            if [c[0] for c in cols] != list(df.columns):
                self.con.execute(f'DROP TABLE IF EXISTS "{name}"')
                self.con.execute(f'CREATE TABLE "{name}" AS SELECT * FROM incoming LIMIT 0')
            self.con.execute(f'DELETE FROM "{name}" WHERE grid = ?', [grid])
            self.con.execute(f'INSERT INTO "{name}" BY NAME SELECT * FROM incoming')
        finally:
            self.con.unregister("incoming")

    def close(self) -> None:
        self.con.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
