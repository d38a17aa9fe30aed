"""The DuckDB store: ingest is idempotent and incremental, tolerates jobs mid-write, and its
views give the right numbers on synthetic run dirs whose answers are known."""
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from ablate.core.errors import AblateError
from ablate.core import rundir
from ablate.store import Store
from ablate.store import schema
from synthetic import config_for, write_run

GOLDEN = Path(__file__).with_name("schema.sql")


@pytest.fixture
def runs(tmp_path):
    return tmp_path / "runs"


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "runs" / "ablate.duckdb")
    yield s
    s.close()


def test_schema_matches_golden_file():
    """The schema is part of the contract with `ablate query` users: changing it is deliberate.
    Regenerate with ABLATE_UPDATE_GOLDEN=1 (and bump SCHEMA_VERSION)."""
    if os.environ.get("ABLATE_UPDATE_GOLDEN"):
        GOLDEN.write_text(schema.ddl())
    assert schema.ddl() == GOLDEN.read_text()


def test_reserved_words_are_quoted():
    con = duckdb.connect()
    reserved = {r[0] for r in con.execute(
        "select keyword_name from duckdb_keywords() where keyword_category = 'reserved'").fetchall()}
    for name in [*schema.RUN_COLUMNS, *schema.EVAL_COLUMNS, *schema.TRAIN_COLUMNS]:
        assert name not in reserved or name in schema.RESERVED, name


def test_ingest_reads_every_file(runs, store):
    d = write_run(runs, "g", {"arch": "ngpt", "max_iters": 500, "lr": 5e-3}, lambda s: 3.0 - s / 1000,
                  peak_alloc=3 * 2 ** 30, peak_reserved=4 * 2 ** 30)
    counts = store.ingest(runs)
    assert counts == {"scanned": 1, "read": 1, "unchanged": 0, "removed": 0, "runs": 1, "evals": 6, "train": 50}
    row = store.query("select * from runs").iloc[0]
    cfg = config_for({"arch": "ngpt", "max_iters": 500, "lr": 5e-3})
    assert row.run_id == d.name == cfg.run_id() and row.grid == "g" and row.state == "done"
    assert row.arch == "ngpt" and row.lr == 5e-3 and row.max_iters == 500 and row.n_kv_head == cfg.n_head
    assert row.final_val_loss == pytest.approx(2.5) and row.last_step == 500 and row.n_evals == 6
    assert row.peak_alloc == 3 * 2 ** 30 and row.peak_reserved == 4 * 2 ** 30
    assert row.attn_backend_used == "sdpa" and row.device_type == "cpu" and row.host == "synthetic"
    assert row.tokens_per_s == pytest.approx(cfg.tokens_per_step / 0.01)
    ev = store.query("select step, tokens, val_loss from evals order by step")
    assert ev.step.tolist() == [0, 100, 200, 300, 400, 500]
    assert ev.tokens.tolist() == [s * cfg.tokens_per_step for s in ev.step]
    assert ev.val_loss.tolist() == pytest.approx([3.0, 2.9, 2.8, 2.7, 2.6, 2.5])


def test_summary_fields_are_optional_and_extra_keys_kept(runs, store):
    d = write_run(runs, "g", {"arch": "gpt"}, summary={"peak_alloc": None, "mfu_causal": None,
                                                       "brand_new_field": 7})
    (d / rundir.SUMMARY).write_text(json.dumps({"final_val_loss": 1.5, "brand_new_field": 7}))
    store.ingest(runs)
    row = store.query("select final_val_loss, peak_alloc, params_total, has_summary, "
                      "json_extract(summary_json, '$.brand_new_field')::INT as extra from runs").iloc[0]
    assert row.final_val_loss == 1.5 and pd.isna(row.peak_alloc) and pd.isna(row.params_total)
    assert row.has_summary and row.extra == 7


