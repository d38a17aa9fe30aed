"""Noise before compute: `ablate plan` shows each cell's expected eval standard error (measured by
finished runs of the same data and context, else a prior), the seed spread of cells that finished
with several seeds, and warns when that noise would swallow the effect the grid hopes to see."""
import json
import math
import os
import re
import statistics
import textwrap
from pathlib import Path

from conftest import ablate_cli, write_text_grid

from ablate.core import rundir
from ablate.plan import measured
from ablate.plan.grid import load_grid
from ablate.plan.measured import noise_warnings
from ablate.plan.plan import format_table, plan_rows

GRID = """
name: {name}
data: {{dataset: shakespeare, tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: {context}, batch_size: {batch}, max_iters: 100,
        eval_iters: {eval_iters}, device: cpu}}
grid:
  n_layer: [2, 4]
{extra}"""


def grid(tmp_path, name="g", context=128, batch=8, eval_iters=40, extra=""):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(GRID.format(name=name, context=context, batch=batch, eval_iters=eval_iters,
                                                extra=extra)))
    return load_grid(path)


def finish(cell, seed=None, **summary):
    """A done run of this cell (another seed if given), in another grid's directory."""
    config = cell.config.to_dict() | ({"seed": seed} if seed is not None else {})
    run_dir = Path(os.environ["ABLATE_RUNS_DIR"]) / "earlier" / f"{cell.run_id}-{seed}"
    rundir.write_json_atomic(run_dir / rundir.CONFIG, {"config": config})
    rundir.write_json_atomic(run_dir / rundir.SUMMARY, {"state": "done", **summary})


def test_without_finished_runs_the_prior_scales_with_the_windows_an_eval_scores(tmp_path):
    rows = plan_rows(grid(tmp_path, eval_iters=40, batch=8))
    small = plan_rows(grid(tmp_path, name="h", eval_iters=10, batch=8))
    assert [r["eval_se_runs"] for r in rows] == [0, 0]  # a prior: nothing finished
    assert rows[0]["eval_se"] == measured.prior_sigma(rows[0]["config"]) / math.sqrt(40 * 8)
    assert small[0]["eval_se"] == 2 * rows[0]["eval_se"]  # a quarter of the windows: twice the error
    table = format_table(grid(tmp_path), rows)
    assert f"~{rows[0]['eval_se']:.2g}" in table and "~ a prior" in table


def test_a_finished_run_of_the_same_data_and_context_measures_every_cell(tmp_path):
    g = grid(tmp_path, eval_iters=40, batch=8)
    other = grid(tmp_path, name="o", context=64)
    finish(other.cells[0], final_val_loss_se=0.05)  # another context: says nothing about T = 128
    assert [r["eval_se_runs"] for r in plan_rows(g)] == [0, 0]
    finish(grid(tmp_path, name="m", eval_iters=10, batch=4).cells[1], final_val_loss_se=0.02)  # 40 windows
    rows = plan_rows(g)
    sigma = 0.02 * math.sqrt(10 * 4)  # one window's spread
    assert [r["eval_se_runs"] for r in rows] == [1, 1]
    assert all(math.isclose(r["eval_se"], sigma / math.sqrt(40 * 8)) for r in rows)
    table = format_table(g, rows)
    assert f" {rows[0]['eval_se']:.2g} " in table and "~" not in table.split("eval se:")[0]
    assert f"= {measured.noise_threshold(rows[0]['eval_se']):.2g} 'within eval noise'" in table


def test_runs_from_before_summary_had_the_se_are_read_from_their_last_eval(tmp_path):
    g = grid(tmp_path, eval_iters=40, batch=8)
    finish(g.cells[0])
    run_dir = next((Path(os.environ["ABLATE_RUNS_DIR"]) / "earlier").iterdir())
    for se in (0.5, 0.01):
        rundir.append_jsonl(run_dir / rundir.EVALS, {"step": 1, "val_loss": 2.0, "val_loss_se": se})
    assert math.isclose(plan_rows(g)[1]["eval_se"], 0.01)


