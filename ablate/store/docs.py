"""What every table, view and column of the store means, in one line each: `ablate query --schema`
prints it from the store itself (so a plugin key or a report table is there too), README has it.

A config column's meaning is its RunConfig field's doc; a plugin key's is its declaration's help.
tests/store/test_store.py checks that every column of every table and view has a line here.
"""
from __future__ import annotations

from ablate.core.config import FIELDS
from ablate.core.rundir import EVAL_FIELDS, METRIC_FIELDS

TABLES = {
    "runs": "one row per run dir: its config, status.json, summary.json and what its logs say so far",
    "evals": "one row per eval of a run (evals.jsonl): val and train loss on the fixed eval windows",
    "train": "one row per logged train step of a run (metrics.jsonl)",
    "broken": "run dirs whose config.json is not their own: listed, never read as data",
    "ingested": "what each run dir looked like when ingest last read it (the store's own bookkeeping)",
    "meta": "the store's schema version",
    "final": "view: one row per run, its final figures (the last eval's while it runs)",
    "cells": "view: one row per cell (a config without its seed): mean and standard errors over finished seeds",
    "speedup": "written by `ablate report`: each variant's speedup over its baseline, curve and budget modes",
    "paired": "written by `ablate report`: seed-paired loss differences and speedups with 95% intervals",
    "effects": "written by `ablate report`: main effects and two-way interactions of the grid's factors",
    "scaling": "written by `ablate report`: speedup vs budget, measured and extrapolated from the loss fits",
}

_COMMON = {
    "grid": "the grid folder the run dir lives in (runs/<grid>/<run_id>; a cell shared by grids lives in the first's)",
    "run_id": "hash of every config field that changes results: the run's name",
    "cell_id": "hash of the config without the seed: the runs of one cell differ only by seed",
    "run_dir": "the run dir's path",
}
_STATUS = {
    "state": "new, pending, queued, running, done, failed, diverged, oom or cancelled (status.json)",
    "attempts": "how many times a job started training this run",
    "job_id": "the scheduler's job id (Slurm 12_3: array 12, task 3; local: the job's pid)",
    "executor": "local, slurm or debug",
    "host": "the host of the last attempt",
    "status_device": "the device the last attempt trained on (cpu, cuda:0)",
    "started": "when the last attempt started (Unix seconds)",
    "ended": "when the run last ended (Unix seconds); null while it runs",
    "heartbeat": "the last sign of life of a running job (Unix seconds)",
    "updated": "the last write to status.json (Unix seconds)",
    "status_step": "the step status.json last reported",
    "oom_step": "the step at which it ran out of memory",
    "oom_peak_alloc": "bytes the CUDA allocator held at the out-of-memory",
    "error": "the last lines of the error that ended it",
    "note": "why it is in its state (preempted, cancelled by ablate cancel, ...)",
}
_SUMMARY = {
    "params_total": "parameters, counted on the model (a tied or shared tensor once)",
    "params_embedding": "parameters of the token embedding and the LM head",
    "params_non_embedding": "params_total - params_embedding",
    "params_attention": "parameters of the attention matrices (W_q, W_k, W_v, W_o)",
    "ckpt_bytes": "bytes of model.pt, the final weights",
    "peak_alloc": "CUDA allocator's peak bytes allocated after warm-up (null on CPU)",
    "peak_reserved": "CUDA allocator's peak bytes reserved after warm-up (null on CPU)",
    "device_capacity": "the GPU's memory in bytes (null on CPU)",
    "tracked_params": "bytes of parameters at the peak of one tracked training step",
    "tracked_buffers": "bytes of buffers at that peak",
    "tracked_grads": "bytes of gradients at that peak",
    "tracked_optimizer": "bytes of AdamW's state at that peak",
    "tracked_activations": "bytes kept for backward at that peak",
    "tracked_temps": "bytes of backward temporaries at that peak",
    "tracked_other": "other bytes at that peak",
    "tracked_total": "all tensor bytes at the peak of the tracked step",
    "tracked_step": "the step that was tracked",
    "tokens_per_s": "throughput: median tokens/s after warm-up (the summary's once ended, the logs' so far)",
    "mfu_causal": "model FLOP utilization, 6N + causal attention FLOPs, against the device's bf16 peak",
    "mfu_nanogpt": "model FLOP utilization by nanoGPT's formula (6N + 12LdT)",
    "peak_flops": "the device's dense bf16 peak FLOP/s used for MFU",
    "final_val_loss": "the run's final val loss (the last eval's, so far, until it ends: see state)",
    "final_train_loss": "train loss on the eval windows at the final eval (so far, until it ends)",
    "final_eval_step": "the step of that final eval (so far, until it ends)",
    "steps": "optimizer steps trained, over all attempts",
    "tokens": "tokens trained, over all attempts",
    "train_s": "training seconds over all attempts (evals and checkpoints excluded)",
    "wall_s": "wall-clock seconds over all attempts",
    "attn_backend_used": "the attention backend that ran (config's attn_backend is the request)",
    "device_type": "cpu or cuda, where it trained",
    "device_name": "the device's name",
    "world_size": "processes (GPUs) it trained on",
    "torch_version": "torch it trained with",
    "ablate_version": "ablate it trained with",
}
_PROGRESS = {
    "n_evals": "evals logged so far", "n_train": "train steps logged so far",
    "last_step": "the step of the last eval", "last_tokens": "tokens at the last eval",
    "last_elapsed": "training seconds at the last eval", "last_val_loss": "val loss at the last eval",
    "last_val_loss_se": "standard error of that val loss (its eval batches' spread)",
    "last_train_loss": "train loss at the last eval", "max_mem_peak": "the largest peak bytes a metrics line logged",
    "skipped_lines": "log lines skipped: torn, not UTF-8, not JSON, or a step that is not a step",
    "version": "ablate's version when the cell was submitted", "git_sha": "the git commit it was submitted from",
    "has_summary": "whether summary.json was there (the run ended)",
    "config_json": "config.json's config, verbatim", "status_json": "status.json, verbatim",
    "summary_json": "summary.json, verbatim (its keys without a column too)",
    "plugins": "the plugins the run used, name@content id (null: none)",
}
_EVAL = {"step": "optimizer steps so far", "tokens": "tokens trained so far", "elapsed": "training seconds so far",
         "val_loss": "mean loss on the fixed val windows", "val_loss_se": "its standard error (the batches' spread)",
         "train_loss": "mean loss on fixed train windows"}