def test_ingest_twice_changes_nothing(runs, store):
    for seed in range(3):
        write_run(runs, "g", {"seed": seed})
    write_run(runs, "h", {"arch": "ngpt"}, state="running", steps=400)
    first = store.ingest(runs)
    second = store.ingest(runs)
    assert first["read"] == 4 and second["read"] == 0 and second["unchanged"] == 4
    assert {k: first[k] for k in ("runs", "evals", "train")} == {k: second[k] for k in ("runs", "evals", "train")}
    total = store.query("select (select count(*) from runs) r, (select count(*) from evals) e, "
                        "(select count(*) from train) t").iloc[0]
    assert (total.r, total.e, total.t) == (4, 3 * 11 + 5, 3 * 100 + 40)


def test_ingest_is_incremental(runs, store):
    dirs = [write_run(runs, "g", {"seed": seed}, steps=300, state="running") for seed in range(3)]
    store.ingest(runs)
    before = dict(store.query("select run_id, ingested_at from ingested").values)
    time.sleep(0.01)
    rundir.append_jsonl(dirs[1] / rundir.EVALS, {"step": 400, "tokens": 1, "elapsed": 4.0, "val_loss": 2.0,
                                                  "train_loss": 1.9})
    counts = store.ingest(runs)
    assert counts["read"] == 1 and counts["unchanged"] == 2
    assert store.last_read == [("g", dirs[1].name)]
    after = dict(store.query("select run_id, ingested_at from ingested").values)
    assert [r for r in after if after[r] != before[r]] == [dirs[1].name]
    assert store.query(f"select n_evals, last_val_loss from runs where run_id = '{dirs[1].name}'").values.tolist() \
        == [[5, 2.0]]
    assert counts["evals"] == 4 + 4 + 5  # the re-read run's rows replaced, not added


def test_grid_scope_and_removed_run_dirs(runs, store):
    a = write_run(runs, "a", {"seed": 0})
    write_run(runs, "b", {"seed": 0})
    assert store.ingest(runs)["runs"] == 2
    assert store.ingest(runs, grid="a") == {"scanned": 1, "read": 0, "unchanged": 1, "removed": 0, "runs": 1,
                                            "evals": 11, "train": 100}
    for p in a.iterdir():
        p.unlink()
    a.rmdir()
    assert store.ingest(runs, grid="a")["removed"] == 1
    assert store.query("select grid from runs").grid.tolist() == ["b"]
    assert store.query("select count(*) n from evals where grid = 'a'").n[0] == 0


def test_torn_last_line_is_skipped_then_read_once_complete(runs, store):
    d = write_run(runs, "g", {}, torn=True, state="running")
    store.ingest(runs)
    assert store.query("select count(*) n from evals").n[0] == 11
    assert store.query("select max(step) m from evals").m[0] == 1000  # not the torn 99999
    # the job finishes writing the line
    with open(d / rundir.EVALS, "a") as f:
        f.write('oss": 1.0, "tokens": 5, "elapsed": 1.0}\n')
    assert store.ingest(runs)["read"] == 1
    assert store.query("select max(step) m from evals").m[0] == 99999


def test_repeated_step_keeps_the_last_record(runs, store):
    d = write_run(runs, "g", {"max_iters": 200})
    rundir.append_jsonl(d / rundir.EVALS, {"step": 200, "val_loss": 0.5})  # a resumed job re-evaluates
    store.ingest(runs)
    ev = store.query("select step, val_loss from evals order by step")
    assert ev.step.tolist() == [0, 100, 200] and ev.val_loss.iloc[-1] == 0.5


def test_run_dir_without_status_is_pending(runs, store):
    d = write_run(runs, "g", {}, metrics=False)
    (d / rundir.STATUS).unlink()
    (d / rundir.SUMMARY).unlink()
    (d / rundir.EVALS).unlink()
    (runs / "g" / "not-a-run").mkdir()
    (runs / "g" / ".submitit").mkdir()
    store.ingest(runs)
    assert store.query("select run_id, state, n_evals from runs").values.tolist() == [[d.name, "pending", 0]]


def test_rebuild_recreates_everything(runs, store):
    write_run(runs, "a", {"seed": 0})
    write_run(runs, "b", {"seed": 1})
    first = store.ingest(runs)
    store.con.execute("insert into evals values ('a', 'ghost', 1, 1, 1.0, 1.0, 0.01, 1.0)")  # a corrupted cache
    rebuilt = store.ingest(runs, grid="a", rebuild=True)
    assert rebuilt["read"] == 2 and rebuilt["scanned"] == 2  # every grid: the cache is never half rebuilt
    assert store.query("select count(*) n from evals").n[0] == first["evals"]


