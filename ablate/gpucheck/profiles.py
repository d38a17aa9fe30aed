"""What the GPU check measures, at two sizes: "gpu" (124M, 1k and 8k context, one H100/H200,
inside 8 minutes) and "cpu" (the same stages at a tiny size, for the test suite).

The benchmark cells come in priority order, because the bench stage runs them until its time
is up: first what the targets need (GPT and nGPT compiled with SDPA at 1k and 8k), then the
cheap eager runs, then one GQA, one SWA and one tied cell, then GPT and nGPT sharded with
strategy fsdp (world size 1), then FlexAttention.
"""
from __future__ import annotations

ARCHS = ("gpt", "ngpt")

GPU = {
    "device": "cuda", "dtype": "bf16", "dataset": "shakespeare", "tokenizer": "gpt2",
    "model": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50304},  # GPT-2 small, 124M
    "contexts": {"1k": (1024, 16), "8k": (8192, 2)},  # name -> (context, micro-batch): 16k tokens a step each
    "gqa_kv": 4, "window": 1024,  # the GQA cell's K/V heads; the SWA cell's window (at 8k)
    "warmup": 5, "steps": 20,  # per cell: untimed steps (compile, allocator), then timed steps
    # seconds for everything: inside the 8 minutes, and short enough that a 15-minute device
    # lease (start-up included) keeps ~5 minutes for a rerun of what failed (--only / --cells)
    "budget": 450,
    # per-stage caps; while a stage runs, the stages after it keep their reserve
    "caps": {"env": 60, "data": 90, "tests": 160, "kernels": 60, "bench": 400, "resume": 90},
    "reserve": {"kernels": 25, "bench": 100, "resume": 50},
    "cell_cap": {"eager": 60, "compiled": 150},
    "shards": 6, "model_tests_share": 0.6,  # tests/model in 6 processes, for at most 60% of the stage
    "warm": True,
    "kernels": {"batch": 2, "context": 8192, "reps": 5},
    "resume": {"config": {"n_layer": 12, "n_head": 12, "n_embd": 768, "vocab_size": 50304, "context": 1024,
                          "batch_size": 8, "max_iters": 60, "ckpt_interval": 20, "eval_interval": 20,
                          "eval_iters": 4, "log_interval": 1, "dtype": "bf16", "device": "cuda", "arch": "gpt"},
               "kill_after": 25},  # SIGKILL once step 25 is logged: resumes from the step-20 checkpoint
    "env": {},
}

CPU = {
    **GPU,
    "device": "cpu", "dtype": "fp32", "tokenizer": "char",
    "model": {"n_layer": 2, "n_head": 4, "n_embd": 64},
    "contexts": {"1k": (64, 4), "8k": (256, 1)},
    "gqa_kv": 2, "window": 32,
    "warmup": 2, "steps": 3,
    "budget": 240,
    "caps": {"env": 60, "data": 60, "tests": 90, "kernels": 60, "bench": 150, "resume": 60},
    "reserve": {"kernels": 10, "bench": 30, "resume": 20},
    "cell_cap": {"eager": 60, "compiled": 60},
    "shards": 2, "warm": False,  # nothing to warm with compile off (tests/test_gpu_check.py covers warm())
    "kernels": {"batch": 1, "context": 256, "reps": 2},
    "resume": {"config": {"n_layer": 2, "n_head": 2, "n_embd": 32, "context": 32, "batch_size": 8, "max_iters": 100,
                          "ckpt_interval": 20, "eval_interval": 40, "eval_iters": 2, "log_interval": 1,
                          "dtype": "fp32", "device": "cpu", "arch": "gpt"},
               "kill_after": 30},
    # one thread per process (a 2-core machine); compile off: a CPU compile takes ~40 s here, and
    # the compiled cells still go through every line of the check (torch.compile is a no-op)
    "env": {"OMP_NUM_THREADS": "1", "TORCH_COMPILE_DISABLE": "1"},
    # a subset, to stay quick: a GPT / nGPT pair, the routed window, and a cell that must fail
    # (torch has no CPU flex backward) so that a failing cell is seen to be recorded
    "cells": ("gpt-1k-sdpa-compiled", "ngpt-1k-sdpa-compiled", "gpt-8k-swa-auto-compiled", "ngpt-1k-fsdp-sdpa-compiled",
              "gpt-1k-flex-eager"),
}

PROFILES = {"gpu": GPU, "cpu": CPU}


def cells(p: dict) -> list[dict]:
    """Every benchmark cell of profile p, in priority order: {name, arch, ctx, tag, backend,
    compiled, config} with config a RunConfig dict."""
    def cell(arch, ctx, backend, compiled, tag=None, **extra):
        T, B = p["contexts"][ctx]
        name = "-".join(filter(None, (arch, ctx, tag, backend, "compiled" if compiled else "eager")))
        config = {**p["model"], "arch": arch, "context": T, "batch_size": B, "attn_backend": backend, "compile": compiled,
                  "dtype": p["dtype"], "device": p["device"], "dataset": p["dataset"], "tokenizer": p["tokenizer"],
                  "seed": 0, **extra}
        return {"name": name, "arch": arch, "ctx": ctx, "tag": tag, "backend": backend, "compiled": compiled,
                "config": config}

    grid = [(arch, ctx) for ctx in p["contexts"] for arch in ARCHS]
    return ([cell(a, c, "sdpa", True) for a, c in grid]
            + [cell(a, c, "sdpa", False) for a, c in grid]
            + [cell("gpt", "8k", "auto", True, "swa", window=p["window"]),  # auto: where routing sends a window
               cell("gpt", "1k", "sdpa", True, "gqa", n_kv_head=p["gqa_kv"]),
               cell("gpt", "1k", "sdpa", True, "tied", tie_embeddings=True)]
            # the sharded code path (FSDP2 at world size 1: all-gathers, reduce-scatters, DCP), its
            # allocator peak beside the simulation's; multi-GPU figures need a multi-GPU machine
            + [cell(a, "1k", "sdpa", True, "fsdp", strategy="fsdp") for a in ARCHS]
            + [cell(a, c, "flex", True) for a, c in grid]
            + [cell(a, c, "flex", False) for a, c in grid])


def kernel_cases() -> list[dict]:
    """Attention alone, at the long context: each routing case the SDPA pitfall is about."""
    def case(name, dtype="bf16", gqa=False, window=False, backend="auto", prefix=False):
        return {"name": name, "dtype": dtype, "gqa": gqa, "window": window, "backend": backend, "prefix": prefix}

    return [case("causal"), case("gqa"), case("gqa fp32", "fp32", gqa=True),
            case("swa", window=True), case("swa+gqa", gqa=True, window=True),
            case("swa, sdpa forced", window=True, backend="sdpa"),
            case("swa+gqa, sdpa forced", gqa=True, window=True, backend="sdpa"),
            case("swa+gqa, sdpa pre-fix call (enable_gqa + mask)", gqa=True, window=True, backend="sdpa", prefix=True)]
