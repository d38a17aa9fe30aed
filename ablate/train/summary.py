"""summary.json: one flat record per run for the store (DuckDB columns), written atomically.

Keys: state, run_id, grid; params_total / params_embedding / params_non_embedding /
params_attention (counted on the model); ckpt_bytes (size of model.pt, the final state_dict);
peak_alloc / peak_reserved / device_capacity (CUDA bytes, None on CPU); tracked_params /
tracked_buffers / tracked_grads / tracked_optimizer / tracked_activations / tracked_temps /
tracked_other / tracked_total (tensor bytes by category at the peak of one step tracked after
warm-up, any device: memtrack.py) and tracked_step; tokens_per_s (median
over logged intervals, warm-up excluded); mfu_causal / mfu_nanogpt (6N + attention, the two
conventions of estimate.flops_per_token, against the device's bf16 peak; None when unknown);
final_val_loss, final_train_loss, steps, tokens (tokens seen: steps x tokens per step),
data_train_tokens / data_val_tokens (the splits' sizes) and epochs (tokens / data_train_tokens:
above 1, the run saw its training tokens more than once on average), train_s (training seconds,
evals and checkpoints excluded, over all attempts), wall_s (all attempts, everything included);
attn_backend, attn_kernel (the kernel that runs: sdpa-flash, sdpa-efficient, sdpa-cudnn, sdpa-math,
flex or flash; backends.attention_kernel), device, device_name, world_size, torch_version,
ablate_version, git_sha.
"""
from __future__ import annotations

import os
import socket
import statistics
from pathlib import Path

import submitit
import torch

from ablate import __version__
from ablate.core import estimate, rundir
from ablate.core.provenance import ABLATE_DIR, git_sha
from ablate.model import backends
from ablate.train import devices


def job_fields() -> dict:
    """Scheduler identity of this process, for status.json."""
    out = {"host": socket.gethostname(), "pid": os.getpid()}
    if os.environ.get("SLURM_JOB_ID"):
        out["slurm_job_id"] = os.environ["SLURM_JOB_ID"]
    if "SUBMITIT_EXECUTOR" in os.environ:
        try:
            out["job_id"] = str(submitit.JobEnvironment().job_id)
        except Exception:  # an env var without a real submitit job: nothing to add
            pass
    elif out.get("slurm_job_id"):
        out["job_id"] = out["slurm_job_id"]
    return out


def median_tokens_per_s(records: list[dict], attempt_starts: list[int]) -> float | None:
    """Median tokens/s over metrics lines, skipping each attempt's warm-up (the first line after
    a start, and lines within the first WARMUP_STEPS steps: compile, allocator, caches)."""
    keep, starts = [], sorted(attempt_starts)
    for prev, r in zip([None] + records[:-1], records):
        start = max([s for s in starts if s < r["step"]], default=0)
        first_after_start = prev is None or prev["step"] <= start
        if r.get("tokens_per_s") and not first_after_start and r["step"] - start > devices.WARMUP_STEPS:
            keep.append(r["tokens_per_s"])
    if not keep:  # a run too short to have a steady state: use what there is
        keep = [r["tokens_per_s"] for r in records if r.get("tokens_per_s")]
    return statistics.median(keep) if keep else None


def build(cfg, doc: dict, state: str, model, run_dir: Path, d, *, steps: int, train_s: float, wall_s: float,
          attempt_starts: list[int], ckpt_bytes: int | None, peaks: dict, tracked: dict | None = None,
          data: dict | None = None) -> dict:
    """data: the splits' sizes in tokens ({'train': n, 'val': n}), for the tokens-seen accounting."""
    evals = rundir.read_jsonl(run_dir / rundir.EVALS)
    last = evals[-1] if evals else {}
    tps = median_tokens_per_s(rundir.read_jsonl(run_dir / rundir.METRICS), attempt_starts)
    name = devices.device_name(d.device)
    counts = model.param_counts()
    fpt = estimate.flops_per_token(cfg, counts)
    return {
        "state": state, "run_id": doc.get("run_id"), "grid": doc.get("grid"),
        **{f"params_{k}": counts.get(k) for k in ("total", "embedding", "non_embedding", "attention")},
        "ckpt_bytes": ckpt_bytes, **peaks, "device_capacity": devices.capacity(d.device),
        **{f"tracked_{k}": v for k, v in (tracked or {}).items()},
        "tokens_per_s": tps,
        "mfu_causal": devices.mfu(fpt["causal"], tps, name, d.world_size),
        "mfu_nanogpt": devices.mfu(fpt["nanogpt"], tps, name, d.world_size),
        "peak_flops": devices.peak_flops(name),
        "final_val_loss": last.get("val_loss"), "final_val_loss_se": last.get("val_loss_se"),
        "final_train_loss": last.get("train_loss"),
        "final_eval_step": last.get("step"),
        "steps": steps, "tokens": steps * cfg.tokens_per_step, "train_s": train_s, "wall_s": wall_s,
        "data_train_tokens": (data or {}).get("train"), "data_val_tokens": (data or {}).get("val"),
        "epochs": steps * cfg.tokens_per_step / data["train"] if data and data.get("train") else None,
        "attn_backend": model.attn_backend, "attn_kernel": backends.attention_kernel(model.attn_backend, cfg, d.device),
        "device": d.device.type, "device_name": name,
        "world_size": d.world_size, "dtype": cfg.dtype, "compile": cfg.compile,
        "torch_version": torch.__version__, "ablate_version": __version__,
        "git_sha": doc.get("git_sha") or git_sha(ABLATE_DIR),
    }