def test_schema_version_change_drops_the_cache(tmp_path, runs):
    write_run(runs, "g", {})
    db = tmp_path / "x.duckdb"
    with Store(db) as s:
        s.ingest(runs)
        s.con.execute("update meta set value = 'old' where key = 'schema_version'")
    with Store(db) as s:
        assert s.query("select count(*) n from runs").n[0] == 0
        assert s.ingest(runs)["read"] == 1


def test_cells_view_mean_and_standard_error_over_seeds(runs, store):
    finals = [2.0, 2.2, 2.6]
    for seed, final in enumerate(finals):
        write_run(runs, "g", {"seed": seed}, lambda s, f=final: 4.0 - (4.0 - f) * s / 1000)
    write_run(runs, "g", {"seed": 9}, lambda s: 9.0, state="diverged", steps=300)  # not finished: not averaged
    write_run(runs, "g", {"arch": "ngpt"}, lambda s: 1.5)
    store.ingest(runs)
    c = store.query("select arch, n_runs, n_done, mean_val_loss, se_val_loss from cells order by arch")
    gpt = c.iloc[0]
    sd = math.sqrt(sum((x - 2.2666666) ** 2 for x in finals) / 2)
    assert (gpt.n_runs, gpt.n_done) == (4, 3)
    assert gpt.mean_val_loss == pytest.approx(sum(finals) / 3)
    assert gpt.se_val_loss == pytest.approx(sd / math.sqrt(3), rel=1e-6)
    assert c.iloc[1].mean_val_loss == 1.5 and pd.isna(c.iloc[1].se_val_loss)
    final = store.query("select seed, final_val_loss, finished from final where arch = 'gpt' order by seed")
    assert final.values.tolist() == [[0, 2.0, True], [1, pytest.approx(2.2), True], [2, pytest.approx(2.6), True],
                                     [9, 9.0, False]]


def test_curves_are_downsampled_in_sql(runs, store):
    loss = lambda s: 5.0 - s / 10000
    for seed in (0, 1):
        write_run(runs, "g", {"max_iters": 10000, "eval_interval": 10, "seed": seed}, loss, metrics=False)
    write_run(runs, "g", {"arch": "ngpt", "max_iters": 50, "eval_interval": 10}, loss, metrics=False)
    store.ingest(runs)
    assert store.query("select count(*) n from evals").n[0] == 2 * 1001 + 6
    cur = store.curves("g", max_points=40)
    sizes = cur.groupby("cell_id").size().sort_values()
    assert sizes.iloc[0] == 6 and 30 <= sizes.iloc[1] <= 40  # a short curve is kept whole
    long = cur[cur.n_seeds == 2]
    assert long.step.max() == 10000 and long.step.min() > 0  # the last eval always kept
    assert long.val_loss.tolist() == pytest.approx([loss(s) for s in long.step])  # real points, not aggregates
    assert (long.step.diff().dropna() == long.step.diff().dropna().iloc[0]).all()  # evenly spaced
    one = store.curves("g", cell_ids=[cur.cell_id.iloc[0]], max_points=3)
    assert one.cell_id.nunique() == 1 and len(one) <= 3


def test_crossings_find_the_first_eval_below_target(runs, store):
    d = write_run(runs, "g", {}, lambda s: 3.0 - 0.001 * s)
    store.ingest(runs)
    hits = store.crossings("g", pd.DataFrame({"run_id": [d.name, d.name], "target": [2.55, 0.5]}))
    assert len(hits) == 1  # never reaches 0.5
    h = hits.iloc[0]
    assert (h.step, h.prev_step) == (500, 400) and h.val_loss == pytest.approx(2.5)


def test_put_table_replaces_one_grid(store):
    store.put_table("speedup", "a", pd.DataFrame({"x": [1, 2]}))
    store.put_table("speedup", "b", pd.DataFrame({"x": [3]}))
    store.put_table("speedup", "a", pd.DataFrame({"x": [4]}))
    assert store.query("select grid, x from speedup order by x").values.tolist() == [["b", 3], ["a", 4]]