def test_the_warning_names_the_eval_iters_that_resolve_the_effect_and_they_do(tmp_path):
    """The afternoon's case: eval_iters 20 whose noise threshold swallows the effect asked for."""
    g = grid(tmp_path, eval_iters=20, batch=8, extra="power: {detect: 0.02}\n")
    rows = plan_rows(g)
    [line] = noise_warnings(g.path, rows, 0.02)
    assert "eval_iters 20 x batch_size 8 = 160 windows" in line and "a prior" in line and "power: detect" in line
    need = int(re.search(r"eval_iters: (\d+) would resolve it", line).group(1))
    assert need > 20
    assert noise_warnings(g.path, plan_rows(grid(tmp_path, name="n", eval_iters=need, batch=8)), 0.02) == []
    assert noise_warnings(g.path, plan_rows(grid(tmp_path, name="p", eval_iters=need - 1, batch=8)), 0.02) != []


def test_without_power_the_effect_hoped_for_is_one_percent_of_the_measured_final_loss(tmp_path):
    g = grid(tmp_path, eval_iters=40, batch=8)
    finish(g.cells[0], final_val_loss_se=0.12 / math.sqrt(320), final_val_loss=2.0)  # gaps under 0.019 are noise
    rows = plan_rows(g)
    assert rows[0]["expected_final_loss"] == 2.0 and measured.hoped_effect(rows[0], None) == 0.02
    assert noise_warnings(g.path, rows, None) == []  # 0.019 < 1% of 2.0
    finish(g.cells[1], final_val_loss_se=0.12 / math.sqrt(320), final_val_loss=1.0)  # the median: 1.5
    [line] = noise_warnings(g.path, plan_rows(g), None)
    assert "more than the 0.015 this grid hopes to see (1% of the final val loss" in line


def test_eval_iters_1_warns_that_no_standard_error_is_recorded(tmp_path):
    g = grid(tmp_path, eval_iters=1)
    assert any("eval_iters 1 (2 cells)" in w for w in noise_warnings(g.path, plan_rows(g), None))


def test_seed_spread_of_a_cell_that_finished_with_several_seeds(tmp_path):
    g = grid(tmp_path)
    losses = [2.0, 2.3, 2.15]
    for seed, loss in enumerate(losses):
        finish(g.cells[1], seed=seed, final_val_loss=loss, final_val_loss_se=0.001)
    rows = plan_rows(g)
    assert rows[0]["seed_sd"] is None and rows[1]["seed_sd_runs"] == 3
    assert math.isclose(rows[1]["seed_sd"], statistics.stdev(losses))
    assert "spread by a s.d. of" in format_table(g, rows)
    [line] = [w for w in noise_warnings(g.path, rows, 0.05) if "seed noise" in w]
    assert "--seeds-for" in line and "3 seeds" in line
    two_seeds = grid(tmp_path, name="s", extra="seeds: [0, 1]\n")
    assert not any("seed noise" in w for w in noise_warnings(two_seeds.path, plan_rows(two_seeds), 0.05))


TINY = """
name: tiny
data: {{dataset: 'text:{text}', tokenizer: char}}
base: {{n_layer: 1, n_head: 2, n_embd: 16, context: 16, batch_size: 4, max_iters: 6,
        eval_interval: 3, eval_iters: 6, log_interval: 3, device: cpu}}
grid: {{seed: [0, 1]}}
"""


def test_a_trained_run_records_its_se_and_the_plan_uses_it(tmp_path):
    path = write_text_grid(tmp_path, TINY, "tiny.yaml")
    r = ablate_cli("run", path, "--executor", "local", "--jobs", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in Path(os.environ["ABLATE_RUNS_DIR"]).glob("tiny/*/summary.json")]
    assert len(summaries) == 2 and all(s["final_val_loss_se"] > 0 for s in summaries)
    fewer = tmp_path / "fewer.yaml"
    fewer.write_text(path.read_text().replace("name: tiny", "name: fewer").replace("eval_iters: 6", "eval_iters: 2"))
    r = ablate_cli("plan", fewer, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    sigma = statistics.median(s["final_val_loss_se"] * math.sqrt(6 * 4) for s in summaries)
    assert all(math.isclose(row["eval_se"], sigma / math.sqrt(2 * 4)) and row["eval_se_runs"] == 2 for row in rows)
    assert "eval noise" not in r.stderr  # one sentence repeated: every window scores alike
    rows = json.loads(ablate_cli("plan", path, "--json").stdout)
    losses = [s["final_val_loss"] for s in summaries]
    assert all(row["seed_sd_runs"] == 2 and math.isclose(row["seed_sd"], statistics.stdev(losses)) for row in rows)
