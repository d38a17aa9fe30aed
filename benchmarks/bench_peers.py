"""Training-step throughput side by side: our GPT vs transformers' Llama (SDPA), our nGPT vs our GPT.

    .venv/bin/python benchmarks/bench_peers.py                    # both shapes, eager + compiled, fp32
    .venv/bin/python benchmarks/bench_peers.py --shape quickstart --modes eager --rounds 10
    .venv/bin/python benchmarks/bench_peers.py --dtype bf16       # CPU autocast bf16

One training step = forward, loss, backward, AdamW step, zero_grad (and nGPT's normalize_()),
the trainer's step without data loading. The models of a comparison run in paired, interleaved
rounds in one process (each round times `--steps` steps of every model, in an order that
rotates from round to round), so slow phases of a shared machine hit both sides alike. Each
round gives one ratio per pair; the table shows their min / median / max, for CPU time
(time.process_time, meaningful at 1 thread: the default) and wall time. On a noisy machine
trust the CPU-time column: it counts only this process's cycles.

Ratios are throughput ratios (> 1: the first model is faster): GPT/Llama = Llama's step time /
our GPT's; nGPT/GPT = GPT's step time / nGPT's. transformers' LlamaForCausalLM is built at the
same shape (SwiGLU 4d hidden, RMSNorm 1e-6, RoPE 10000, no biases, untied head) with
attn_implementation="sdpa".
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import time

import torch

SHAPES = {  # name -> (n_layer, n_embd, n_head, context, batch, vocab)
    "quickstart": dict(n_layer=4, n_embd=128, n_head=4, context=128, batch_size=16, vocab_size=128),
    "6x384": dict(n_layer=6, n_embd=384, n_head=6, context=256, batch_size=16, vocab_size=128),
}
PAIRS = [("gpt", "llama"), ("ngpt", "gpt")]  # (numerator, denominator) of each throughput ratio


def build(name: str, shape: dict):
    """(model, step function kwargs): our gpt / ngpt through build_model, or HF Llama."""
    if name == "llama":
        from transformers import LlamaConfig, LlamaForCausalLM

        d = shape["n_embd"]
        config = LlamaConfig(vocab_size=shape["vocab_size"], hidden_size=d, intermediate_size=4 * d,
                             num_hidden_layers=shape["n_layer"], num_attention_heads=shape["n_head"],
                             num_key_value_heads=shape["n_head"], max_position_embeddings=shape["context"],
                             rms_norm_eps=1e-6, rope_theta=10000.0, tie_word_embeddings=False,
                             attention_bias=False, mlp_bias=False, attn_implementation="sdpa")
        model = LlamaForCausalLM(config).train()
        return model, lambda m, x, y: m(input_ids=x, labels=y, shift_labels=y).loss, lambda: None
    from ablate.model import build_model
    from ablate.core.config import RunConfig, resolve

    cfg = resolve(RunConfig(arch=name, **shape))
    model = build_model(cfg, device_type="cpu")
    return model, lambda m, x, y: m(x, y)[1], model.normalize_


class Runner:
    """One model, its optimizer and its (possibly compiled) forward, ready to time steps."""

    def __init__(self, name, shape, compiled, dtype):
        torch.manual_seed(0)
        self.name = name
        self.model, self.loss_fn, self.after_step = build(name, shape)
        self.fwd = torch.compile(self.model) if compiled else self.model
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        B, T, V = shape["batch_size"], shape["context"], shape["vocab_size"]
        self.x, self.y = (torch.randint(0, V, (B, T), generator=g) for _ in range(2))
        self.autocast = (lambda: torch.autocast("cpu", dtype=torch.bfloat16)) if dtype == "bf16" \
            else contextlib.nullcontext
        self.tokens = B * T

    def step(self):
        with self.autocast():
            loss = self.loss_fn(self.fwd, self.x, self.y)
        loss.backward()
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        self.after_step()

    def timed(self, steps):
        c0, w0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            self.step()
        return (time.process_time() - c0) / steps, (time.perf_counter() - w0) / steps


def measure(shape_name, compiled, dtype, rounds, steps, warmup):
    shape = SHAPES[shape_name]
    names = sorted({n for pair in PAIRS for n in pair})
    runners = {n: Runner(n, shape, compiled, dtype) for n in names}
    for r in runners.values():
        r.timed(warmup)  # compile, allocator and caches
    times = {n: [] for n in names}  # per round: (cpu s/step, wall s/step)
    for i in range(rounds):
        order = names[i % len(names):] + names[:i % len(names)]  # rotate who goes first
        for n in order:
            times[n].append(runners[n].timed(steps))
    rows = []
    for a, b in PAIRS:
        row = {"shape": shape_name, "mode": "compiled" if compiled else "eager", "pair": f"{a} / {b}"}
        for k, clock in enumerate(("cpu", "wall")):
            ratios = sorted(tb[k] / ta[k] for ta, tb in zip(times[a], times[b]))
            row[clock] = (ratios[0], statistics.median(ratios), ratios[-1])
        row["tok_s"] = {n: runners[n].tokens / statistics.median(t[0] for t in times[n]) for n in (a, b)}
        rows.append(row)
    return rows


def table(rows, dtype, threads) -> str:
    out = [f"CPU, {dtype}, {threads} thread(s); throughput ratio min / median / max over paired rounds "
           "(> 1: the first model is faster); tokens/s from median CPU time per step", "",
           "| shape | mode | ratio | CPU time | wall time | tokens/s (CPU time) |", "|---|---|---|---|---|---|"]
    for r in rows:
        fmt = lambda t: f"{t[0]:.2f} / **{t[1]:.2f}** / {t[2]:.2f}"  # noqa: E731
        toks = ", ".join(f"{n} {v:,.0f}" for n, v in r["tok_s"].items())
        out.append(f"| {r['shape']} | {r['mode']} | {r['pair']} | {fmt(r['cpu'])} | {fmt(r['wall'])} | {toks} |")
    return "\n".join(out)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", choices=(*SHAPES, "all"), default="all")
    p.add_argument("--modes", default="eager,compiled", help="comma list of eager, compiled")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per model per round")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (1: CPU time is exact)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    for shape in SHAPES if args.shape == "all" else (args.shape,):
        for mode in args.modes.split(","):
            if mode not in ("eager", "compiled"):
                p.error(f"--modes: {mode!r} is not eager or compiled")
            rows += measure(shape, mode == "compiled", args.dtype, args.rounds, args.steps, args.warmup)
            print(table(rows[-len(PAIRS):], args.dtype, args.threads), flush=True)  # progress
    print("\n" + table(rows, args.dtype, args.threads))


if __name__ == "__main__":
    main()
