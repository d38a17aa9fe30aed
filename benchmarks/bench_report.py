"""How long ingest and report take on a 1,000-run grid with 1,000 evals per run (target: the
report under 10 s on 2 CPU cores).

    .venv/bin/python benchmarks/bench_report.py [--runs 1000] [--evals 1000] [--keep DIR]

Writes synthetic run dirs (arch x context x lr x budget x seed, known loss curves, 100 metrics
lines each) with tests/synthetic.py, then times: a cold ingest, a no-op re-ingest, a
re-ingest after one run changed, and the report (budget-mode groups: every context holds five
budgets; five seeds: the paired table, arch x context effects, five-budget fits) in a fresh process as `ablate report` runs it, with the JavaScript bundle built
and cached. No torch.
"""
import argparse
import itertools
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # synthetic.py, the run dir writer

from ablate.core import rundir  # noqa: E402
from synthetic import write_run  # noqa: E402

AXES = {"arch": ["gpt", "ngpt"], "context": [128, 256, 512, 1024], "lr": [1e-3, 2e-3, 3e-3, 5e-3, 8e-3],
        "budget": [1, 2, 3, 4, 5], "seed": [0, 1, 2, 3, 4]}


def loss_fn(arch, context, lr, max_iters, seed):
    """A power law in steps, nGPT ~2x as sample-efficient, a best lr per arch, seed noise."""
    best = 2e-3 if arch == "gpt" else 5e-3
    eff = 2.0 if arch == "ngpt" else 1.0
    floor = 1.5 + 0.2 * math.log2(1024 / context) / 3 + 0.3 * math.log(lr / best) ** 2 + 0.01 * seed
    return lambda s: floor + 2.5 / (1 + eff * s / 200) ** 0.5


def write_grid(runs: Path, n_runs: int, n_evals: int) -> None:
    cells = list(itertools.product(*AXES.values()))[:n_runs]
    for arch, context, lr, k, seed in cells:
        interval = k
        max_iters = (n_evals - 1) * interval
        write_run(runs, "bench", {"arch": arch, "context": context, "lr": lr, "max_iters": max_iters,
                                  "eval_interval": interval, "log_interval": max(1, max_iters // 100),
                                  "seed": seed},
                  loss_fn(arch, context, lr, max_iters, seed), peak_alloc=int(2 ** 30 * context / 256 *
                                                                             (1.1 if arch == "ngpt" else 1)),
                  peak_reserved=int(2 ** 31 * context / 256))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=1000)
    ap.add_argument("--evals", type=int, default=1000)
    ap.add_argument("--keep", help="write the run dirs and the report here (kept)")
    args = ap.parse_args()
    tmp = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench_report_"))
    runs, out = tmp / "runs", tmp / "report"
    os.environ.setdefault("ABLATE_CACHE_DIR", str(tmp / "cache"))

    t = time.perf_counter()
    write_grid(runs, args.runs, args.evals)
    print(f"wrote {args.runs} run dirs x {args.evals} evals in {time.perf_counter() - t:.1f} s ({tmp})")

    from ablate.store import Store

    store = Store(runs / "ablate.duckdb")
    timings = {}
    t = time.perf_counter()
    counts = store.ingest(runs)
    timings["ingest, cold"] = time.perf_counter() - t
    print(f"ingest: {counts}")
    t = time.perf_counter()
    again = store.ingest(runs)
    timings["ingest, nothing changed"] = time.perf_counter() - t
    assert again["read"] == 0
    one = next((runs / "bench").iterdir())
    rundir.append_jsonl(one / rundir.EVALS, {"step": 10 ** 6, "val_loss": 1.0})
    t = time.perf_counter()
    assert store.ingest(runs)["read"] == 1
    timings["ingest, one run changed"] = time.perf_counter() - t

    store.close()

    # the report as `ablate report` runs it: a fresh process (vl-convert starts its JS engine once)
    cache = Path(os.environ["ABLATE_CACHE_DIR"])
    for f in cache.glob("vega-bundle-*.js"):
        f.unlink()
    for label in ("report, JS bundle built", "report, JS bundle cached"):
        t = time.perf_counter()
        r = subprocess.run([sys.executable, "-c", REPORT, str(runs / "ablate.duckdb"), str(out)],
                           capture_output=True, text=True, env=os.environ)
        total = time.perf_counter() - t
        assert r.returncode == 0, r.stderr
        info = json.loads(r.stdout.strip().splitlines()[-1])
        timings[label] = info["seconds"]
        timings[f"  {label[8:]}: whole process, imports included"] = total
    print(f"speedup rows: {info['rows']} ({info['curve']} curve, {info['budget']} budget); cells: {info['cells']}; "
          f"largest chart: {info['max_rows']} rows; paired rows: {info['paired']}, effects: {info['effects']}, "
          f"fits: {info['fits']}, speedup-vs-budget points: {info['scaling']}")
    for name, seconds in timings.items():
        print(f"{name:52s} {seconds:6.2f} s")


REPORT = """
import json, sys, time
from ablate.report import make_report
from ablate.store import Store
store = Store(sys.argv[1])
compare = {"baseline": {"arch": "gpt"}, "group_by": ["context"]}  # budgets inside groups: budget mode
t = time.perf_counter()
out = make_report(store, "bench", compare, sys.argv[2])
seconds = time.perf_counter() - t
html = open(out["paths"]["index.html"]).read()
specs = json.loads(html.split("var specs=", 1)[1].split(";\\n", 1)[0])
rows = max(sum(len(v) for v in s.get("datasets", {}).values()) for s in specs.values())
sp = out["speedup"]
print(json.dumps({"seconds": seconds, "rows": len(sp), "curve": int((sp["mode"] == "curve").sum()),
                  "budget": int((sp["mode"] == "budget").sum()), "cells": len(out["cells"]), "max_rows": rows,
                  "paired": len(out["paired"]), "effects": len(out["effects"]), "fits": len(out["fits"]),
                  "scaling": len(out["scaling"])}))
"""


if __name__ == "__main__":
    main()