def test_put_table_keeps_text_columns_text_when_a_grid_has_none(store):
    """A report table whose text column is empty for one grid (no unpaired seed anywhere) must
    still take the next grid's text: DuckDB would type an all-missing column NULL."""
    store.put_table("paired", "a", pd.DataFrame({"unpaired": [None, None], "x": [1.0, 2.0]}))
    store.put_table("paired", "b", pd.DataFrame({"unpaired": ["seed 2 (variant done, baseline failed)"], "x": [3.0]}))
    got = store.query("select grid, unpaired from paired order by grid, x")
    assert got.unpaired.tolist()[-1] == "seed 2 (variant done, baseline failed)" and got.unpaired.isna().sum() == 2


def _hold(db, seconds: float, read_only: bool = False) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from ablate.store import Store; "
                               f"s = Store({str(db)!r}, read_only={read_only}); print('ready', flush=True); "
                               f"time.sleep({seconds}); print('releasing', flush=True); s.close()"], stdout=subprocess.PIPE,
                              text=True)
    assert holder.stdout.readline().strip() == "ready"
    return holder


@pytest.mark.parametrize("holder_reads", [False, True])
def test_a_second_command_waits_its_turn(tmp_path, capfd, holder_reads):
    """DuckDB refuses a second open of a file one process writes (or any writer while another
    reads); an ablate command waits for it, saying so once, instead of failing."""
    db = tmp_path / "locked.duckdb"
    Store(db).close()
    holder = _hold(db, 3, read_only=holder_reads)
    try:
        with Store(db) as store:  # a writer: waits for the holder to let go
            assert store.query("select count(*) as n from runs").n[0] == 0
        assert holder.stdout.readline().strip() == "releasing"  # it got the store only once the holder let go
        assert holder.wait(timeout=60) == 0
    finally:
        holder.kill()
        holder.wait()
    assert capfd.readouterr().err.count(f"waiting for the store {db}: another ablate command is using it") == 1


def test_a_store_held_too_long_is_one_line(tmp_path, monkeypatch):
    db = tmp_path / "locked.duckdb"
    Store(db).close()
    holder = _hold(db, 60)
    monkeypatch.setenv("ABLATE_STORE_WAIT_S", "1")
    try:
        with pytest.raises(AblateError, match=r"is still in use after 1 s .*ABLATE_STORE_WAIT_S"):
            Store(db)
    finally:
        holder.kill()
        holder.wait()


def test_query_errors_are_one_line(store):
    with pytest.raises(AblateError, match="query failed"):
        store.query("select nope from runs")


def test_garbled_and_blank_lines_are_skipped(runs, store):
    d = write_run(runs, "g", {"max_iters": 300})
    lines = (d / rundir.EVALS).read_text().splitlines()
    lines[1] = '{"step": 100, "val_loss": '  # garbled mid-file (a disk hiccup), then a blank line
    (d / rundir.EVALS).write_text("\n".join(lines[:2] + [""] + lines[2:]) + "\n")
    store.ingest(runs)
    assert store.query("select step from evals order by step").step.tolist() == [0, 200, 300]


def test_junk_values_become_null(runs, store):
    d = write_run(runs, "g", {"max_iters": 100}, metrics=False)
    rundir.append_jsonl(d / rundir.METRICS, {"step": 10, "loss": "nan?", "tokens_per_s": float("inf"),
                                             "mem_peak": None, "lr": [1]})
    rundir.write_json_atomic(d / rundir.STATUS, {"state": "done", "job_id": 12345, "attempts": "2"})
    store.ingest(runs)
    t = store.query("select loss, tokens_per_s, mem_peak, lr from train").iloc[0]
    assert all(pd.isna(v) for v in t)
    r = store.query("select job_id, attempts from runs").iloc[0]
    assert r.job_id == "12345" and r.attempts == 2


def test_missing_runs_root_does_not_empty_the_store(tmp_path, runs, store):
    write_run(runs, "g", {})
    store.ingest(runs)
    assert store.ingest(tmp_path / "elsewhere")["removed"] == 0
    assert store.query("select count(*) n from runs").n[0] == 1