_TRAIN = {"loss": "mean loss of the step's micro-batches", "lr": "the step's learning rate",
          "step_time": "seconds per step over the logging interval", "tokens_per_s": "tokens/s over that interval",
          "mem_alloc": "CUDA bytes allocated now (null on CPU)", "mem_peak": "CUDA peak bytes since the last reset",
          "mem_reserved": "CUDA bytes reserved now", "mem_peak_reserved": "CUDA peak bytes reserved since the reset"}
_VIEWS = {
    "final_step": "the final eval's step (the last so far)", "final_tokens": "tokens at that eval",
    "final_elapsed": "training seconds at that eval", "final_val_loss_se": "that eval's standard error",
    "finished": "state = 'done'", "n_runs": "runs of the cell", "n_done": "finished runs of the cell",
    "run_ids": "the cell's runs, by seed", "states": "the states among them",
    "mean_val_loss": "mean final val loss over finished seeds", "se_val_loss": "its standard error over seeds",
    "eval_se_val_loss": "mean of the seeds' eval standard errors (the eval sample's own noise)",
    "mean_train_loss": "mean final train loss over finished seeds",
}
_BOOKKEEPING = {"problem": "why the run dir is not trusted", "fingerprint": "(file, mtime, size) of what was read",
                "digest": "a hash of the rows ingest wrote", "ingested_at": "when (Unix seconds)",
                "key": "a setting's name", "value": "its value"}

COLUMNS = {**_COMMON, **_STATUS, **_SUMMARY, **_PROGRESS, **_VIEWS, **_BOOKKEEPING}
assert set(_EVAL) == set(EVAL_FIELDS) and set(_TRAIN) | {"step", "tokens"} == set(METRIC_FIELDS)


REPORT_TABLES = ("speedup", "paired", "effects", "scaling")


def column_doc(table: str, column: str) -> str:
    """One line saying what `column` of `table` holds."""
    if table in ("evals", "train") and column in (_EVAL if table == "evals" else {**_EVAL, **_TRAIN}):
        return (_EVAL if table == "evals" else {**_EVAL, **_TRAIN})[column]
    if column in COLUMNS:
        return COLUMNS[column]
    if column in FIELDS:
        return "config: " + FIELDS[column].metadata.get("doc", "")
    if table in REPORT_TABLES:
        return "a column of the report's table (README: The report)"
    if table in ("runs", "final", "cells"):
        return "a plugin's key (config_json's plugins holds its declaration)"
    return ""


def describe(con) -> list[tuple[str, str, str, str]]:
    """(table or view, column, SQL type, meaning) for everything in the store behind `con`."""
    rows = con.execute("select table_name, column_name, data_type from information_schema.columns "
                       "order by table_name, ordinal_position").fetchall()
    return [(t, c, typ, column_doc(t, c)) for t, c, typ in rows]


def schema_text(con) -> str:
    """`ablate query --schema`: each table with its meaning, then its columns: name, type, meaning."""
    out, current = [], None
    for table, column, typ, doc in describe(con):
        if table != current:
            out += ["", f"{table}: {TABLES.get(table, '')}".rstrip(": ")]
            current = table
        out.append(f"  {column:<24} {typ:<10} {doc}")
    return "\n".join(out).strip() + "\n"
