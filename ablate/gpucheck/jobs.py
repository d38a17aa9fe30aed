"""The GPU check's measurements, one per process: `python -m ablate.gpucheck.jobs JOB SPEC.json OUT.json`.

driver.py (no torch) starts each job as its own process, so that
a hung compile or a CUDA error is killed at its stage's time cap and the next job starts on
a clean device (and clean peak-memory counters). Jobs:

    env      device, versions (torch, CUDA, cuDNN, triton, flash-attn), SDPA priority order
    data     prepare the data set the cells train on (offline: data.prepare)
    cell     one benchmark cell: the real Trainer (its train_step, compile, autocast, data) for
             warm-up + timed steps; ms/step, tokens/s, MFU, peak memory vs the plan's estimate,
             the attention kernel that runs
    simulate each cell's step under FakeTensorMode (ablate.train.memtrack), in the background
    kernels  attention alone at the long context: the kernel each routing picks, the kernel the
             profiler sees, time and memory of one forward + backward (the SDPA pitfall, measured)
"""
from __future__ import annotations

import gc
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from ablate.core import estimate, rundir
from ablate.core.config import make_config, resolve
from ablate.data import corpora, prepare
from ablate.model import backends
from ablate.train import devices, distributed
from ablate.train.memtrack import simulate_step
from ablate.train.signals import StopFlag
from ablate.train.trainer import Trainer


