"""The store is a cache of runs/ that nothing but ingest writes: `ablate query` is read-only, one
statement, no file system; a row no run dir backs is never trusted; a run dir whose config.json is
not its own is broken, not data; bytes that are not UTF-8 are skipped and counted."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ablate.core import rundir
from ablate.store import Store
from synthetic import write_run

ROOT = Path(__file__).resolve().parents[2]


def cli(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "ablate.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def _two_runs(runs):
    gpt = write_run(runs, "g", {"arch": "gpt"}, lambda s: 3.0 - s / 1000)
    ngpt = write_run(runs, "g", {"arch": "ngpt"}, lambda s: 2.9 - s / 1000)
    return gpt, ngpt


def _losses(db):
    con = duckdb.connect(str(db), read_only=True)
    try:
        return dict(con.execute("select run_id, final_val_loss from runs order by run_id").fetchall()), \
            con.execute("select count(*) from evals").fetchall()[0][0]
    finally:
        con.close()


HOSTILE = [
    "UPDATE runs SET final_val_loss = 1.0",
    "DELETE FROM evals",
    "DROP TABLE evals",
    "INSERT INTO runs (grid, run_id) VALUES ('g', 'fake')",
    "ATTACH '{tmp}/other.duckdb' AS o",
    "COPY runs TO '{tmp}/leak.csv'",
    "LOAD httpfs",
    "INSTALL httpfs",
    "SELECT * FROM read_csv('/etc/passwd')",
    "SELECT * FROM read_text('/etc/hostname')",
    "SELECT 1; DROP TABLE train",
    "SET enable_external_access = true",
    "CREATE TABLE x AS SELECT 1",
    "EXPORT DATABASE '{tmp}/dump'",
]


def test_query_is_read_only_one_statement_with_no_file_system(tmp_path):
    runs = tmp_path / "runs"
    _two_runs(runs)
    r = cli("query", "select count(*) as n from runs")
    assert r.returncode == 0 and "2" in r.stdout, r.stderr
    before = _losses(runs / "ablate.duckdb")
    for sql in HOSTILE:
        r = cli("query", sql.format(tmp=tmp_path), "--no-ingest")
        assert r.returncode == 2 and "Traceback" not in r.stderr, (sql, r.stdout + r.stderr)
        assert len(r.stderr.strip().splitlines()) == 1 and r.stderr.startswith("ablate: error: "), (sql, r.stderr)
        assert _losses(runs / "ablate.duckdb") == before, sql
        assert not any((tmp_path / name).exists() for name in ("other.duckdb", "leak.csv", "dump")), sql
    r = cli("query", "select count(*) as n from train")
    assert r.returncode == 0 and r.stdout.split()[-1] != "0", r.stderr


def test_rows_that_no_run_dir_backs_are_never_trusted(tmp_path):
    """Whatever edits the store behind ingest's back (another DuckDB client, an old ablate), the next
    ingest (every report starts with one) puts back what the run dirs say."""
    runs = tmp_path / "runs"
    gpt, ngpt = _two_runs(runs)
    db = runs / "ablate.duckdb"
    with Store(db) as s:
        s.ingest(runs)
    truth = _losses(db)
    con = duckdb.connect(str(db))
    con.execute(f"UPDATE runs SET final_val_loss = 0.5 WHERE run_id = '{gpt.name}'")
    con.execute(f"DELETE FROM evals WHERE run_id = '{ngpt.name}' AND step > 0")
    con.execute("INSERT INTO runs (grid, run_id, state, final_val_loss) VALUES ('g', 'nowhere', 'done', 0.1)")
    con.execute("INSERT INTO evals (grid, run_id, step, val_loss) VALUES ('g', 'ghost', 5, 0.1)")
    con.close()
    with Store(db) as s:
        counts = s.ingest(runs)
        assert counts["read"] == 2 and counts["runs"] == 2
        assert s.query("select count(*) as n from evals where run_id in ('nowhere', 'ghost')").n[0] == 0
    assert _losses(db) == truth

    con = duckdb.connect(str(db))
    con.execute("DROP TABLE evals")
    con.execute("ALTER TABLE train DROP COLUMN loss")
    con.execute("DROP VIEW cells")
    con.close()
    r = cli("report", _grid_file(tmp_path), "--quiet")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert _losses(db) == truth


def _grid_file(tmp_path):
    path = tmp_path / "g.yaml"
    path.write_text("name: g\ndata: {dataset: shakespeare, tokenizer: char}\n"
                    "base: {device: cpu, eval_interval: 100, log_interval: 10}\ngrid: {arch: [gpt, ngpt]}\n")
    return path


def test_a_run_dir_whose_config_is_another_runs_is_broken_not_data(tmp_path):
    runs = tmp_path / "runs"
    gpt, ngpt = _two_runs(runs)
    shutil.copy(gpt / rundir.CONFIG, ngpt / rundir.CONFIG)  # ngpt's dir now claims to be the gpt run
    grid = _grid_file(tmp_path)

    r = cli("report", grid, "--quiet")
    assert r.returncode == 0, r.stderr
    with Store(runs / "ablate.duckdb", read_only=True) as s:
        rows = s.query("select run_id, arch from runs")
        assert rows.to_dict("records") == [{"run_id": gpt.name, "arch": "gpt"}]
        broken = s.broken("g")
        assert broken.run_id.tolist() == [ngpt.name] and "belongs to run" in broken.problem[0]
        assert s.query(f"select count(*) as n from evals where run_id = '{ngpt.name}'").n[0] == 0
    html = (tmp_path / "reports" / "g" / "index.html").read_text()
    assert ngpt.name in html and "broken" in html

    for verb in ("plan", "status"):
        r = cli(verb, grid)
        line = next(l for l in r.stdout.splitlines() if l.startswith(ngpt.name) or ngpt.name in l.split()[:1])
        assert "broken" in line, (verb, r.stdout)
    r = cli("submit", grid, "--executor", "debug")
    assert f"skip {ngpt.name}: broken" in r.stdout, r.stdout + r.stderr

    # an edited config (same run_id field, other content) is broken as well
    doc = json.loads((gpt / rundir.CONFIG).read_text())
    doc["config"]["lr"] = 0.5
    (gpt / rundir.CONFIG).write_text(json.dumps(doc))
    assert "hashes to" in rundir.identity_problem(gpt)


def test_bytes_that_are_not_utf8_are_skipped_and_counted(tmp_path):
    runs = tmp_path / "runs"
    gpt, _ = _two_runs(runs)
    with open(gpt / rundir.EVALS, "ab") as f:
        f.write(b'{"step": 77, "val_loss": 1.0, "note": "\xff\xfe"}\n\xc3\x28garbage\n')
    with open(gpt / rundir.METRICS, "ab") as f:
        f.write(b"\x80\x81\n")
    (gpt / rundir.SUMMARY).write_bytes(b"\xff not json")  # a garbled summary is no summary
    for args in (("query", "select run_id, skipped_lines, n_evals from runs order by run_id"),
                 ("report", _grid_file(tmp_path), "--quiet")):
        r = cli(*args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    records, skipped = rundir.read_jsonl_counted(gpt / rundir.EVALS)
    assert skipped == 2 and [r["step"] for r in records][-1] == 1000
    with Store(runs / "ablate.duckdb", read_only=True) as s:
        row = s.query(f"select skipped_lines, n_evals, has_summary from runs where run_id = '{gpt.name}'").iloc[0]
    assert (row.skipped_lines, row.n_evals, bool(row.has_summary)) == (3, 11, False)


BAD_LINES = [
    '{"step": 1e300, "val_loss": 1.0}',       # a float step past int64: killed every query
    '{"step": null, "val_loss": 1.0}',
    '{"step": "7", "val_loss": 1.0}',
    '{"step": true, "val_loss": 1.0}',
    '{"step": -3, "val_loss": 1.0}',
    '{"val_loss": 1.0}',
    '[1, 2]',
]


def test_a_valid_json_line_with_a_bad_field_is_skipped_and_counted_not_fatal(tmp_path):
    """evals.jsonl / metrics.jsonl lines are checked field by field (core/rundir.py EVAL_FIELDS,
    METRIC_FIELDS): a line whose step is not a step is skipped and counted; a bad value of any
    other field reads as null. Every query and the report of that grid work."""
    runs = tmp_path / "runs"
    gpt, ngpt = _two_runs(runs)
    with open(gpt / rundir.EVALS, "a") as f:
        f.write("\n".join(BAD_LINES) + "\n" + '{"step": 1001, "val_loss": "low", "tokens": 1e300, "elapsed": NaN}\n')
    with open(ngpt / rundir.METRICS, "a") as f:
        f.write("\n".join(BAD_LINES) + "\n")
    for args in (("query", "select run_id, skipped_lines, n_evals from runs order by run_id"),
                 ("query", "select max(step) from evals"), ("report", _grid_file(tmp_path), "--quiet")):
        r = cli(*args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    with Store(runs / "ablate.duckdb", read_only=True) as s:
        rows = s.query("select run_id, skipped_lines, n_evals from runs order by run_id").set_index("run_id")
        last = s.query(f"select * from evals where run_id = '{gpt.name}' and step = 1001").iloc[0]
    assert rows.loc[gpt.name, "skipped_lines"] == rows.loc[ngpt.name, "skipped_lines"] == len(BAD_LINES)
    assert rows.loc[gpt.name, "n_evals"] == 12  # steps 0..1000 and 1001
    assert pd.isna(last.val_loss) and pd.isna(last.tokens)  # null, not a cast error
    records, skipped = rundir.read_jsonl_counted(gpt / rundir.EVALS)
    assert skipped == len(BAD_LINES) and records[-1] == {"step": 1001, "val_loss": None, "tokens": None,
                                                         "elapsed": None}


def test_a_fifo_or_a_device_in_a_run_dir_is_not_read(tmp_path):
    """A reader of run dirs never blocks on a FIFO named metrics.jsonl nor reads a link to an
    endless device: such a file counts as one skipped line, and status.json / summary.json as absent."""
    import os

    runs = tmp_path / "runs"
    gpt, ngpt = _two_runs(runs)
    (gpt / rundir.METRICS).unlink()
    os.mkfifo(gpt / rundir.METRICS)
    (ngpt / rundir.EVALS).unlink()
    (ngpt / rundir.EVALS).symlink_to("/dev/zero")
    (ngpt / rundir.SUMMARY).unlink()
    os.mkfifo(ngpt / rundir.SUMMARY)
    r = cli("query", "select run_id, skipped_lines, n_evals, n_train, has_summary from runs order by run_id",
            timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert rundir.read_jsonl_counted(gpt / rundir.METRICS) == ([], 1)
    assert rundir.read_json(ngpt / rundir.SUMMARY, default="absent") == "absent"
    r = cli("status", _grid_file(tmp_path), timeout=120)
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr


def test_three_reports_at_once_all_finish(tmp_path):
    """Two of three concurrent reports used to exit 2 ("Could not set lock"): each waits its turn."""
    runs = tmp_path / "runs"
    _two_runs(runs)
    grid = _grid_file(tmp_path)
    procs = [subprocess.Popen([sys.executable, "-m", "ablate.cli", "report", str(grid), "--quiet"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=600) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in outs]


@pytest.mark.parametrize("damage", ["random", "truncated", "empty"])
def test_a_damaged_store_is_moved_aside_and_rebuilt(tmp_path, damage):
    """The store is a cache of runs/: a writer moves a file that is not a DuckDB database aside,
    says so, and builds the store again; a reader (query --no-ingest) names the way out."""
    import os

    runs = tmp_path / "runs"
    gpt, ngpt = _two_runs(runs)
    assert cli("query", "select count(*) from runs").returncode == 0
    db = runs / "ablate.duckdb"
    good = db.read_bytes()
    db.write_bytes({"random": os.urandom(20000), "truncated": good[:1000], "empty": b""}[damage])
    r = cli("query", "--no-ingest", "select count(*) from runs")
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "is damaged" in r.stderr, r.stderr
    assert "--rebuild" in r.stderr
    r = cli("report", _grid_file(tmp_path), "--rebuild", "--quiet")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert f"warning: the store {db} was damaged" in r.stderr and "moved aside to" in r.stderr
    assert len(list(runs.glob("ablate.duckdb.damaged-*"))) == 1
    r = cli("query", "select run_id from runs order by run_id")
    assert r.returncode == 0 and gpt.name in r.stdout and ngpt.name in r.stdout, r.stderr


def test_a_query_is_bounded_and_ctrl_c_is_not_a_traceback(tmp_path):
    import signal
    import time

    runs = tmp_path / "runs"
    _two_runs(runs)
    r = cli("query", "--memory-limit", "0.05", "select list(range) from range(100000000)")
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [r.stderr.strip()], r.stderr
    assert "query failed: Out of Memory Error" in r.stderr
    r = cli("query", "--threads", "1", "select current_setting('threads') as t, current_setting('memory_limit') as m")
    assert r.returncode == 0 and r.stdout.split()[2] == "1", r.stdout
    # Ctrl-C at several moments (opening the store, the query itself): each ends the command
    # at once, in one line, exit 130. A hash of every row of 1e15 would run for days (count(*) of a
    # bare range is not that: DuckDB counts ~8e9 rows/s). DuckDB's own check of Python's signals
    # missed this plan: before store.connect.interruptible, Ctrl-C 1.5-3.5 s in was lost (the query
    # ran on) or killed the process by the signal after the message.
    ended = {}
    for delay in (1.5, 2.5, 3.5):  # one at a time: the moments are this process's, not a crowd's
        proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "query", "--no-ingest",
                                 "select sum(hash(range)) from range(1000000000000000)"], cwd=ROOT,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=30)
            ended[delay] = (proc.returncode, err.strip())
        except subprocess.TimeoutExpired:
            ended[delay] = ("still running 30 s after Ctrl-C", "")
        finally:
            proc.kill()
            proc.communicate()
    assert ended == {delay: (130, "ablate: interrupted") for delay in (1.5, 2.5, 3.5)}, ended


@pytest.mark.parametrize("delay", [0.2, 1.0, 2.0])
def test_ctrl_c_stops_a_store_query_in_this_process_at_any_moment(delay):
    """Store.query (store.connect.interruptible): Ctrl-C becomes KeyboardInterrupt whenever it lands.
    DuckDB alone (con.execute on the main thread) missed it at 0.2 s and at 2 s here and ran on until
    a watchdog's con.interrupt()."""
    import os
    import signal
    import threading

    with Store(":memory:") as s:
        s.con.execute("set enable_progress_bar = false")
        ctrl_c = threading.Timer(delay, lambda: os.kill(os.getpid(), signal.SIGINT))
        rescued = threading.Event()  # the watchdog had to stop the query: Ctrl-C was lost
        watchdog = threading.Timer(delay + 20, lambda: (rescued.set(), s.con.interrupt()))  # never a hung test
        ctrl_c.start()
        watchdog.start()
        try:
            with pytest.raises(KeyboardInterrupt):
                s.query("select sum(hash(range)) from range(1000000000000000)")
        finally:
            watchdog.cancel()
        assert not rescued.is_set(), "Ctrl-C was lost: the query ran on until the watchdog interrupted it"
        assert s.query("select 42 as x")["x"].tolist() == [42]  # the connection is still usable
