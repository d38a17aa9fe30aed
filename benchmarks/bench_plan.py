"""How long `ablate plan` takes on a 10,000-cell grid (target: under 1 s on 2 CPU cores).

    .venv/bin/python benchmarks/bench_plan.py

Times the stages in-process after a warm-up (load + expand + validate, plan rows, table), then
the whole command as a user runs it (`ablate plan GRID` in a fresh process: interpreter start,
imports, everything; the median of 5). Pure Python: torch is never imported.
"""
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GRID = """
name: bench10k
data: {dataset: openwebtext, tokenizer: gpt2}
base: {n_layer: 12, n_head: 12, n_embd: 768, context: 1024}
grid:
  arch: [gpt, ngpt]
  lr: [1.0e-3, 1.5e-3, 2.0e-3, 2.5e-3, 3.0e-3, 3.5e-3, 4.0e-3, 5.0e-3, 6.0e-3, 8.0e-3]
  n_kv_head: [1, 2, 3, 4, 6]
  window: [null, 64, 128, 256, 512]
  max_iters: [1000, 2000, 5000, 10000, 20000, 30000, 40000, 50000, 60000, 70000]
seeds: [0, 1]
"""


def main():
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["ABLATE_RUNS_DIR"] = str(Path(tmp) / "runs")
        path = Path(tmp) / "bench10k.yaml"
        path.write_text(GRID)
        from ablate.plan.grid import load_grid
        from ablate.plan.plan import format_table, plan_rows

        load_grid(path)  # warm-up: imports, vocab lookup
        t0 = time.perf_counter()
        grid = load_grid(path)
        t1 = time.perf_counter()
        rows = plan_rows(grid)
        t2 = time.perf_counter()
        table = format_table(grid, rows)
        t3 = time.perf_counter()
        assert "torch" not in sys.modules
        print(f"cells: {len(grid.cells)} (unique configs after dedup; {len(table.splitlines())} table lines)")
        print(f"load+expand+validate: {t1 - t0:.3f} s   plan rows: {t2 - t1:.3f} s   table: {t3 - t2:.3f} s   "
              f"total: {t3 - t0:.3f} s")
        walls = []
        for _ in range(5):
            t0 = time.perf_counter()
            subprocess.run([sys.executable, "-m", "ablate.cli", "plan", str(path)], check=True,
                           stdout=subprocess.DEVNULL, env=os.environ)
            walls.append(time.perf_counter() - t0)
        print(f"`ablate plan` in a fresh process: median {statistics.median(walls):.3f} s "
              f"(min {min(walls):.3f}, max {max(walls):.3f}, 5 runs)")


if __name__ == "__main__":
    main()
