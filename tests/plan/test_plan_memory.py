"""`ablate plan --memory`: one simulated step per distinct shape, cached on disk so a plan stays
fast (and torch-free once cached); without --memory the plan never imports torch. And the
plan's figures read as numbers a person would write."""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ablate.plan.grid import load_grid
from ablate.plan.simcache import Cache, fits, gpu_memory_gib, simulate
from ablate.plan.plan import format_table, human_count, human_flops, human_hours, plan_rows

ROOT = Path(__file__).resolve().parents[2]

GRID = """
name: mem
data: {dataset: shakespeare, tokenizer: char}
base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, vocab_size: 128, max_iters: 10, device: cpu}
grid:
  arch: [gpt, ngpt]
  lr: [1.0e-3, 2.0e-3, 3.0e-3]
  act_ckpt: [none, blocks]
"""


@pytest.fixture
def mem_grid(tmp_path):
    path = tmp_path / "mem.yaml"
    path.write_text(textwrap.dedent(GRID))
    return path


def run_plan(*args, code="pass"):
    """`ablate plan ARGS` in a fresh process; `code` runs after it (asserts on sys.modules)."""
    script = f"import sys; from ablate.cli import main; rc = main({list(map(str, args))!r}); {code}; sys.exit(rc)"
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=600)


def test_plan_of_the_ablations_grid_never_imports_torch():
    r = run_plan("plan", ROOT / "grids" / "ablations.yaml", code="assert 'torch' not in sys.modules, 'torch imported'")
    assert r.returncode == 0, r.stderr
    assert "12 cells, 12 to run" in r.stdout


def test_memory_simulates_each_shape_once_caches_it_and_then_stays_torch_free(mem_grid):
    """12 cells, 4 shapes (arch x act_ckpt; the lr does not change memory): 4 simulations, in
    worker processes; the second plan reads them all from the cache without importing torch."""
    from ablate.core.config import make_config
    from ablate.train.memtrack import simulate_step

    first = run_plan("plan", mem_grid, "--memory", "--json")
    assert first.returncode == 0, first.stderr
    assert "simulating 4 shapes of 4" in first.stderr and "2 processes" in first.stderr
    rows = json.loads(first.stdout)
    assert len(rows) == 12 and all("total" in r["simulated"] for r in rows)
    for r in rows[:2] + rows[-2:]:  # what the workers simulated is what simulate_step gives here
        assert {k: v for k, v in r["simulated"].items() if k not in ("device", "target", "attention")} == \
            simulate_step(make_config(r["config"]), "cpu")
        assert r["simulated"]["attention"] == "sdpa"  # the backend the simulated step ran
    same_shape = [r["simulated"]["total"] for r in rows if r["config"]["arch"] == "gpt"
                  and r["config"]["act_ckpt"] == "none"]
    assert len(same_shape) == 3 and len(set(same_shape)) == 1
    blocks = {r["config"]["arch"]: r["simulated"]["total"] for r in rows if r["config"]["act_ckpt"] == "blocks"}
    plain = {r["config"]["arch"]: r["simulated"]["total"] for r in rows if r["config"]["act_ckpt"] == "none"}
    assert all(blocks[a] < plain[a] for a in plain)

    again = run_plan("plan", mem_grid, "--memory", "--gpu-mem", "0.001",
                     code="assert 'torch' not in sys.modules, 'torch imported although every shape was cached'")
    assert again.returncode == 0, again.stderr
    assert "simulating" not in again.stderr
    assert "weights" in again.stdout and "acts" in again.stdout and "fits" in again.stdout
    ids = {r["run_id"] for r in rows}
    verdicts = [line.split()[-1] for line in again.stdout.splitlines() if line.split()[:1] and line.split()[0] in ids]
    assert len(verdicts) == 12 and set(verdicts) <= {"yes", "tight", "no"} and "no" in verdicts  # ~1 MiB in 1 MiB


