"""What `make demo` costs in CPU time, cell by cell: a quiet-machine estimate that load cannot skew.

    .venv/bin/python benchmarks/bench_demo.py [grids/quickstart.yaml] [--rounds 5]

Measures, for each arch of the grid at its shape, the CPU time (time.process_time, one thread:
what each of `--jobs 2`'s cells gets) of one training step (forward, backward, clip, AdamW,
nGPT's normalize) and of one eval batch (forward only), in interleaved rounds (min and median
of the rounds). Then adds up every cell of the grid: max_iters steps, and at each eval
(step 0, every eval_interval, the last step) eval_iters batches on each of the val and train
splits. Per-cell start-up (interpreter, torch import, data) and the report are not counted:
`/usr/bin/time` of the real command gives the whole. Wall time on 2 idle cores is about half
the CPU time when two cells run at a time. Also prints what the total would be with nGPT's
steps at 0.95x GPT's speed (the target of the nGPT speed work).
"""
import argparse
import statistics
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def step_costs(cfg, rounds: int) -> tuple[list, list]:
    """CPU seconds of one training step and of one eval batch, one value per round."""
    from ablate.model import build_model

    torch.manual_seed(0)
    model = build_model(cfg, "cpu")
    opt = torch.optim.AdamW(model.optimizer_groups(cfg.weight_decay), lr=cfg.lr)
    x = torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.context))
    steps, evals = [], []

    def train_step():
        model(x, x)[1].backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.normalize_()

    train_step()  # warm-up
    for _ in range(rounds):
        t = time.process_time()
        for _ in range(5):
            train_step()
        steps.append((time.process_time() - t) / 5)
        with torch.no_grad():
            t = time.process_time()
            for _ in range(5):
                model(x, x)
            evals.append((time.process_time() - t) / 5)
    return steps, evals


def n_evals(cfg) -> int:
    return len(set(range(0, cfg.max_iters + 1, cfg.eval_interval)) | {cfg.max_iters})


def main():
    from ablate.plan.grid import load_grid

    p = argparse.ArgumentParser()
    p.add_argument("grid", nargs="?", default=str(ROOT / "grids" / "quickstart.yaml"))
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args()
    torch.set_num_threads(1)
    cells = load_grid(args.grid).cells
    shapes = {c.config.arch: c.config for c in cells}
    costs = {arch: ([], []) for arch in shapes}
    for _ in range(args.rounds):  # interleaved: load shifts hit both archs alike
        for arch, cfg in shapes.items():
            s, e = step_costs(cfg, 1)
            costs[arch][0].extend(s)
            costs[arch][1].extend(e)
    med = {arch: (statistics.median(s), statistics.median(e)) for arch, (s, e) in costs.items()}
    for arch, (s, e) in costs.items():
        print(f"{arch:<5} step {1000 * min(s):6.1f} / {1000 * med[arch][0]:6.1f} ms (min / median), "
              f"eval batch {1000 * min(e):5.1f} / {1000 * med[arch][1]:5.1f} ms")
    if {"gpt", "ngpt"} <= set(med):
        print(f"nGPT speed vs GPT (median step): {med['gpt'][0] / med['ngpt'][0]:.2f}x")

    def total(speed_of_ngpt=None) -> float:
        out = 0.0
        for c in cells:
            step, batch = med[c.config.arch]
            if speed_of_ngpt and c.config.arch == "ngpt":
                step, batch = med["gpt"][0] / speed_of_ngpt, med["gpt"][1] / speed_of_ngpt
            out += c.config.max_iters * step + n_evals(c.config) * 2 * c.config.eval_iters * batch
        return out

    cpu = total()
    print(f"{len(cells)} cells: {cpu:.0f} CPU-s of training and evals (~{cpu / 2:.0f} s on 2 idle cores)")
    if "ngpt" in med and "gpt" in med:
        faster = total(0.95)
        print(f"with nGPT at 0.95x GPT's speed: {faster:.0f} CPU-s (~{faster / 2:.0f} s on 2 idle cores)")


if __name__ == "__main__":
    main()
