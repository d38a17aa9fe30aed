"""Per-cell overhead of local jobs: a fresh submitit process per cell (ABLATE_WARM=0, what ablate
did before) against cells forked from a runner that imported torch once (ablate/launch/warm.py).

    .venv/bin/python benchmarks/bench_overhead.py [--cells 6] [--rounds 3]

Each round submits, in each mode (order alternating round by round), a grid of N cells that
train almost nothing (a 1-layer 16-wide character model, 2 steps, one eval) on one local slot
(--jobs 1: cells one after another), and measures from outside: the wall time of
`ablate submit` from start to all done, and the CPU time of its whole process tree (the
command, its runner and every job: getrusage of the waited-for children, os.wait4). Per cell:
(wall or CPU) / N. The runner's one-off warm-up (importing torch) is inside the warm figures.
Interleaved paired rounds; min / median / max per mode and the cold / warm ratio per round.
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

GRID = """name: overhead
data: {{dataset: 'text:{corpus}', tokenizer: char}}
base: {{n_layer: 1, n_head: 2, n_embd: 16, context: 16, batch_size: 4, max_iters: 2, eval_interval: 2,
        eval_iters: 2, log_interval: 1, device: cpu}}
grid: {{seed: {seeds}}}
"""


def one(tmp: Path, cells: int, warm: bool, round_: int) -> tuple[float, float]:
    """(wall s, CPU s of the process tree) of one `ablate submit` of `cells` fresh cells."""
    root = tmp / f"{'warm' if warm else 'cold'}{round_}"
    grid = root / "grid.yaml"
    root.mkdir()
    grid.write_text(GRID.format(corpus=tmp / "corpus.txt", seeds=list(range(round_ * 100, round_ * 100 + cells))))
    env = {**os.environ, "ABLATE_WARM": "1" if warm else "0", "ABLATE_RUNS_DIR": str(root / "runs"),
           "ABLATE_SLOTS_DIR": str(root / "slots"), "ABLATE_DATA_DIR": str(tmp / "data"), "OMP_NUM_THREADS": "1"}
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "submit", str(grid), "--executor", "local",
                             "--jobs", "1"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out = proc.stdout.read().decode()
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    if os.waitstatus_to_exitcode(status) != 0 or f"{cells} done" not in out:
        raise SystemExit(f"submit failed ({'warm' if warm else 'cold'}):\n{out[-2000:]}")
    return wall, usage.ru_utime + usage.ru_stime


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cells", type=int, default=6)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        (tmp / "corpus.txt").write_text("the quick brown fox jumps over the lazy dog. " * 400)
        subprocess.run([sys.executable, "-m", "ablate.cli", "data", "prepare", "text", str(tmp / "corpus.txt"),
                        "--tokenizer", "char"], cwd=ROOT, env={**os.environ, "ABLATE_DATA_DIR": str(tmp / "data")},
                       check=True, capture_output=True)
        res = {True: [], False: []}
        for r in range(args.rounds):
            for warm in ((False, True) if r % 2 == 0 else (True, False)):
                res[warm].append(one(tmp, args.cells, warm, r))
                print(f"round {r} {'warm' if warm else 'cold'}: {res[warm][-1][0]:.1f} s wall, "
                      f"{res[warm][-1][1]:.1f} CPU-s", flush=True)
    n = args.cells
    for i, what in enumerate(("wall s per cell", "CPU s per cell")):
        print(f"\n{what} (min / median / max of {args.rounds} rounds, {n} cells each):")
        for warm in (False, True):
            xs = sorted(v[i] / n for v in res[warm])
            print(f"  {'warm (fork)' if warm else 'cold (submitit)':16} {xs[0]:.2f} / {statistics.median(xs):.2f} / "
                  f"{xs[-1]:.2f}")
        ratios = sorted(c[i] / w[i] for c, w in zip(res[False], res[True]))
        print(f"  cold / warm, paired: {ratios[0]:.1f}x / {statistics.median(ratios):.1f}x / {ratios[-1]:.1f}x")


if __name__ == "__main__":
    main()