def test_cache_keys_follow_what_changes_memory(tmp_path):
    cache = Cache(tmp_path / "c.json")
    grid = load_grid(_write(tmp_path, GRID))
    a, b = grid.cells[0].config.to_dict(), grid.cells[2].config.to_dict()
    assert {k for k in a if a[k] != b[k]} == {"lr"}
    assert cache.key(a, 0, "cpu") == cache.key(b, 0, "cpu")
    assert cache.key(a, 0, "cpu") != cache.key({**a, "batch_size": 8}, 0, "cpu")
    assert cache.key(a, 0, "cpu") != cache.key(a, 0, "cuda")
    assert cache.key({**a, "grad_accum": 2}, 0, "cpu") == cache.key({**a, "grad_accum": 64}, 0, "cpu")  # 2 = any more
    assert cache.key({**a, "grad_accum": 8}, 8, "cpu") == cache.key(a, 0, "cpu")  # 1 micro-batch per GPU
    cache.save({"k": {"total": 1}})
    assert json.loads((tmp_path / "c.json").read_text()) == {"k": {"total": 1}}


def test_without_a_step_function_only_the_cache_is_read(tmp_path, mem_grid):
    grid = load_grid(mem_grid)
    assert simulate(grid.cells, 0, cache=Cache(tmp_path / "none.json")) == {}


def test_gpu_named_in_resources_and_fits():
    class R:
        constraint, partition = "h100", None
    assert gpu_memory_gib(R) == (79.2, "h100")
    R.constraint, R.partition = None, "gpu-a100-80g"
    assert gpu_memory_gib(R)[0] == 79.2
    R.partition = "cpu"
    assert gpu_memory_gib(R) is None
    assert (fits(70 * 2 ** 30, 80), fits(75 * 2 ** 30, 80), fits(81 * 2 ** 30, 80), fits(None, 80)) == \
        ("yes", "tight", "no", "")


@pytest.mark.parametrize("n, text", [(950, "950"), (999.96e3, "1M"), (1_082_496, "1.08M"), (124e6, "124M"),
                                     (2.68e9, "2.68B"), (3.5e12, "3.5T"), (7.47e21, "7.47e21")])
def test_counts_read_as_people_write_them(n, text):
    assert human_count(n) == text


def test_flops_and_hours_read_as_people_write_them():
    assert human_flops(7.47e21) == "7.47e21" and human_flops(1.67e13) == "1.67e13"
    assert [human_hours(h, False) for h in (0.001, 0.375, 1.2, 999.9, 31180682)] == \
        ["<1 min", "~22 min", "~1.2 hours", "~1k hours", "~31.2M hours"]
    assert human_hours(5.0, True) == "~5 GPU-hours"


def test_the_table_has_no_raw_float_artifacts(tmp_path):
    """A CPU demo's memory in MiB (not 0.00GiB), a huge grid's FLOPs and hours without e+ or
    fractions of hours in the millions."""
    grid = load_grid(_write(tmp_path, GRID.replace("max_iters: 10", "max_iters: 2000000000")))
    rows = plan_rows(grid)
    for r in rows:
        r["est_hours"], r["throughput_device"] = 3e5, "cpu"
    table = format_table(grid, rows)
    assert "e+" not in table and "0.00 " not in table and "GiB" not in table
    assert "MiB" in table and "~3.6M hours" in table and "tokens to train" in table


def _write(tmp_path, text):
    path = tmp_path / "g.yaml"
    path.write_text(textwrap.dedent(text))
    return path


@pytest.mark.parametrize("shape", [
    {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "context": 128, "batch_size": 16, "vocab_size": 128},
    {"arch": "ngpt", "n_layer": 4, "n_head": 4, "n_embd": 128, "context": 128, "batch_size": 16, "vocab_size": 128},
    {"arch": "gpt", "n_layer": 3, "n_head": 4, "n_embd": 256, "context": 256, "batch_size": 2, "vocab_size": 8192,
     "dtype": "bf16", "n_kv_head": 2, "tie_embeddings": True},
    {"arch": "ngpt", "n_layer": 3, "n_head": 4, "n_embd": 256, "context": 256, "batch_size": 2, "vocab_size": 8192,
     "act_ckpt": "blocks", "loss_chunk": 128, "share_attn": 1, "window": 64},
    {"arch": "gpt", "n_layer": 3, "n_head": 4, "n_embd": 256, "context": 256, "batch_size": 2, "vocab_size": 8192,
     "dtype": "bf16", "act_ckpt": "selective"},
], ids=["quickstart-gpt", "quickstart-ngpt", "gpt-bf16-gqa-tied", "ngpt-knobs-share-swa", "gpt-bf16-selective"])
def test_the_analytical_estimate_is_within_10_percent_of_the_simulation(shape):
    """The torch-free estimate (plan without --memory, the report's ticks) against a simulated
    step, for shapes it was not calibrated on."""
    from ablate.core import estimate
    from ablate.core.config import make_config, resolve
    from ablate.train.memtrack import simulate_step

    cfg = resolve(make_config(shape))
    simulated, estimated = simulate_step(cfg)["total"], estimate.memory_breakdown(cfg)["total"]
    assert abs(estimated / simulated - 1) < 0.10, (estimated / 2 ** 20, simulated / 2 ** 20)


