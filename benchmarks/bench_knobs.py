"""What each memory knob saves and costs on this machine: the tracked peak of one training step
and the step time relative to the plain step, from paired, interleaved rounds in one process
(CPU time, one thread: wall time is noisy on shared machines).

    .venv/bin/python benchmarks/bench_knobs.py [--vocab 50304] [--rounds 7] [--device cpu]

Shape: 4 layers x 256 wide, 4 heads, 8 x 256 tokens, fp32 (bf16 autocast on CUDA), both archs.
"""
import argparse
import contextlib
import statistics
import time

import torch

from ablate.model import build_model
from ablate.core.config import make_config, resolve
from ablate.train.memtrack import StepTracker
from ablate.train.step import optimizer_step
from ablate.train.optim import build_optimizer

KNOBS = {"plain": {}, "act_ckpt=blocks": {"act_ckpt": "blocks"}, "act_ckpt=selective": {"act_ckpt": "selective"},
         "loss_chunk=512": {"loss_chunk": 512}, "blocks + chunk": {"act_ckpt": "blocks", "loss_chunk": 512}}


def setup(arch, knob, vocab, device):
    cfg = resolve(make_config({"arch": arch, "n_layer": 4, "n_head": 4, "n_embd": 256, "context": 256, "batch_size": 8,
                               "vocab_size": vocab, "dtype": "bf16" if device == "cuda" else "fp32", **knob}))
    torch.manual_seed(0)
    model = build_model(cfg, device).to(device)
    opt = build_optimizer(model, cfg, torch.device(device))
    g = torch.Generator().manual_seed(0)
    x, y = (torch.randint(0, vocab, (cfg.batch_size, cfg.context), generator=g).to(device) for _ in range(2))
    autocast = (lambda: torch.autocast(device, dtype=torch.bfloat16)) if cfg.dtype == "bf16" else contextlib.nullcontext

    def batch(i):
        return x, y

    def step(batches=batch):
        return optimizer_step(model, model, opt, batches, 1, autocast=autocast, grad_clip=1.0)
    step()  # AdamW's state
    return model, opt, batch, step


def timed(step, device) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        torch.cuda.synchronize()
        return time.perf_counter() - t0
    t0 = time.process_time()
    step()
    return time.process_time() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--vocab", type=int, default=50304)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--device", default="cpu")
    args = p.parse_args()
    torch.set_num_threads(1)
    for arch in ("gpt", "ngpt"):
        runs = {name: setup(arch, knob, args.vocab, args.device) for name, knob in KNOBS.items()}
        peaks = {}
        for name, (model, opt, batch, step) in runs.items():
            with StepTracker(model, opt) as tracker:
                step(tracker.each_micro_batch(batch))
            peaks[name] = tracker.peak()["total"]
        times = {name: [] for name in runs}
        for _ in range(args.rounds):  # interleaved: each round times every knob once
            for name, (*_, step) in runs.items():
                times[name].append(timed(step, args.device))
        print(f"{arch}, vocab {args.vocab}, {args.device}: tracked peak, and step time / plain's "
              f"(min / median / max over {args.rounds} paired rounds)")
        for name in runs:
            ratios = [t / p for t, p in zip(times[name], times["plain"])]
            print(f"  {name:20} {peaks[name] / 2**20:8.1f} MiB  {100 * (1 - peaks[name] / peaks['plain']):+6.1f}% saved  "
                  f"time x{min(ratios):.2f} / x{statistics.median(ratios):.2f} / x{max(ratios):.2f}")


if __name__ == "__main__":
    main()
