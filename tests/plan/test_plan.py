"""`ablate plan` rows and totals: cost from measured throughput of the same shape and device type."""
import os
import textwrap
from pathlib import Path

from ablate.core import rundir
from ablate.plan.grid import load_grid
from ablate.plan.plan import format_table, lr_sweep_warning, plan_rows

GRID = """
name: {name}
data: {{dataset: shakespeare, tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 900, device: {device}}}
resources: {{gpus: {gpus}, nodes: {nodes}}}
grid:
  n_layer: [2, 4]
"""


def grid(tmp_path, name="g", device="cpu", gpus=0, nodes=1):
    path = tmp_path / f"{name}.yaml"
    path.write_text(textwrap.dedent(GRID.format(name=name, device=device, gpus=gpus, nodes=nodes)))
    return load_grid(path)


def finish(cell, tokens_per_s, device, device_name, state="done", grid_dir="earlier"):
    """A finished run of this cell's shape, in another grid's directory."""
    run_dir = Path(os.environ["ABLATE_RUNS_DIR"]) / grid_dir / cell.run_id
    rundir.write_json_atomic(run_dir / rundir.CONFIG, {"config": cell.config.to_dict()})
    rundir.write_json_atomic(run_dir / rundir.SUMMARY, {"state": state, "tokens_per_s": tokens_per_s,
                                                        "device": device, "device_name": device_name})


def test_hours_come_from_the_same_shape_on_the_same_device_type(tmp_path):
    g = grid(tmp_path)
    small, big = g.cells
    finish(small, 64.0, "cpu", "cpu (x86_64)")
    finish(big, 1e6, "cuda", "NVIDIA H200")  # another device type: says nothing about a cpu cell
    rows = plan_rows(g)
    assert rows[0]["est_hours"] == 900 * 4 * 16 / 64.0 / 3600 and rows[0]["throughput_device"] == "cpu (x86_64)"
    assert rows[1]["est_hours"] is None
    assert format_table(g, rows).endswith("FLOPs")  # not every cell is known: FLOPs, not a partial sum

    finish(big, 128.0, "cpu", "cpu (x86_64)")
    rows = plan_rows(g)
    assert rows[1]["est_hours"] == 900 * 4 * 16 / 128.0 / 3600
    total = rows[0]["est_hours"] + rows[1]["est_hours"]  # 0.375 hours
    assert format_table(g, rows).endswith("cost ~22 min (from measured tokens/s on cpu (x86_64))"), total


def test_gpu_grids_count_gpu_hours_and_ignore_unfinished_runs(tmp_path):
    g = grid(tmp_path, device="auto", gpus=8)
    for cell in g.cells:
        finish(cell, 3600.0, "cuda", "NVIDIA H200")
    finish(g.cells[1], 1.0, "cuda", "NVIDIA H200", state="failed", grid_dir="later")  # newer, but not a finished measurement
    rows = plan_rows(g)
    assert [r["est_hours"] for r in rows] == [900 * 4 * 16 / 3600.0 / 3600 * 8] * 2
    assert "cost ~4 GPU-min (from measured tokens/s on NVIDIA H200)" in format_table(g, rows)  # 0.071 GPU-hours


def test_gpu_hours_count_every_node(tmp_path):
    """A job of 2 nodes x 8 GPUs holds 16 GPUs for as long as it runs."""
    g = grid(tmp_path, device="auto", gpus=8, nodes=2)
    for cell in g.cells:
        finish(cell, 3600.0, "cuda", "NVIDIA H200")
    assert [r["est_hours"] for r in plan_rows(g)] == [900 * 4 * 16 / 3600.0 / 3600 * 16] * 2


def test_plan_warns_when_a_variant_sweeps_fewer_than_three_lrs(tmp_path):
    def sweep(lrs_gpt, lrs_ngpt):
        path = tmp_path / "s.yaml"
        path.write_text(textwrap.dedent(f"""
            name: s
            data: {{dataset: shakespeare, tokenizer: char}}
            grid: {{arch: [gpt, ngpt], lr: {sorted(set(lrs_gpt) | set(lrs_ngpt))}, max_iters: [100, 200]}}
            exclude: {[{"arch": "gpt", "lr": x} for x in set(lrs_ngpt) - set(lrs_gpt)]
                      + [{"arch": "ngpt", "lr": x} for x in set(lrs_gpt) - set(lrs_ngpt)]}
            seeds: [0, 1]
        """))
        return lr_sweep_warning(load_grid(path))
    assert sweep([1e-3, 2e-3, 4e-3], [2e-3, 4e-3, 8e-3]) is None
    msg = sweep([1e-3, 2e-3, 4e-3], [4e-3, 8e-3])
    assert "2 of 4 lr sweeps have fewer than three lrs (e.g. arch=ngpt max_iters=100: 0.004, 0.008)" in msg
    assert lr_sweep_warning(grid(tmp_path)) is None  # no lr axis: nothing swept, nothing to warn about