@pytest.mark.parametrize("arch, dtype", [("gpt", "fp32"), ("ngpt", "fp32"), ("gpt", "bf16")])
def test_the_estimate_counts_what_gqa_saves_on_k_and_v_exactly(arch, dtype):
    """GQA keeps n_kv_head key/value heads per layer instead of n_head: the estimate's
    activations fall by exactly its per-d_kv term (and the bf16 weight copies of the smaller
    W_k, W_v); a 10% tolerance against the simulation would hide the term missing altogether."""
    from ablate.core.config import make_config, resolve
    from ablate.core.estimate import MEMORY_COEF, matrix_params, memory_breakdown

    shape = {"arch": arch, "dtype": dtype, "n_layer": 4, "n_head": 8, "n_embd": 256, "context": 256, "batch_size": 4,
             "vocab_size": 50304}  # a large vocabulary: the head's moment is the peak for both
    full, gqa = (resolve(make_config({**shape, "n_kv_head": h})) for h in (8, 2))
    a, b, w, *_ = MEMORY_COEF[(arch, dtype, "none")]
    N, L = 4 * 256, 4
    kv_gone = (full.kv_heads - gqa.kv_heads) * full.head_dim  # d_kv saved per token
    blocks_gone = matrix_params(full)[0] - matrix_params(gqa)[0]  # W_k, W_v rows
    saved = memory_breakdown(full)["activations"] - memory_breakdown(gqa)["activations"]
    assert saved == pytest.approx(L * N * b * kv_gone + w * blocks_gone, rel=1e-12) and saved > 0


@pytest.mark.parametrize("world", [2, 8])
@pytest.mark.parametrize("shape", [
    {"arch": "gpt", "n_layer": 4, "n_head": 4, "n_embd": 256, "context": 64, "batch_size": 2, "vocab_size": 8192,
     "grad_accum": 16},
    {"arch": "gpt", "n_layer": 3, "n_head": 4, "n_embd": 256, "context": 256, "batch_size": 2, "vocab_size": 8192,
     "dtype": "bf16", "loss_chunk": 128, "share_attn": 1},
    {"arch": "ngpt", "n_layer": 4, "n_head": 4, "n_embd": 256, "context": 128, "batch_size": 2, "vocab_size": 128,
     "act_ckpt": "selective"},
], ids=["gpt-weights", "gpt-bf16-chunk-shared", "ngpt-selective-small-vocab"])
def test_the_fsdp_estimate_per_rank_is_within_10_percent_of_the_simulation(shape, world):
    """strategy fsdp: params, grads and AdamW state per rank are a world-th, plus the unsharded
    units in flight; against one rank's step simulated over a fake process group (the unsharded
    formula is 13-120% high on these shapes)."""
    from ablate.core import estimate
    from ablate.core.config import make_config, resolve
    from ablate.train.memtrack import simulate_step

    cfg = resolve(make_config({**shape, "strategy": "fsdp"}))
    simulated, estimated = simulate_step(cfg, "cpu", world)["total"], estimate.memory_breakdown(cfg, world)["total"]
    assert abs(estimated / simulated - 1) < 0.10, (estimated / 2 ** 20, simulated / 2 ** 20)
    assert estimated < estimate.memory_breakdown(cfg.replace(strategy="ddp"), world)["total"]  # sharding shows
