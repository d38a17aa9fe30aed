"""The command line as a user meets it: real subprocesses, exit codes, no tracebacks."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT, ablate_cli, write_text_grid

TINY = """
name: tiny
data: {{dataset: 'text:{text}', tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 30,
        eval_interval: 10, eval_iters: 2, log_interval: 5, device: cpu}}
arch_defaults: {{gpt: {{lr: 3e-3}}, ngpt: {{lr: 1e-2}}}}
grid: {{arch: [gpt, ngpt]}}
"""


@pytest.fixture
def tiny_grid(tmp_path):
    return write_text_grid(tmp_path, TINY, "tiny.yaml")


@pytest.mark.parametrize("content, message", [
    (None, "no such grid file"),
    ("name: g\ngrid: {arch: [gpt\n", "invalid YAML"),
    ("name: g\ngrid: {arch: [gpt]}\nbase: {n_layr: 2}\n", "unknown key 'n_layr'"),
    ("name: g\ngrid: {n_layer: [two]}\n", "expected int"),
    ("name: g\ndata: {dataset: wikipedia}\ngrid: {arch: [gpt]}\n", "key 'dataset'"),
])
@pytest.mark.parametrize("verb", ["plan", "submit", "report"])
def test_bad_input_is_one_line_and_exit_2(tmp_path, verb, content, message):
    path = tmp_path / "grid.yaml"
    if content is not None:
        path.write_text(content)
    r = ablate_cli(verb, path)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = [l for l in r.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("ablate: error: ") and message in lines[0], r.stderr


def test_plan_json_lists_every_cell(tiny_grid):
    r = ablate_cli("plan", tiny_grid, "--json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert [row["config"]["arch"] for row in rows] == ["gpt", "ngpt"]
    for row in rows:
        assert set(row) >= {"run_id", "config", "state", "n_params", "tokens", "est_peak_mem_bytes", "flops"}
        assert row["state"] == "new" and row["n_params"] > 0
        assert row["tokens"] == 30 * 4 * 16


def test_plan_table_and_explain(tiny_grid):
    r = ablate_cli("plan", tiny_grid)
    assert r.returncode == 0, r.stderr
    assert "arch" in r.stdout and "2 cells, 2 to run" in r.stdout
    rid = json.loads(ablate_cli("plan", tiny_grid, "--json").stdout)[0]["run_id"]
    r = ablate_cli("plan", tiny_grid, "--explain", rid)
    assert "activations" in r.stdout and "optimizer" in r.stdout


def test_plan_status_report_never_import_torch(tiny_grid):
    code = ("import sys; from ablate.cli import main; main(['plan', sys.argv[1]]);"
            "assert 'numpy' not in sys.modules, 'numpy imported by plan (slow start-up)';"
            "import ablate.store, ablate.report, ablate.launch.submit, ablate.launch.status;"
            "assert 'torch' not in sys.modules, 'torch imported'")
    r = subprocess.run([sys.executable, "-c", code, str(tiny_grid)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("argv, retry", [
    (["submit", "--retry", "g.yaml"], "all"),                 # bare flag before the grid
    (["submit", "g.yaml", "--retry"], "all"),                 # bare flag last
    (["submit", "--retry", "failed,oom", "g.yaml"], "failed,oom"),
    (["submit", "g.yaml", "--retry", "cancelled", "--force"], "cancelled"),
])
def test_retry_flag_never_swallows_the_grid(argv, retry):
    from ablate.cli import parse_args

    args = parse_args(argv)
    assert args.grid == "g.yaml" and args.retry == retry


def test_train_verb_reports_a_missing_run_dir_in_one_line(tmp_path):
    r = ablate_cli("train", tmp_path / "nope")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "config.json" in r.stderr or "nope" in r.stderr, r.stderr
