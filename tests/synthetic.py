"""Synthetic run dirs whose answers are known by construction (for tests and benchmarks).

    write_run(root, "g", {"arch": "ngpt"}, loss=lambda step: 3 - 0.002 * step)

writes runs/g/<run_id>/ exactly as a job would (config.json, status.json, evals.jsonl,
metrics.jsonl and, for a finished run, summary.json), with a val loss curve given as a
function of the step. No torch: the summary's parameter counts come from plan.estimate.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

from ablate.core import estimate, rundir
from ablate.core.config import make_config, resolve

CHAR_VOCAB = 65  # character-level Shakespeare


def config_for(overrides: dict):
    base = {"device": "cpu", "eval_interval": 100, "log_interval": 10}
    return resolve(make_config({**base, **overrides}), CHAR_VOCAB)


def write_run(root, grid: str, overrides: dict, loss: Callable[[int], float] | None = None, *,
              state: str = "done", steps: int | None = None, step_time: float = 0.01, peak_alloc: int | None = None,
              peak_reserved: int | None = None, tokens_per_s: float | None = None, summary: dict | None = None,
              torn: bool = False, metrics: bool = True, error: str | None = None, run_id: str | None = None,
              eval_se: float | None = None) -> Path:
    """One run dir. `loss(step)` gives the val loss at each eval (every eval_interval steps, the
    last step always), train loss = val loss - 0.01, `eval_se` each eval's standard error (none
    when None, as an evals.jsonl from before it was recorded). `steps` cuts the run short (a
    running or failed job); a summary is written only for a finished state unless `summary` is given."""
    cfg = config_for(overrides)
    rid = run_id or cfg.run_id()
    d = Path(root) / grid / rid
    d.mkdir(parents=True, exist_ok=True)
    rundir.write_json_atomic(d / rundir.CONFIG, {"config": cfg.to_dict(), "grid": grid, "run_id": rid,
                                                 "version": "0.1.0", "git_sha": "synthetic"})
    loss = loss or (lambda s: 4.0 - 2.0 * s / cfg.max_iters)
    last = cfg.max_iters if steps is None else steps
    eval_steps = sorted(set(range(0, last + 1, cfg.eval_interval)) | {last})
    tps = cfg.tokens_per_step / step_time
    se = {} if eval_se is None else {"val_loss_se": eval_se}
    lines = [json.dumps({"step": s, "tokens": s * cfg.tokens_per_step, "elapsed": s * step_time,
                         "val_loss": loss(s), **se, "train_loss": loss(s) - 0.01}) for s in eval_steps]
    (d / rundir.EVALS).write_text("\n".join(lines) + "\n" + ('{"step": 99999, "val_l' if torn else ""))
    if metrics:
        m = [json.dumps({"step": s, "tokens": s * cfg.tokens_per_step, "loss": loss(s), "lr": cfg.lr,
                         "step_time": step_time, "tokens_per_s": tokens_per_s or tps, "mem_alloc": peak_alloc,
                         "mem_peak": peak_alloc}) for s in range(cfg.log_interval, last + 1, cfg.log_interval)]
        (d / rundir.METRICS).write_text("".join(x + "\n" for x in m) + ('{"step": 9' if torn else ""))
    rundir.write_json_atomic(d / rundir.STATUS, {"state": state, "attempts": 1, "job_id": "1", "executor": "local",
                                                 "host": "synthetic", "device": "cpu", "started": 0.0,
                                                 "ended": None if state == "running" else float(last * step_time),
                                                 "heartbeat": float(last * step_time), "error": error})
    if state == "done" or summary is not None:
        try:
            counts, ckpt = estimate.param_counts(cfg), estimate.checkpoint_bytes(cfg)
        except estimate.NoFormula:  # a cell that uses a plugin: give its counts in `summary`
            counts, ckpt = {}, None
        final = {"params_total": counts.get("total"), "params_embedding": counts.get("embedding"),
                 "params_non_embedding": counts.get("non_embedding"), "params_attention": counts.get("attention"),
                 "ckpt_bytes": ckpt, "peak_alloc": peak_alloc,
                 "peak_reserved": peak_reserved, "device_capacity": None, "tokens_per_s": tokens_per_s or tps,
                 "mfu_causal": None, "mfu_nanogpt": None, "final_val_loss": loss(last),
                 "final_train_loss": loss(last) - 0.01, "final_eval_step": last, "steps": last,
                 "tokens": last * cfg.tokens_per_step, "train_s": last * step_time, "wall_s": last * step_time * 1.1,
                 "attn_backend": "sdpa", "device": "cpu", "device_name": "cpu", "world_size": 1,
                 "torch_version": "synthetic", "state": state, "run_id": rid, "grid": grid}
        rundir.write_json_atomic(d / rundir.SUMMARY, {**final, **(summary or {})})
    return d


def ending_at(final: float, max_iters: int, start: float = 4.2) -> Callable[[int], float]:
    """A val loss curve falling linearly from `start` at step 0 to `final` at max_iters."""
    return lambda s: start - (start - final) * s / max_iters


def write_seeded_grid(root, grid: str, means: list[tuple[dict, float]], seeds, rng, *, seed_sd: float,
                      eval_se: float, shared_sd: float = 0.0, state: Callable | None = None) -> dict:
    """A grid whose true answers are known: cell c, seed s ends at

        mean_c + shared_s + own_{c,s} + eval_c

    shared_s ~ N(0, shared_sd) is what a seed does to every cell alike (the data order), own ~
    N(0, seed_sd) what it does to this cell alone, eval_c ~ N(0, eval_se) the eval sample's error,
    one draw per cell (every seed is scored on the same windows) and recorded as each eval's
    standard error. `means`: (overrides, true mean final loss) per cell; `state(overrides, seed)`
    may end a run otherwise than "done". Returns {(cell index, seed): final loss written}."""
    shared = {s: rng.normal(0, shared_sd) if shared_sd else 0.0 for s in seeds}
    out = {}
    for i, (over, mean) in enumerate(means):
        eval_err = rng.normal(0, eval_se) if eval_se else 0.0
        for s in seeds:
            final = mean + shared[s] + rng.normal(0, seed_sd) + eval_err
            cfg = {"eval_interval": over.get("max_iters", 100), **over, "seed": s}
            st = state(over, s) if state else "done"
            write_run(root, grid, cfg, ending_at(final, config_for(cfg).max_iters), state=st,
                      steps=None if st == "done" else 0, eval_se=eval_se or None, metrics=False)
            out[(i, s)] = final
    return out
