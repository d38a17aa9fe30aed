"""plan -> submit -> train -> DuckDB -> report on a tiny 2-cell grid, with real files."""
import json
import os
import re
from pathlib import Path

import duckdb

from conftest import ablate_cli
from test_cli import tiny_grid  # noqa: F401  (fixture)


def test_tiny_grid_end_to_end(tiny_grid, tmp_path):
    runs, reports = Path(os.environ["ABLATE_RUNS_DIR"]), Path(os.environ["ABLATE_REPORTS_DIR"])
    r = ablate_cli("submit", tiny_grid, "--executor", "local")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = json.loads(ablate_cli("plan", tiny_grid, "--json").stdout)
    assert [row["state"] for row in rows] == ["done", "done"]
    for row in rows:
        run_dir = runs / "tiny" / row["run_id"]
        summary = json.loads((run_dir / "summary.json").read_text())
        assert summary["params_total"] == row["n_params"]  # the plan's count is the model's
        evals = [json.loads(l) for l in (run_dir / "evals.jsonl").read_text().splitlines()]
        assert evals[-1]["step"] == 30
        assert evals[-1]["val_loss"] < evals[0]["val_loss"]

    # submitting again trains nothing: the run dirs are untouched
    before = {p: p.stat().st_mtime_ns for p in runs.rglob("evals.jsonl")}
    r = ablate_cli("submit", tiny_grid, "--executor", "local")
    assert r.returncode == 0 and "nothing to submit" in r.stdout
    assert before == {p: p.stat().st_mtime_ns for p in runs.rglob("evals.jsonl")}

    r = ablate_cli("report", tiny_grid, "--quiet")
    assert r.returncode == 0, r.stdout + r.stderr
    out = reports / "tiny"
    png = (out / "loss_curves.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 5000
    assert "ngpt" in (out / "summary.md").read_text()
    assert (out / "speedup.csv").read_text().count("\n") >= 2
    html = (out / "index.html").read_text()
    assert "<script src=\"http" not in html and "vega" in html.lower()
    con = duckdb.connect(str(runs / "ablate.duckdb"), read_only=True)
    assert con.execute("select count(*) from runs where grid = 'tiny'").fetchone()[0] == 2
    n_evals = con.execute("select count(*) from evals").fetchone()[0]
    con.close()
    assert n_evals == sum(len(p.read_text().splitlines()) for p in runs.rglob("evals.jsonl"))
    # re-ingesting is idempotent; --log-x redraws the curves on a log axis
    assert ablate_cli("report", tiny_grid, "--quiet", "--log-x").returncode == 0
    specs = json.loads(re.search(r"var specs=(\{.*?\});\n", (out / "index.html").read_text(), re.S).group(1))
    assert specs["chart-loss_curves"]["encoding"]["x"]["scale"]["type"] == "log"
    con = duckdb.connect(str(runs / "ablate.duckdb"), read_only=True)
    assert con.execute("select count(*) from evals").fetchone()[0] == n_evals
