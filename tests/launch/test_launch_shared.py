"""One run dir per run id: two grids that share a cell (a baseline kept for ten ablation grids)
train it once; the second grid sees it from its own folder, and its report covers it."""
import json
import os
from pathlib import Path

from ablate.core import rundir
from ablate.plan.grid import load_grid
from launch_helpers import cli, grid_file, one_thread, write_grid  # noqa: F401  (fixtures)


def test_two_grids_one_baseline_the_second_trains_nothing_it_shares(tmp_path):
    first = write_grid(tmp_path, name="ablation_a", grid="{arch: [gpt, ngpt]}")
    second = write_grid(tmp_path, name="ablation_b", grid="{n_kv_head: [2, 1]}")  # gpt, n_kv_head 2: the same baseline
    assert cli("submit", first, "--executor", "debug").returncode == 0
    a, b = load_grid(first), load_grid(second)
    shared = {c.run_id for c in a.cells} & {c.run_id for c in b.cells}
    assert len(shared) == 1 and set(b.shared) == shared  # found in ablation_a's folder, before any link
    plan = {r["run_id"]: r["state"] for r in json.loads(cli("plan", second, "--json").stdout)}
    assert sorted(plan.values()) == ["done", "new"]

    r = cli("submit", second, "--executor", "debug")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "skip" in out and "done" in out and out.count("in-process (debug)") == 1, out  # one cell trained
    (rid,) = shared
    link = b.runs_dir / rid
    assert link.is_symlink() and link.resolve() == (a.runs_dir / rid).resolve()
    assert rundir.read_status(link)["attempts"] == 1  # trained once, by the first grid

    r = cli("report", second, "--quiet")
    assert r.returncode == 0, r.stderr
    md = (Path(os.environ["ABLATE_REPORTS_DIR"]) / "ablation_b" / "summary.md").read_text()
    assert "2 runs in the store (2 done)." in md
    assert f"1 cells are shared with other grids (ablation_a) that ran them first: reused, not trained again ({rid})" in md
    status = cli("status", second)
    assert status.returncode == 0 and "2 done" in status.stdout, status.stdout

    r = cli("submit", second, "--executor", "debug", "--force", "--where", "n_kv_head=2")
    assert r.returncode == 0 and rundir.read_status(a.runs_dir / rid)["attempts"] == 1  # --force: started over, here
    assert rundir.state_of(a.runs_dir / rid) == "done"
