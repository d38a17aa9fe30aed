"""`ablate plan GRID --fit GIB`: per cell, does its per-GPU peak fit, and if not, the cheapest
change that makes it fit (ablate/plan/fit.py). The advice, applied, must fit when simulated."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.core.config import make_config, resolve
from ablate.plan import fit
from ablate.plan.grid import load_grid
from ablate.plan.simcache import HEADROOM

ROOT = Path(__file__).resolve().parents[2]
GIB = 2 ** 30
# the head dominates (2,048 tokens x vocabulary 4,096 at width 64): every knob shows in the peak
BASE = {"n_layer": 2, "n_head": 2, "n_embd": 64, "context": 256, "batch_size": 8, "vocab_size": 4096, "grad_accum": 8,
        "max_iters": 10, "device": "cpu"}


def grid_file(tmp_path, gpus=1, **base) -> Path:
    path = tmp_path / "fit.yaml"
    path.write_text(f"name: fit\ndata: {{dataset: shakespeare, tokenizer: char}}\nbase: {json.dumps({**BASE, **base})}\n"
                    f"grid:\n  arch: [gpt]\nresources: {{gpus: {gpus}}}\n")
    return path


def test_candidates_come_cheapest_first_on_the_cells_gpus_then_more_gpus():
    c = resolve(make_config({"vocab_size": 64, "grad_accum": 8}))
    labels = [(x.label(2), x.world) for x in fit.candidates(c, 2)]
    assert labels[:4] == [("loss_chunk: 1024", 2), ("act_ckpt: selective", 2), ("strategy: fsdp", 2),
                          ("loss_chunk: 1024 + act_ckpt: selective", 2)]
    assert [w for _, w in labels] == sorted(w for _, w in labels)  # every change on 2 GPUs before 4, then 8
    assert labels[-1] == ("loss_chunk: 1024 + act_ckpt: blocks + fsdp over 8 GPUs", 8)
    # a knob already set is not offered again; a grad_accum that 4 and 8 do not divide: no 4 or 8 GPUs
    c = resolve(make_config({"vocab_size": 64, "grad_accum": 2, "act_ckpt": "blocks", "loss_chunk": 256}))
    assert [(x.changes, x.world) for x in fit.candidates(c, 1)] == [({"strategy": "fsdp"}, 2)]


HEAVY_ACTIVATIONS = {}  # the grid's base: its logits dominate (2,048 tokens x 4,096 entries)
HEAVY_WEIGHTS = {"n_embd": 128, "context": 32, "batch_size": 2}  # 64 tokens: AdamW's state dominates


def cell_of(tmp_path, **base):
    return load_grid(grid_file(tmp_path, **base)).cells[0]


def simulated(cfg, world) -> float:
    from ablate.train.memtrack import simulate_step

    return simulate_step(cfg, "cpu", world)["total"]


@pytest.mark.parametrize("base, shrink", [(HEAVY_ACTIVATIONS, 0.97), (HEAVY_WEIGHTS, 0.8)], ids=["acts", "weights"])
def test_the_advice_applied_fits_and_every_cheaper_candidate_does_not(tmp_path, monkeypatch, base, shrink):
    """A GPU a little (3%) or much (20%) too small for the plain cell: the answer is the first
    candidate whose simulated peak fits, and that peak, simulated again from the advised config,
    fits. Where AdamW's state dominates, only sharding over more GPUs gets there."""
    from ablate.cli import MEASURE

    monkeypatch.setenv("ABLATE_RUNS_DIR", str(tmp_path / "runs"))
    cell = cell_of(tmp_path, **base)
    plain = simulated(cell.config, 1)
    capacity = plain * shrink / HEADROOM / GIB
    (advice,) = fit.advise([cell], 1, 1, capacity, simulate=True, measure=MEASURE).values()
    assert advice["peak"] == plain and not advice["fits"] and advice["source"] == "simulated"
    assert advice["change"] is not None
    after = simulated(cell.config.replace(**advice["change"]), advice["world"])
    assert after == advice["peak_after"] and after <= HEADROOM * capacity * GIB
    for cand in fit.candidates(cell.config, 1):
        if (cand.changes, cand.world) == (advice["change"], advice["world"]):
            break
        assert simulated(cell.config.replace(**cand.changes), cand.world) > HEADROOM * capacity * GIB, cand
    if base is HEAVY_WEIGHTS:
        assert advice["world"] > 1 and advice["change"]["strategy"] == "fsdp"
    else:
        assert advice["world"] == 1


def test_the_formula_answers_without_torch_and_says_when_nothing_fits(tmp_path):
    script = ("import sys; from ablate.cli import main; rc = main(['plan', sys.argv[1], '--fit', sys.argv[2]]); "
              "assert 'torch' not in sys.modules; sys.exit(rc)")
    path = grid_file(tmp_path, gpus=2)

    def plan(gib):
        r = subprocess.run([sys.executable, "-c", script, str(path), gib], capture_output=True, text=True, cwd=ROOT,
                           timeout=120, env={**__import__("os").environ, "ABLATE_RUNS_DIR": str(tmp_path / "runs")})
        assert r.returncode == 0, r.stderr
        return r.stdout
    out = plan("24")
    assert "cheapest change that fits" in out and "analytical estimate" in out and "on a job of 2 GPUs" in out
    assert out.split("cheapest change that fits")[1].splitlines()[2].split()[-2:] == ["yes", "-"]
    out = plan("0.001")
    assert "none up to fsdp over 8 GPUs with every knob" in out


def test_fit_wants_a_positive_number(tmp_path):
    from ablate.cli import main

    assert main(["plan", str(grid_file(tmp_path)), "--fit", "0"]) == 2
    assert main(["plan", str(grid_file(tmp_path)), "--fit", "nan"]) == 2


def test_json_rows_carry_the_advice(tmp_path, capsys, monkeypatch):
    from ablate.cli import main

    monkeypatch.setenv("ABLATE_RUNS_DIR", str(tmp_path / "runs"))
    assert main(["plan", str(grid_file(tmp_path)), "--fit", "0.1", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["fit"]["fits"] is False and row["fit"]["source"] == "estimate"
    assert row["fit"]["change"]["loss_chunk"] == 1024 and row["fit"]["peak_after"] <= HEADROOM * 0.1 * GIB