def test_read_only_store(tmp_path, runs):
    with pytest.raises(AblateError, match="no store at"):
        Store(tmp_path / "none.duckdb", read_only=True)
    write_run(runs, "g", {})
    with Store(tmp_path / "db.duckdb") as s:
        s.ingest(runs)
    with Store(tmp_path / "db.duckdb", read_only=True) as s:
        assert s.query("select count(*) n from final").n[0] == 1
        with pytest.raises(AblateError, match="read-only"):
            s.ingest(runs)


def test_every_summary_loss_lands_in_its_own_column(runs, store):
    """final_val_loss, final_train_loss and final_eval_step come from the summary field of the
    same name (and the `final` / `cells` views carry them): no test read final_train_loss, so
    reading it from the wrong field went unnoticed."""
    write_run(runs, "g", {"arch": "gpt", "seed": 0}, summary={"final_val_loss": 2.5, "final_train_loss": 1.234,
                                                             "final_eval_step": 990})
    write_run(runs, "g", {"arch": "gpt", "seed": 1}, summary={"final_val_loss": 2.7, "final_train_loss": 1.434})
    store.ingest(runs)
    rows = store.query("select seed, final_val_loss, final_train_loss, final_eval_step from runs order by seed")
    assert rows.final_val_loss.tolist() == [2.5, 2.7] and rows.final_train_loss.tolist() == [1.234, 1.434]
    assert rows.final_eval_step[0] == 990
    final = store.query("select final_train_loss, final_step from final order by seed")
    assert final.final_train_loss.tolist() == [1.234, 1.434] and final.final_step[0] == 990
    cell = store.query("select mean_train_loss, mean_val_loss from cells").iloc[0]
    assert cell.mean_train_loss == pytest.approx(1.334) and cell.mean_val_loss == pytest.approx(2.6)


def test_the_schema_is_readable_from_the_store_itself(runs, store, tmp_path):
    """`ablate query --schema`: every table and view, every column with its type and one line
    of meaning (a column added without a line here fails this test)."""
    from ablate.store.docs import TABLES, describe

    write_run(runs, "g", {"arch": "gpt"})
    store.ingest(runs)
    rows = describe(store.con)
    tables = {t for t, *_ in rows}
    assert {"runs", "evals", "train", "broken", "final", "cells", "ingested", "meta"} <= tables <= set(TABLES)
    undocumented = [f"{t}.{c}" for t, c, _, doc in rows if not doc]
    assert undocumented == [], undocumented
    docs = {(t, c): (typ, doc) for t, c, typ, doc in rows}
    assert docs[("runs", "lr")] == ("DOUBLE", "config: peak learning rate")
    assert docs[("train", "lr")][1] == "the step's learning rate"
    assert docs[("runs", "n_kv_head")][1].endswith("null = n_head")  # one spelling of no value
    store.close()  # the command waits for a writer to let go of the store
    r = subprocess.run([sys.executable, "-m", "ablate.cli", "query", "--schema", "--db", str(runs / "ablate.duckdb"),
                        "--no-ingest"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "tokens_per_s" in r.stdout and "runs: one row per run dir" in r.stdout, r.stderr


def test_one_column_for_throughput_and_for_final_loss_while_a_run_runs(runs, store):
    """A running job's runs row has its figures so far in the same columns a finished one has."""
    write_run(runs, "g", {"arch": "gpt"}, state="running", steps=300, tokens_per_s=1234.0)
    store.ingest(runs)
    row = store.query("select * from runs").iloc[0]
    assert "median_tokens_per_s" not in row.index
    assert row.tokens_per_s == pytest.approx(1234.0) and not row.has_summary
    assert row.final_val_loss == row.last_val_loss and row.final_eval_step == 300


def test_query_prints_null_and_where_takes_null(tmp_path):
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    write_run(runs, "g", {"arch": "gpt"})
    r = subprocess.run([sys.executable, "-m", "ablate.cli", "query", "select peak_alloc, \"window\" from runs"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.split()[-2:] == ["null", "null"] and "NaN" not in r.stdout, r.stdout
