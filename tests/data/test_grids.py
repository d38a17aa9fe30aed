"""The shipped shards grids: grids/shards.yaml trains end to end on llm.c shards that
scripts/make_shards.py writes, and grids/fineweb_124m.yaml plans on shards named as
modded-nanogpt names them (stand-ins here: the real ones are GBs)."""
import json
import subprocess
import sys

import numpy as np
import yaml

from ablate.data.corpora import shakespeare_plays
from conftest import ROOT, ablate_cli
from data_helpers import read_llmc, write_llmc


def test_shards_grid_trains_end_to_end_on_generated_llmc_shards(tmp_path):
    subprocess.run([sys.executable, ROOT / "scripts" / "make_shards.py", tmp_path / "data" / "shakespeare_char_shards"],
                   check=True, capture_output=True, cwd=tmp_path, env={"PYTHONPATH": str(ROOT)})
    shards = sorted((tmp_path / "data" / "shakespeare_char_shards").glob("*.bin"))
    assert len(shards) == 9 and all(len(read_llmc(p)) > 100_000 for p in shards)
    grid = yaml.safe_load((ROOT / "grids" / "shards.yaml").read_text())
    grid["base"].update(max_iters=6, eval_interval=3, eval_iters=2, log_interval=3)  # the grid's path, fewer steps
    (tmp_path / "shards.yaml").write_text(yaml.safe_dump(grid))
    r = ablate_cli("submit", tmp_path / "shards.yaml", "--executor", "debug", "--where", "arch=ngpt", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    summaries = [json.loads(p.read_text()) for p in (tmp_path / "runs" / "shards").glob("*/summary.json")]
    assert len(summaries) == 1 and {s["state"] for s in summaries} == {"done"}
    for s in summaries:
        assert s["data_train_tokens"] == sum(len(read_llmc(p)) for p in shards if "_train_" in p.name)
        assert s["tokens"] == 6 * 8 * 128 and s["epochs"] == s["tokens"] / s["data_train_tokens"]
    config = json.loads(next((tmp_path / "runs" / "shards").glob("*/config.json")).read_text())["config"]
    assert config["dataset"] == "shards:data/shakespeare_char_shards" and config["vocab_size"] == 128  # 84 padded
    itos = json.loads((tmp_path / "data" / "shakespeare_char_shards" / "meta.json").read_text())["itos"]
    val = next(p for p in shards if "_val_" in p.name)  # the first 10% of the plays
    assert "".join(itos[t] for t in read_llmc(val)[:300]) == shakespeare_plays()[0].read_text()[:300]
    assert config["data_id"] and config["tokenizer"] == "char"


def test_fineweb_grid_plans_on_shards_named_as_modded_nanogpt_names_them(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "data" / "fineweb10B"
    write_llmc(folder / "fineweb_val_000000.bin", rng.integers(0, 50257, 3000))
    for i in range(1, 4):
        write_llmc(folder / f"fineweb_train_{i:06d}.bin", rng.integers(0, 50257, 3000))
    r = ablate_cli("plan", ROOT / "grids" / "fineweb_124m.yaml", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    assert len(rows) == 12 and {row["state"] for row in rows} == {"new"}
    r = ablate_cli("plan", ROOT / "grids" / "fineweb_124m.yaml", cwd=tmp_path / "data")  # no shards there
    assert r.returncode == 2 and "data/fineweb10B does not exist" in r.stderr, r.stderr
