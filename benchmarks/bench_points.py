"""The extension points of issue 25 (scores, head, loss, plugins that compose) cost a built-in
cell nothing: this checkout's model against an earlier commit's in one process, bit for bit and
step for step, and what the new paths cost a plugin cell.

    .venv/bin/python benchmarks/bench_points.py                 # against 2c44474 (before the points)
    .venv/bin/python benchmarks/bench_points.py --base REF --rounds 9 --steps 3

1. bits: GPT and nGPT x {plain, loss_chunk, GQA + window + tying, sharing, selective and block
   checkpointing (+ loss_chunk)} x {fp32, bf16 CPU autocast}: three AdamW steps from the same
   init in the earlier model and in this one, every loss and every gradient compared with
   torch.equal, then an evaluation loss.
2. speed, earlier vs now (ratio = earlier step time / this step time: > 1 means now is faster):
   the built-in GPT and nGPT, GPT with loss_chunk, and a plugin cell without a score_mod (the
   shipped qk_norm: a `qk` part, as before).
3. what a plugin's new path costs, this checkout only (ratio = built-in step time / plugin step
   time): a logit soft-cap (a head part), z-loss (a loss term), and an attention soft-cap, whose
   score_mod runs as the exact eager T x T fallback on CPU instead of SDPA's kernel.

One step = forward, loss, backward, AdamW, zero_grad, normalize_ (the trainer's step without data).
Paired, interleaved rounds with a rotating order; CPU time (time.process_time) at 1 thread, the
clock that is steady on a shared machine; min / median / max of the per-round ratios. Eager only.
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from base_model import load_base_model  # noqa: E402  (the earlier model, beside this one)

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = dict(n_layer=4, n_embd=128, n_head=4, context=128, batch_size=16, vocab_size=128)
BITS_CASES = ({}, {"loss_chunk": 24}, {"n_kv_head": 2, "window": 8, "tie_embeddings": True}, {"share_attn": 1},
              {"act_ckpt": "selective"}, {"act_ckpt": "blocks", "loss_chunk": 7})


def config(plugins=(), **kw):
    from ablate.core.config import make_config, resolve
    from ablate.plan import plugins as loader

    decls = tuple(loader.load(str(ROOT / "plugins" / f"{p}.py")).declaration() for p in plugins)
    return resolve(make_config({**kw, **({"plugins": decls} if decls else {})}))


def build_new(cfg):
    from ablate.train.build import model_for

    torch.manual_seed(0)
    return model_for(cfg, "cpu")


def build_old(old, cfg, qk=None):
    torch.manual_seed(0)
    return old.build_model(cfg, "cpu", {"qk": qk} if qk else None)


# ---------------------------------------------------------------- 1. bits

def trajectory(model, cfg, bf16: bool, steps: int = 3) -> list:
    """Every loss and gradient of `steps` AdamW steps on fixed batches, then an eval loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, foreach=False)
    g = torch.Generator().manual_seed(1)
    out = []
    for _ in range(steps):
        idx = torch.randint(0, cfg.vocab_size, (4, cfg.context + 1), generator=g)
        with torch.autocast("cpu", dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = model(idx[:, :-1], idx[:, 1:])[1]
        loss.backward()
        out += [loss.detach().clone(), *(p.grad.clone() for p in model.parameters())]
        opt.step()
        opt.zero_grad(set_to_none=True)
        model.normalize_()
    with torch.no_grad():
        out.append(model(idx[:, :-1], idx[:, 1:])[1])
    return out


def bits(old) -> list[str]:
    lines = []
    for arch in ("gpt", "ngpt"):
        for kw in BITS_CASES:
            for bf16 in (False, True):
                cfg = config(arch=arch, n_layer=2, n_head=4, n_embd=32, context=16, vocab_size=96,
                             dtype="bf16" if bf16 else "fp32", **kw)
                a = trajectory(build_old(old, cfg), cfg, bf16)
                b = trajectory(build_new(cfg), cfg, bf16)
                same = len(a) == len(b) and all(torch.equal(x, y) for x, y in zip(a, b))
                lines.append(f"{arch:4} {'bf16' if bf16 else 'fp32'} {kw or 'plain'}: "
                             f"{'bitwise equal' if same else 'DIFFERENT'} ({len(a)} tensors)")
    return lines


# ---------------------------------------------------------------- 2. and 3. speed

class Runner:
    def __init__(self, model, cfg):
        self.model = model
        self.opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        self.x, self.y = (torch.randint(0, cfg.vocab_size, (cfg.batch_size, cfg.context), generator=g)
                          for _ in range(2))

    def timed(self, steps: int) -> float:
        t0 = time.process_time()
        for _ in range(steps):
            self.model(self.x, self.y)[1].backward()
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.model.normalize_()
        return (time.process_time() - t0) / steps


def pairs(old) -> list[tuple]:
    """(label, kind, slower-or-equal side, other side): ratio = first's step time / second's."""
    from ablate.plan import plugins as loader

    qk_norm = loader.load(str(ROOT / "plugins" / "qk_norm.py")).points["qk"]
    out = []
    for label, kw, plugin, keys in (("gpt", {"arch": "gpt"}, None, {}), ("ngpt", {"arch": "ngpt"}, None, {}),
                                    ("gpt, loss_chunk 256", {"arch": "gpt", "loss_chunk": 256}, None, {}),
                                    ("gpt + qk_norm (plugin, no score_mod)", {"arch": "gpt"}, "qk_norm",
                                     {"qk_norm": True})):
        builtin = config(**QUICKSTART, **kw)
        cell = config((plugin,), **QUICKSTART, **kw, **keys) if plugin else builtin
        out.append((label, "earlier / now", Runner(build_old(old, builtin, qk_norm if plugin else None), builtin),
                    Runner(build_new(cell), cell)))
    gpt = config(**QUICKSTART, arch="gpt")
    for label, plugins, keys in (("logit soft-cap 30 (head part)", ("softcap",), {"logit_softcap": 30.0}),
                                 ("z-loss 1e-4 (loss term)", ("z_loss",), {"z_loss": 1e-4}),
                                 ("attention soft-cap 50 (score_mod: eager T x T)", ("softcap",), {"attn_softcap": 50.0})):
        cell = config(plugins, **QUICKSTART, arch="gpt", **keys)
        out.append((label, "built-in / plugin", Runner(build_new(gpt), gpt), Runner(build_new(cell), cell)))
    return out


def speed(old, rounds: int, steps: int, warmup: int) -> list[str]:
    rows = pairs(old)
    runners = [r for _, _, a, b in rows for r in (a, b)]
    for r in runners:
        r.timed(warmup)
    times = {id(r): [] for r in runners}
    for i in range(rounds):
        for r in runners[i % len(runners):] + runners[:i % len(runners)]:  # rotate who goes first
            times[id(r)].append(r.timed(steps))
    lines = ["| cell | ratio | CPU time: min / median / max | ms per step (median) |", "|---|---|---|---|"]
    for label, kind, a, b in rows:
        ratios = sorted(ta / tb for ta, tb in zip(times[id(a)], times[id(b)]))
        ms = " vs ".join(f"{statistics.median(times[id(r)]) * 1e3:.0f}" for r in (a, b))
        lines.append(f"| {label} | {kind} | {ratios[0]:.3f} / **{statistics.median(ratios):.3f}** / "
                     f"{ratios[-1]:.3f} | {ms} |")
    return lines


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--base", default="2c44474", help="the earlier commit (git ref) to compare with")
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--steps", type=int, default=3, help="steps per model per round")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--skip-bits", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    old = load_base_model(args.base)
    if not args.skip_bits:
        print(f"bits, {args.base} vs this checkout:", *bits(old), sep="\n  ", flush=True)
    print(f"\nspeed: quickstart shape {QUICKSTART}, CPU fp32 eager, 1 thread, {args.rounds} paired rounds of "
          f"{args.steps} steps\n", *speed(old, args.rounds, args.steps, args.warmup), sep="\n")


if __name__ == "__main__":
    main()
