"""The trainer's batches read across 100 shards vs one file of the same tokens (target: within 10%).

    .venv/bin/python benchmarks/bench_loader.py [--tokens 50000000] [--batch 16] [--context 1024]

Writes TOKENS random GPT-2 ids once as one llm.c shard and once as 100 shards (in a temp folder,
deleted after), reads both through the trainer's Batches (random-offset windows, memory-mapped,
on the CPU), and times rounds of 200 training micro-batches, paired and interleaved (one, many,
many, one, ...), by CPU time (steadier than wall time on a shared machine). Checks first that
both give the same batches. Prints batches/s of each and the ratio's median over the rounds.
"""
import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ablate.data import corpora  # noqa: E402
from ablate.data.batches import Batches  # noqa: E402


def write_llmc(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def timed(batches: Batches, first_step: int, n: int) -> float:
    t0 = time.process_time()
    for step in range(first_step, first_step + n):
        batches.train(step, 0)
    return time.process_time() - t0


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--tokens", type=int, default=50_000_000)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--context", type=int, default=1024)
    p.add_argument("--rounds", type=int, default=10)
    args = p.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        tokens = np.random.default_rng(0).integers(0, 50257, size=args.tokens, dtype=np.uint16)
        val = tokens[:100_000]
        for name, parts in (("one", [tokens]), ("many", np.array_split(tokens, 100))):
            (tmp / name).mkdir()
            for k, part in enumerate(parts):
                write_llmc(tmp / name / f"bench_train_{k:06d}.bin", part)
            write_llmc(tmp / name / "bench_val_000000.bin", val)
        loaders = {name: Batches(corpora.splits(f"shards:{tmp / name}", "gpt2"), args.context,
                                 args.batch, 0, torch.device("cpu")) for name in ("one", "many")}
        for step in range(50):  # the same batches, and every page touched once before timing
            assert torch.equal(loaders["one"].train(step, 0)[0], loaders["many"].train(step, 0)[0])
        for name in loaders:
            timed(loaders[name], 0, 2000)
        n, times = 200, {"one": [], "many": []}
        for r in range(args.rounds):
            order = ("one", "many") if r % 2 == 0 else ("many", "one")
            for name in order:
                times[name].append(timed(loaders[name], 10_000 + r * n, n))
        rate = {k: n / statistics.median(v) for k, v in times.items()}
        ratio = statistics.median(m / o for m, o in zip(times["many"], times["one"]))
        print(f"{args.tokens:,} tokens, batch {args.batch} x {args.context + 1} tokens, {args.rounds} paired rounds "
              f"of {n} batches (CPU time)")
        for name, label in (("one", "one file:  "), ("many", "100 shards:")):
            print(f"{label} {rate[name]:,.0f} batches/s ({rate[name] * args.batch * args.context / 1e6:.1f}M tokens/s)")
        print(f"time per batch, 100 shards / one file: {ratio:.3f} (median of paired rounds; target <= 1.10)")


if __name__ == "__main__":
    main()
