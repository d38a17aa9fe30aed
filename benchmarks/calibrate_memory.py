"""Calibrate the plan's analytical memory formula (ablate/core/estimate.py, MEMORY_COEF) against
the simulated step (ablate/train/memtrack.simulate_step), then check it.

    .venv/bin/python benchmarks/calibrate_memory.py                 # simulate, fit, print the table
    .venv/bin/python benchmarks/calibrate_memory.py --check GRID...  # estimate vs simulation per cell
    .venv/bin/python benchmarks/calibrate_memory.py --check GRID --fsdp 2,4,8 --knobs  # and as plan --fit varies it

Per regime (arch, dtype, act_ckpt, chunked head) it simulates nine small shapes (d 512, 8 heads,
1,024 tokens, 2 or 4 layers, GQA or not, vocabulary 64 / 8k / 16k, twice the tokens) and reads
the coefficients off their differences: what a layer keeps per token and per d (a) and per d_kv
(b), per block-matrix weight (w: autocast's bf16 copies), per token x vocab entry at the head
(h_act kept, h_tmp its backward), and per token x d besides the layers at the head's backward
(ch) and at a block's backward (cb). The model they feed (estimate.memory_breakdown) takes the
largest of three moments: the head's backward, a block's backward, the optimizer step.
--check simulates every cell of the grids (through the plan's cache) and prints the error.
"""
import argparse
import json
import sys

from ablate.core.config import make_config, resolve

N, D, H = 1024, 512, 8
SHAPES = {"L2": {}, "L4": {"n_layer": 4}, "L2N2": {"batch_size": 4}, "L4N2": {"n_layer": 4, "batch_size": 4},
          "L2kv": {"n_kv_head": 2}, "L4kv": {"n_layer": 4, "n_kv_head": 2},
          "V8k": {"vocab_size": 8192}, "V16k": {"vocab_size": 16384}}
CHUNK = 256


def regimes():
    for arch in ("gpt", "ngpt"):
        for dtype in ("fp32", "bf16"):
            for ckpt in ("none", "blocks", "selective"):
                for chunked in (False, True):
                    yield arch, dtype, ckpt, chunked


def simulate(arch, dtype, ckpt, chunked, shape) -> dict:
    from ablate.train.memtrack import simulate_step

    cfg = {"arch": arch, "dtype": dtype, "act_ckpt": ckpt, "loss_chunk": CHUNK if chunked else None, "n_layer": 2,
           "n_head": H, "n_embd": D, "context": 512, "batch_size": 2, "vocab_size": 64, **shape}
    return simulate_step(resolve(make_config(cfg)))


def fit(sims: dict, dtype: str) -> tuple:
    """(a, b, w, h_act, h_tmp, ch, cb) from the nine simulations of one regime."""
    from ablate.core import estimate

    def dyn(s):
        return s["total"] - s["params"] - s["optimizer"] - s["grads"]

    def block_params(name):
        cfg = resolve(make_config({"n_layer": 2, "n_head": H, "n_embd": D, "vocab_size": 64, **SHAPES[name]}))
        return estimate.matrix_params(cfg)[0]
    # per layer: N (a d + b d_kv) + w W_layer; twice the tokens separates the two
    per_layer = {k: (dyn(sims[f"L4{k}"]) - dyn(sims[f"L2{k}"])) / 2 for k in ("", "N2", "kv")}
    w_layer = (block_params("L4") - block_params("L2")) / 2
    token_part = per_layer["N2"] - per_layer[""]  # N more tokens, same weights
    w = (per_layer[""] - token_part) / w_layer
    d_kv = D // H * 2
    w_kv = (block_params("L4kv") - block_params("L2kv")) / 2
    b = (per_layer[""] - per_layer["kv"] - w * (w_layer - w_kv)) / (N * (D - d_kv))
    a = token_part / (N * D) - b
    layers = 2 * (N * (a * D + b * D)) + w * block_params("L2")
    rows = CHUNK if sims.get("chunked") else N
    act = lambda s: s["activations"]  # noqa: E731
    tmp = lambda s: s["temps"] + s["other"]  # noqa: E731
    h_act = (act(sims["V16k"]) - act(sims["V8k"])) / (rows * 8192)
    h_tmp = (tmp(sims["V16k"]) - tmp(sims["V8k"])) / (rows * 8192)
    head_w = (16384 * D) * (4 + (2 if dtype == "bf16" else 0)) if sims.get("chunked") else 0
    ch = (dyn(sims["V16k"]) - layers - rows * 16384 * (h_act + h_tmp) - head_w) / (N * D)
    cb = (dyn(sims["L2"]) - layers) / (N * D)
    return tuple(round(x, 2) for x in (a, b, w, h_act, h_tmp, ch, cb))


def calibrate():
    table = {}
    for arch, dtype, ckpt, chunked in regimes():
        sims = {name: simulate(arch, dtype, ckpt, chunked, shape) for name, shape in SHAPES.items()}
        sims["chunked"] = chunked
        table[(arch, dtype, ckpt, chunked)] = fit(sims, dtype)
        print(f"    {(arch, dtype, ckpt, chunked)!r}: {table[(arch, dtype, ckpt, chunked)]},", flush=True)


def check(grids, fsdp=(), knobs=False):
    """Estimate vs simulation for every cell of the grids as it is; fsdp: also each cell under
    strategy fsdp at these world sizes; knobs: also with loss_chunk 1024 and each act_ckpt."""
    from ablate.core import estimate
    from ablate.plan.grid import load_grid
    from ablate.plan.simcache import simulate_configs, world_size
    from ablate.train.memtrack import simulate_config

    worst = 0.0
    for path in grids:
        grid = load_grid(path)
        world = world_size(grid.resources)
        variants = [({}, world)] + [({"strategy": "fsdp"}, w) for w in fsdp]
        if knobs:
            variants = [({**v, **k}, w) for v, w in variants
                        for k in ({}, {"loss_chunk": 1024}, {"act_ckpt": "selective"}, {"act_ckpt": "blocks"},
                                  {"loss_chunk": 1024, "act_ckpt": "blocks"})]
        cases = {}
        for cell in grid.cells:
            for changes, w in variants:
                changes = {k: v for k, v in changes.items() if getattr(cell.config, k) != v}
                label = " ".join(f"{k}={v}" for k, v in {**cell.varied, **changes}.items()) + f" world={w}"
                cases[label] = (cell.config.replace(**changes), w)
        sims = simulate_configs({k: (c.to_dict(), grid.resources.gpus, w) for k, (c, w) in cases.items()},
                                step=simulate_config, log=lambda m: print(m, file=sys.stderr))
        for label, (cfg, w) in cases.items():
            sim, est = sims.get(label, {}), estimate.memory_breakdown(cfg, w)
            if "total" not in sim:
                continue
            err = est["total"] / sim["total"] - 1
            worst = max(worst, abs(err))
            print(f"{grid.name:10} {label:100} simulated {sim['total'] / 2**30:8.3f} GiB  estimate "
                  f"{est['total'] / 2**30:8.3f} GiB  {100 * err:+6.1f}%", flush=True)
    print(f"largest error {100 * worst:.1f}%")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--check", nargs="+", metavar="GRID")
    p.add_argument("--fsdp", default="", metavar="W,W", help="--check: also each cell under strategy fsdp at these "
                   "world sizes, e.g. 2,4,8")
    p.add_argument("--knobs", action="store_true", help="--check: also each cell with loss_chunk and act_ckpt")
    args = p.parse_args()
    fsdp = tuple(int(w) for w in args.fsdp.split(",") if w)
    check(args.check, fsdp, args.knobs) if args.check else calibrate()