def _sync(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()


# ---------------------------------------------------------------- env

def env(spec: dict) -> dict:
    cuda = torch.cuda.is_available()
    device = torch.device("cuda" if cuda else "cpu")
    name = devices.device_name(device)
    out = {"python": sys.version.split()[0], "torch": torch.__version__, "cuda": torch.version.cuda,
           "cudnn": torch.backends.cudnn.version() if cuda else None, "device_name": name,
           "peak_bf16_flops": devices.peak_flops(name), "flex": backends.has_flex(),
           "flash_attn": backends.capabilities()["flash"]}
    for module in ("triton", "numpy", "tiktoken"):
        try:
            out[module] = __import__(module).__version__
        except Exception as e:  # absent or broken: say so, do not stop
            out[module] = f"unavailable ({type(e).__name__})"
    if cuda:
        props = torch.cuda.get_device_properties(device)
        out.update(capability=f"{props.major}.{props.minor}", memory_gib=round(props.total_memory / 2 ** 30, 1),
                   sm_count=props.multi_processor_count)
    order = backends.sdpa_priority_order()
    if order is not None:
        out["sdpa_priority"] = order
    return out


# ---------------------------------------------------------------- data

def data(spec: dict) -> dict:
    t0 = time.perf_counter()
    path = prepare.prepare(spec["dataset"], spec["tokenizer"])
    meta = json.loads((path / "meta.json").read_text())
    return {"path": str(path), "seconds": time.perf_counter() - t0,
            **{k: meta.get(k) for k in ("vocab_size", "train_tokens", "val_tokens", "source")}}


# ---------------------------------------------------------------- one benchmark cell

def cell(spec: dict) -> dict:
    """Warm-up + timed steps of the real Trainer on a run dir (no evals, no checkpoints: those
    are the trainer's business and are measured by the resume stage)."""
    run_dir = Path(spec["run_dir"])
    doc = {"config": spec["config"], "grid": "gpu-check", "run_id": run_dir.name}
    rundir.write_json_atomic(run_dir / rundir.CONFIG, doc)
    with StopFlag() as stop:
        d = distributed.setup(spec["config"].get("device", "auto"), spec["config"].get("strategy", "ddp"))
        trainer = None
        try:
            t0 = time.perf_counter()
            trainer = Trainer(run_dir, make_config(spec["config"]), doc, d, stop)
            cfg = trainer.cfg  # resolved
            out = {"attn_backend": trainer.raw.attn_backend, "build_s": time.perf_counter() - t0,
                   "device_name": devices.device_name(d.device), "tokens_per_step": cfg.tokens_per_step,
                   "params": trainer.raw.param_counts()["total"]}
            t0 = _sync(d.device)
            loss0 = trainer.train_step().item()  # compiles when compile: true
            out["first_step_s"] = _sync(d.device) - t0
            for _ in range(spec["warmup"] - 1):
                trainer.train_step()
            if spec["steps"] == 0:  # a warm-up job: it only fills the compile caches
                return out
            _sync(d.device)
            devices.reset_peaks(d.device)
            t0 = time.perf_counter()
            for _ in range(spec["steps"]):
                loss = trainer.train_step()
            seconds = (_sync(d.device) - t0) / spec["steps"]
            tps = cfg.tokens_per_step / seconds
            fpt = estimate.flops_per_token(cfg)
            breakdown = estimate.memory_breakdown(cfg)
            out.update(ms_per_step=1000 * seconds, tokens_per_s=tps, loss_first=loss0, loss_last=loss.item(),
                       mfu_causal=devices.mfu(fpt["causal"], tps, out["device_name"], 1),
                       mfu_nanogpt=devices.mfu(fpt["nanogpt"], tps, out["device_name"], 1),
                       peak_flops=devices.peak_flops(out["device_name"]), **devices.peaks(d.device),
                       est_peak=breakdown["total"], est_breakdown=breakdown,
                       attn_kernel=backends.attention_kernel(trainer.raw.attn_backend, cfg, d.device))
        finally:  # a fsdp cell's process group (of one rank, too) is torn down as a job's is
            if trainer is not None:
                trainer.close()
            distributed.teardown(d)
    return out


# ---------------------------------------------------------------- simulated memory

def simulate(spec: dict, emit=lambda result: None) -> dict:
    """Each bench cell's step under FakeTensorMode (ablate/train/memtrack.py), as `ablate plan
    --memory` simulates it: fake CUDA tensors where torch has CUDA, once per shape (a compiled
    cell simulates the same eager step as its eager twin). {"sims": {cell: {category: bytes,
    "total", "device"} or {"error"}}}, written cell by cell: it runs in the background while the
    tests and the bench run, and what it finished before the check ends is kept."""
    sims, by_shape = {}, {}
    for c in spec["cells"]:
        config = {**c["config"], "compile": False}
        shape = json.dumps(config, sort_keys=True)
        if shape not in by_shape:
            device = "cuda" if config["device"] == "cuda" and torch.backends.cuda.is_built() else "cpu"
            t0 = time.perf_counter()
            try:
                cfg = resolve(make_config(config), corpora.vocab_size(config["dataset"], config["tokenizer"]))
                by_shape[shape] = {**simulate_step(cfg, device), "device": device,
                                   "seconds": round(time.perf_counter() - t0, 1)}
            except Exception as e:  # a shape the simulation cannot run is this cell's result
                by_shape[shape] = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
        sims[c["name"]] = by_shape[shape]
        emit({"sims": sims})
    return {"sims": sims}


# ---------------------------------------------------------------- attention alone

def kernels(spec: dict, emit=lambda result: None) -> dict:
    """One forward + backward of attention per routing case, at the long context: the kernel
    named (attention_kernel / SDPA's dispatcher) and the kernel seen (profiler), milliseconds
    and peak memory. 'pre-fix' replays the call attend() made before issue 14 (enable_gqa
    with a boolean mask), to measure what the routing avoids."""
    device = torch.device(spec["device"])
    B, T, H, hd, W, kv = (spec[k] for k in ("batch", "context", "n_head", "head_dim", "window", "n_kv_head"))
    rows = []
    for case in spec["cases"]:
        dtype = torch.bfloat16 if case["dtype"] == "bf16" else torch.float32
        window = W if case["window"] else None
        heads = kv if case["gqa"] else H
        cfg = resolve(make_config(dict(n_head=H, n_embd=H * hd, n_kv_head=heads, context=T, window=window,
                                       dtype=case["dtype"], vocab_size=64)))
        backend = backends.resolve_backend(case["backend"], device.type, case["dtype"], window, T)
        row = {"case": case["name"], "backend": backend}
        grad = not (device.type == "cpu" and backend == "flex")  # torch has no CPU flex backward
        try:
            g = torch.Generator(device=device).manual_seed(0)
            q, k, v = (torch.randn(B, T, n, hd, device=device, dtype=dtype, generator=g).requires_grad_(grad)
                       for n in (H, heads, heads))
            if case.get("prefix"):  # the old call: enable_gqa with a mask, whatever the kernels take
                mask = backends.window_mask(T, W, device)
                qt, kt, vt = (t.transpose(1, 2) for t in (q, k, v))
                row["named"] = backends.sdpa_kernel(qt, kt, vt, attn_mask=mask, enable_gqa=True)

                def fwd():
                    return F.scaled_dot_product_attention(qt, kt, vt, attn_mask=mask, enable_gqa=True, scale=hd ** -0.5)
            else:
                row["named"] = backends.attention_kernel(backend, cfg, device, grad=grad)

                def fwd():
                    return backends.attend(q, k, v, scale=hd ** -0.5, window=window, backend=backend)

            def step():
                y = fwd()
                if grad:
                    y.float().sum().backward()

            step()  # warm-up (compiles flex)
            row["seen"] = sorted(backends.kernels_seen(step)) or None  # compiled flex shows no aten attention op
            _sync(device)
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
            t0 = time.perf_counter()
            for _ in range(spec["reps"]):
                step()
            row["ms"] = 1000 * (_sync(device) - t0) / spec["reps"]
            if device.type == "cuda":
                row["peak_mib"] = (torch.cuda.max_memory_allocated(device) - base) / 2 ** 20
        except Exception as e:  # an OOM or a kernel error is this row's result
            row["error"] = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]
        rows.append(row)
        emit({"rows": rows})  # row by row: a stage stopped at its cap keeps the rows it finished
        q = k = v = None
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return {"rows": rows}


JOBS = {"env": env, "data": data, "cell": cell, "simulate": simulate, "kernels": kernels}


def main(argv=None) -> int:
    job, spec_path, out_path = (sys.argv[1:] if argv is None else argv)[:3]
    spec = json.loads(Path(spec_path).read_text())

    def emit(result):
        rundir.write_json_atomic(out_path, result)

    emit(JOBS[job](spec, emit) if job in ("kernels", "simulate") else JOBS[job](spec))
    return 0


if __name__ == "__main__":
    sys.exit(main())
