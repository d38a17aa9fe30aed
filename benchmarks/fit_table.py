"""The largest model of a grid that trains within a GPU's memory, per variant (arch, context, memory
knobs), on one GPU as the cell is and with strategy fsdp over 2, 4 and 8 GPUs (per-rank peak
within 90% of GIB, as `ablate plan --fit` counts it):

    .venv/bin/python benchmarks/fit_table.py grids/fit_24gb.yaml 24            # the formula
    .venv/bin/python benchmarks/fit_table.py grids/fit_24gb.yaml 24 --memory   # simulated steps (cached)

"Largest" orders the cells by parameter count; the size axis is every varied key among
n_layer, n_head and n_embd.
"""
import argparse
import sys

from ablate.core import estimate
from ablate.plan import fit
from ablate.plan.grid import load_grid
from ablate.plan.simcache import simulate_configs

SIZE_KEYS = ("n_layer", "n_head", "n_embd")
WORLDS = ((1, "ddp"), (2, "fsdp"), (4, "fsdp"), (8, "fsdp"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("grid")
    p.add_argument("gib", type=float)
    p.add_argument("--memory", action="store_true", help="simulated steps instead of the formula")
    args = p.parse_args()
    grid = load_grid(args.grid)
    cases = {}
    for cell in grid.cells:
        for world, strategy in WORLDS:
            cases[(cell.run_id, world)] = (cell.config.replace(strategy=strategy), world)
    if args.memory:
        from ablate.train.memtrack import simulate_config  # torch: only when simulating

        sims = simulate_configs({f"{r}@{w}": (c.to_dict(), grid.resources.gpus, w) for (r, w), (c, _) in cases.items()},
                                step=simulate_config, log=lambda m: print(m, file=sys.stderr))
        peak = {k: sims.get(f"{k[0]}@{k[1]}", {}).get("total") for k in cases}
    else:
        peak = {k: estimate.memory_breakdown(c, w)["total"] for k, (c, w) in cases.items()}
    size_keys = [k for k in grid.varied_keys if k in SIZE_KEYS]
    rows: dict = {}
    for cell in grid.cells:
        variant = tuple((k, v) for k, v in cell.varied.items() if k not in size_keys and k != "batch_size")
        n = estimate.param_counts(cell.config)["total"]
        for world, _ in WORLDS:
            best = rows.setdefault(variant, {}).get(world)
            total = peak[(cell.run_id, world)]
            if total is not None and fit.fits(total, args.gib) and (best is None or n > best[0]):
                rows[variant][world] = (n, "x".join(str(cell.varied[k]) for k in size_keys))
    head = ["variant", *[f"{w} GPU{'s' * (w > 1)} ({s})" for w, s in WORLDS]]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for variant, best in rows.items():
        label = " ".join(f"{k}={'-' if v is None else v}" for k, v in variant)
        cols = [f"{best[w][1]} ({best[w][0] / 1e9:.2f}B)" if w in best else "none" for w, _ in WORLDS]
        print(f"| {label} | " + " | ".join(cols) + " |")
    print(f"\n{grid.name}: largest cell (by parameters, {'x'.join(size_keys)}) whose per-GPU peak is within "
          f"{fit.HEADROOM:.0%} of {args.gib:g} GiB; {'simulated' if args.memory else 'the analytical estimate'}")


if __name__ == "__main__":
    main()
