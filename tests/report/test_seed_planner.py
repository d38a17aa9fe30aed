"""The seed planner: `ablate plan GRID --seeds-for GAP` and a grid's `power:` section, from a pilot's
seeds in the store (synthetic run dirs with a known spread)."""
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest

from ablate import cli
from ablate.report import stats
from synthetic import write_seeded_grid

GRID = """name: {name}
data: {{dataset: shakespeare, tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 64, max_iters: 100, eval_interval: 100, device: cpu}}
grid: {{arch: [gpt, ngpt]}}
seeds: [0, 1]
compare: {{baseline: {{arch: gpt}}}}
{power}"""
CELL = {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 64, "max_iters": 100}


def grid_file(tmp_path, name="pilot", power="") -> Path:
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, power=power))
    return path


def pilot(name="pilot", seeds=(0, 1, 2, 3, 4), rng_seed=0) -> dict:
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    return write_seeded_grid(runs, name, [({"arch": "gpt", **CELL}, 2.0), ({"arch": "ngpt", **CELL}, 1.97)], list(seeds),
                             np.random.default_rng(rng_seed), seed_sd=0.01, eval_se=0.002, shared_sd=0.02)


def plan(capsys, *args) -> tuple[int, str, str]:
    code = cli.main(["plan", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_seeds_for_a_loss_gap_from_the_measured_spread(tmp_path, capsys):
    finals = pilot()
    code, out, err = plan(capsys, grid_file(tmp_path), "--seeds-for", "0.01")
    assert code == 0, err
    diffs = [finals[1, s] - finals[0, s] for s in range(5)]
    sd, eval_sd = float(np.std(diffs, ddof=1)), math.sqrt(2) * 0.002
    need = stats.seeds_needed(0.01, sd, eval_sd)
    assert need > 5
    text = out.split("seeds to detect a final val loss gap of 0.01 (paired t test, alpha 0.05, power 0.8), "
                     "from the pilot 'pilot':")[1]
    row = next(line for line in text.splitlines() if line.startswith("all"))
    cells = row.split()
    assert cells[:4] == ["all", "ngpt", "100", "5"] and float(cells[4]) == pytest.approx(sd, rel=1e-3)
    assert int(cells[6]) == need and int(cells[10]) == need - 5  # seeds needed, seeds still to run
    assert int(cells[7]) == stats.seeds_needed(0.01, sd, 0.0) < need  # if the shared windows cancel the eval noise
    assert float(cells[8]) == pytest.approx(stats.seeds_closed_form(0.01, sd, eval_sd), abs=0.05)
    assert int(cells[9]) == stats.seeds_needed(0.01, stats.sd_upper(sd, 5), eval_sd)
    assert "FLOPs" in row and "min" in row  # the cost of those seeds: formula FLOPs, the pilot's hours


def test_power_section_names_the_pilot_and_a_speedup(tmp_path, capsys):
    pilot(name="other")
    power = "power: {detect: 1.5x, alpha: 0.01, power: 0.9, pilot: other}"
    code, out, err = plan(capsys, grid_file(tmp_path, "bigger", power), "--json")
    assert code == 0, err
    doc = json.loads(out)
    assert doc["pilot"] == "other" and len(doc["cells"]) == 4
    (row,) = doc["seed_plan"]
    assert row["variant"] == "ngpt" and row["pilot_seeds"] == 5  # the speedup's seeds (curve mode, one budget)
    assert row["seeds_needed"] == stats.seeds_needed(math.log(1.5), row["sd"], row["eval_sd"], 0.01, 0.9)
    assert isinstance(row["to_run"], int) and row["seeds_if_eval_cancels"] <= row["seeds_needed"]


def test_eval_noise_that_hides_the_gap_says_none_not_a_number(tmp_path, capsys):
    pilot()  # eval s.d. of a difference 0.0028: a 0.005 gap is under it / 2.8 whatever the seeds
    code, out, _ = plan(capsys, grid_file(tmp_path), "--seeds-for", "0.005")
    row = next(line for line in out.split("from the pilot")[1].splitlines() if line.startswith("all"))
    assert code == 0 and row.split()[6] == "none" and int(row.split()[7]) > 5
    assert "none: the eval noise at its upper bound hides the gap whatever the seeds" in out


def test_without_a_pilot_no_number_is_guessed(tmp_path, capsys):
    code, out, _ = plan(capsys, grid_file(tmp_path), "--seeds-for", "0.01")
    assert code == 0
    assert "no pilot" in out and "No seed count is guessed" in out and "seeds needed" not in out


def test_a_one_seed_pilot_measures_no_spread(tmp_path, capsys):
    pilot(seeds=(0,))
    code, out, _ = plan(capsys, grid_file(tmp_path), "--seeds-for", "0.01")
    assert code == 0
    row = next(line for line in out.split("from the pilot")[1].splitlines() if line.startswith("all"))
    assert row.split()[3:5] == ["1", "–"] and "the seed-to-seed s.d. is not measured, no count is guessed" in out


@pytest.mark.parametrize("args, message", [
    (["--seeds-for", "abc"], "--seeds-for: 'abc' is not a final val loss gap (a number > 0, e.g. 0.01) or a speedup"),
    (["--seeds-for", "1x"], "--seeds-for: '1x': a speedup to detect must be > 0 and not 1x"),
    (["--seeds-for", "-0.01"], "--seeds-for: -0.01 is not a final val loss gap"),
])
def test_bad_targets_are_one_line(tmp_path, capsys, args, message):
    code, _, err = plan(capsys, grid_file(tmp_path), *args)
    assert code == 2 and err.startswith(f"ablate: error: {message}") and len(err.splitlines()) == 1


@pytest.mark.parametrize("power, message", [
    ("power: {detect: 0.01, alfa: 0.1}", ":7: power: unknown key 'alfa' (did you mean 'alpha'?)"),
    ("power: {detect: 0.01, power: 1.5}", ":7: power: 'power' must be a number between 0 and 1"),
    ("power: {alpha: 0.05}", "the grid's power: section has no 'detect'"),
    ("power: {detect: zero}", ":7: power: detect: 'zero' is not a final val loss gap"),
])
def test_power_section_errors_name_file_and_line(tmp_path, capsys, power, message):
    code, _, err = plan(capsys, grid_file(tmp_path, power=power))
    assert code == 2 and message in err and len(err.splitlines()) == 1, err


def test_json_is_strict_json_even_without_numbers(tmp_path, capsys):
    pilot(seeds=(0,))  # one seed: no s.d., no counts

    def refuse(name):
        raise ValueError(f"{name} is not JSON")
    code, out, _ = plan(capsys, grid_file(tmp_path), "--seeds-for", "0.01", "--json")
    (row,) = json.loads(out, parse_constant=refuse)["seed_plan"]
    assert code == 0 and row["sd"] is None and row["seeds_needed"] is None and row["pilot_seeds"] == 1
