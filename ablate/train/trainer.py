"""The training loop every grid cell runs: `Trainer(run_dir, cfg, ...)`, then `.fit()`.

    config.json -> data (prepared once) -> model + AdamW -> [resume from ckpt.pt] -> loop -> summary

The loop, per optimizer step: grad_accum micro-batches (split over DDP ranks), clip, AdamW
step, nGPT's post-step normalize_(); then, as due, a metrics line, an eval, a checkpoint.
A step's records are written before its checkpoint, so resuming from step s keeps every
record with step <= s and drops the rest: curves are unbroken and never duplicated.
Only rank 0 writes files. One attempt at a run dir (claiming it, the outcomes, exit codes) is
ablate/train/job.py's `train(run_dir)`. Nothing happens at import time.
"""
from __future__ import annotations

import contextlib
import functools
import math
import random
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch.nn.parallel import DistributedDataParallel as DDP

from ablate.core import rundir
from ablate.core.config import RunConfig, resolve
from ablate.core.errors import AblateError
from ablate.data import corpora, prepare
from ablate.data.batches import Batches
from ablate.train import checkpoint, devices, distributed, memtrack, sharding, summary
from ablate.train.build import model_for
from ablate.train.distributed import Dist
from ablate.train.optim import build_optimizer, lr_at
from ablate.train.signals import Preempted, StopFlag
from ablate.train.step import optimizer_step

HEARTBEAT_S = 60.0  # status.json heartbeat at least this often, whatever log_interval is
CANCEL_POLL_S = 2.0  # how often rank 0 reads status.json for a cancel whose signal never came


def _finite(x: float) -> float | None:
    return x if math.isfinite(x) else None


class Trainer:
    """One attempt at one run: built from the run dir, resumed from ckpt.pt when there is one."""

    def __init__(self, run_dir: Path, cfg: RunConfig, doc: dict, d: Dist, stop: StopFlag, owner: dict | None = None):
        self.run_dir, self.doc, self.d, self.stop, self.owner = run_dir, doc, d, stop, owner
        if cfg.data_id is not None and corpora.data_id(cfg.dataset) != cfg.data_id:  # before any work on it
            self._data_changed(cfg, corpora.data_id(cfg.dataset))
        data_path = prepare.prepare(cfg.dataset, cfg.tokenizer)  # a file lock makes ranks / cells wait
        self.prepared = prepared = rundir.read_json(data_path / "meta.json") or {}
        if cfg.data_id is not None and prepared.get("data_id") != cfg.data_id:
            self._data_changed(cfg, prepared.get("data_id"))
        self.cfg = cfg = resolve(cfg, corpora.vocab_size(cfg.dataset, cfg.tokenizer))
        if cfg.grad_accum % d.world_size:
            raise AblateError(f"key 'grad_accum': {cfg.grad_accum} is not divisible by the {d.world_size} processes")
        self.micro = cfg.grad_accum // d.world_size
        if d.device.type == "cuda":
            torch.set_float32_matmul_precision("high")

        random.seed(cfg.seed)
        np.random.seed(cfg.seed)
        torch.manual_seed(cfg.seed)  # the init is a function of the seed alone
        # plugins: their code as the run dir keeps it, checked against the cell's content ids
        self.raw = model_for(cfg, d.device.type, run_dir).to(d.device)
        if d.sharded:  # fsdp: parameters become shards before AdamW sees them (its state is sharded with them)
            sharding.shard_model(self.raw, cfg)
        self.optimizer = build_optimizer(self.raw, cfg, d.device)
        self.raw.normalize_()
        self.step, self.train_s, self.wall_s, self.attempt_starts = 0, 0.0, 0.0, []
        self.earlier_peaks: dict = {}  # steady-state peaks of earlier attempts (from the checkpoint)
        self._peaks_reset = False  # this attempt has passed its warm-up and reset the peak counters
        self.tracked: dict | None = None  # tensor memory of one tracked step (memtrack), kept across attempts
        self._resume()
        self.attempt_starts.append(self.step)
        # the last warm-up step (AdamW's state exists by then; its time is outside the median tokens/s).
        # Not compiled runs: under MemTracker's dispatch mode dynamo runs the step eagerly, and
        # eager's tensors are not what the compiled step holds
        self.track_step = None if cfg.compile else min(self.step + devices.WARMUP_STEPS, cfg.max_iters)
        self.lr = lr_at(self.step, cfg)

        self.fwd = torch.compile(self.raw) if cfg.compile else self.raw
        self.model = self.fwd
        if d.enabled and not d.sharded:
            self.model = DDP(self.fwd, device_ids=[d.local_rank] if d.device.type == "cuda" else None)
        self.batches = Batches(corpora.split_files(cfg.dataset, cfg.tokenizer, data_path, prepared), cfg.context,
                               cfg.batch_size, cfg.seed, d.device)
        self.autocast = (lambda: torch.autocast(d.device.type, dtype=torch.bfloat16)) if cfg.dtype == "bf16" \
            else contextlib.nullcontext

    @staticmethod
    def _data_changed(cfg: RunConfig, now: str | None) -> None:
        raise AblateError(f"dataset '{cfg.dataset}' changed since this cell was planned (its content id is now "
                          f"{now}, the cell's data_id is {cfg.data_id}): it is a new cell now; submit the grid again")

    # ---- resume / checkpoint
    def _resume(self) -> None:
        ckpt = self.run_dir / rundir.CKPT
        saved = checkpoint.read_checkpoint(ckpt) if ckpt.exists() else {}
        if saved:
            if saved.get("run_id") not in (None, self.cfg.run_id()):
                raise AblateError(f"{ckpt} belongs to another config (run_id {saved['run_id']}, this one is "
                                  f"{self.cfg.run_id()}): delete it to start over")
            state = checkpoint.restore(saved, self.raw, self.optimizer, self.run_dir)
            self.step, self.train_s, self.wall_s = state["step"], state["train_s"], state["wall_s"]
            self.attempt_starts = list(state["attempt_starts"])
            self.earlier_peaks = state.get("steady_peaks") or {}
            self.tracked = state.get("tracked_memory")
        if self.d.is_main:
            checkpoint.remove_stale_temps(self.run_dir)
            checkpoint.remove_stale_shards(self.run_dir, keep=saved.get("sharded"))
            for name in (rundir.METRICS, rundir.EVALS):  # without a checkpoint: start both logs over
                rundir.truncate_jsonl_after(self.run_dir / name, "step", self.step if ckpt.exists() else -1)
            if ckpt.exists():
                self.log(f"resumed from {ckpt} at step {self.step}")

    def save(self) -> None:
        t0 = self._sync_time()
        extra = dict(data_position={"step": self.step, "sampler": "random-offset, pure function of (seed, step, micro)"},
                     train_s=self._train_s(), wall_s=self._wall_s(), attempt_starts=self.attempt_starts,
                     steady_peaks=self._steady_peaks(), tracked_memory=self.tracked, run_id=self.cfg.run_id())
        if self.d.sharded:  # every rank writes its shards; the tag is new for every save of every attempt
            tag = f"step{self.step:09d}-attempt{len(self.attempt_starts)}"
            checkpoint.save_sharded(self.run_dir, self.raw, self.optimizer, self.step, tag, self.d.is_main, **extra)
        elif self.d.is_main:
            checkpoint.save_checkpoint(self.run_dir / rundir.CKPT, self.raw, self.optimizer, self.step, **extra)
        if self.d.is_main:
            self.status(ckpt_step=self.step, wall_s=self._wall_s())  # where a resume would start, for `ablate status`
        if self.d.enabled:
            torch.distributed.barrier()
        self._excluded += time.perf_counter() - t0

    def _steady_peaks(self) -> dict:
        """Peak memory after warm-up over every attempt so far: start-up allocations (compile,
        loading a checkpoint) are not what a cell needs to train."""
        return devices.max_peaks(self.earlier_peaks, devices.peaks(self.d.device) if self._peaks_reset else None)

    # ---- clocks: training seconds exclude evals and checkpoints
    def _sync_time(self) -> float:
        if self.d.device.type == "cuda":
            torch.cuda.synchronize(self.d.device)
        return time.perf_counter()

    def _train_s(self) -> float:
        return self.train_s + (time.perf_counter() - self._t_start) - self._excluded

    def _wall_s(self) -> float:
        return self.wall_s + (time.perf_counter() - self._t_start)

    # ---- one optimizer step
    def train_step(self) -> torch.Tensor:
        lr = lr_at(self.step, self.cfg)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        first = self.d.rank * self.micro
        batch = lambda i: self.batches.train(self.step, first + i)  # noqa: E731
        step = functools.partial(optimizer_step, self.model, self.raw, self.optimizer, micro=self.micro,
                                 autocast=self.autocast, grad_clip=self.cfg.grad_clip, ddp=isinstance(self.model, DDP))
        if self.step + 1 == self.track_step:  # one steady-state step, tensor by tensor
            with memtrack.StepTracker(self.raw, self.optimizer) as tracker:
                loss = step(batch=tracker.each_micro_batch(batch))
            self.tracked = {"step": self.track_step, **tracker.peak()}
        else:
            loss = step(batch=batch)
        self.step += 1
        self.lr = lr
        return loss

    def _mean(self, t: torch.Tensor) -> float:
        return distributed.all_reduce(t.clone(), self.d).item() / self.d.world_size

    @torch.no_grad()
    def evaluate(self) -> dict:
        t0 = self._sync_time()
        self.fwd.eval()
        out, n = {}, self.cfg.eval_iters
        for split in ("val", "train"):
            losses = torch.zeros(n, device=self.d.device)  # one entry per batch; each rank fills its own
            # fixed batches, split over ranks; fsdp: every rank runs as many forwards (each one gathers
            # weights with the others), the last rounds' spare ones on a repeat of the last batch
            world = self.d.world_size
            rounds = -(-n // world) if self.d.sharded else len(range(self.d.rank, n, world))
            for i in (self.d.rank + r * world for r in range(rounds)):
                x, y = self.batches.eval(split, min(i, n - 1))
                with self.autocast():
                    _, loss = self.fwd(x, y)
                if i < n:
                    losses[i] = loss.float()
            out[split] = distributed.all_reduce(losses, self.d).tolist()
        self.fwd.train()
        self._excluded += self._sync_time() - t0
        val, train = statistics.fmean(out["val"]), statistics.fmean(out["train"])
        # standard error of the val estimate: the spread of its batches (random windows) over sqrt(n)
        se = statistics.stdev(out["val"]) / math.sqrt(n) if n > 1 and math.isfinite(val) else None
        rec = {"step": self.step, "tokens": self.step * self.cfg.tokens_per_step, "elapsed": self._train_s(),
               "val_loss": _finite(val), "val_loss_se": se, "train_loss": _finite(train)}
        if self.d.is_main:
            rundir.append_jsonl(self.run_dir / rundir.EVALS, rec)
            self.log(f"eval step {self.step}: val {val:.4f} ± {math.nan if se is None else se:.4f} train {train:.4f}")
        return rec

    def log_metrics(self, loss: float) -> None:
        now = self._sync_time()
        steps = self.step - self._last_step
        seconds = max(1e-9, now - self._last_t - (self._excluded - self._last_excluded))
        self._last_step, self._last_t, self._last_excluded = self.step, now, self._excluded
        tps = steps * self.cfg.tokens_per_step / seconds
        rec = {"step": self.step, "tokens": self.step * self.cfg.tokens_per_step, "loss": _finite(loss), "lr": self.lr,
               "step_time": seconds / steps, "tokens_per_s": tps, **devices.current(self.d.device)}
        if self.d.is_main:
            rundir.append_jsonl(self.run_dir / rundir.METRICS, rec)
            self._beat()
            self.log(f"step {self.step}/{self.cfg.max_iters} loss {loss:.4f} lr {self.lr:.2e} {tps:,.0f} tok/s "
                     f"{1000 * seconds / steps:.1f} ms/step")

    def _beat(self) -> None:
        self._last_beat = time.time()
        self.status(heartbeat=self._last_beat, step=self.step, wall_s=self._wall_s())  # wall_s: over every attempt

    def status(self, **fields) -> None:
        """Write status.json while this trainer's attempt still owns the run; else stop."""
        if rundir.update_status(self.run_dir, expect=self.owner, **fields) is None:
            raise rundir.Superseded(f"{self.run_dir}: status.json now names another attempt than this trainer's "
                                    f"({(self.owner or {}).get('attempt_id')}): stopping without writing")

    def log(self, msg: str) -> None:
        if self.d.is_main:
            print(f"[{self.doc.get('run_id') or self.run_dir.name}] {msg}", file=sys.stderr, flush=True)

    def _diverged(self, loss: float | None) -> bool:
        return loss is None or not math.isfinite(loss) or loss > self.cfg.diverge_loss

    def stop_requested(self) -> bool:
        """Whether any rank was asked to stop (a signal, or `ablate cancel` marked the run): all
        ranks stop at the same step. Tests replace it to stop a run at a chosen step."""
        return distributed.any_rank(self.stop.signum is not None or self._cancel_marked(), self.d)

    def _cancel_marked(self) -> bool:
        """status.json says cancelled (read at most every CANCEL_POLL_S, by rank 0): a cancel is a
        cancel even when its SIGTERM arrived before the trainer's handler and was lost."""
        now = time.monotonic()
        if not self.d.is_main or now - self._cancel_checked < CANCEL_POLL_S:
            return False
        self._cancel_checked = now
        return rundir.read_status(self.run_dir).get("state") == "cancelled"

    # ---- the loop
    def fit(self) -> str:
        cfg = self.cfg
        self._t_start = self._last_t = time.perf_counter()
        self._excluded = self._last_excluded = 0.0
        self._last_step, self._last_beat = self.step, time.time()
        self._cancel_checked = -math.inf
        if self.stop_requested():  # stopped while starting (compiling, loading): nothing new to save
            self.preempt()
        if self.step == 0 and self._diverged(self.evaluate()["val_loss"]):
            return self.finish("diverged", f"val loss {self._last_eval_text()} at init")
        while self.step < cfg.max_iters:
            loss = self.train_step()
            last = self.step == cfg.max_iters
            if self.step == self.attempt_starts[-1] + devices.WARMUP_STEPS:
                devices.reset_peaks(self.d.device)
                self._peaks_reset = True
            if self.step % cfg.log_interval == 0 or last:
                value = self._mean(loss)
                self.log_metrics(value)
                if self._diverged(value):
                    return self.finish("diverged", f"train loss {value} at step {self.step} (limit {cfg.diverge_loss})")
            if self.step % cfg.eval_interval == 0 or last:
                rec = self.evaluate()
                if self._diverged(rec["val_loss"]):
                    return self.finish("diverged", f"val loss {rec['val_loss']} at step {self.step}")
            if self.d.is_main and time.time() - self._last_beat > HEARTBEAT_S:  # slow steps, rare logs
                self._beat()
            if self.stop_requested() and not last:
                self.save()
                self.preempt()
            if (cfg.ckpt_interval and self.step % cfg.ckpt_interval == 0) or last:
                self.save()
        return self.finish("done")

    def _last_eval_text(self) -> str:
        evals = rundir.read_jsonl(self.run_dir / rundir.EVALS)
        return str(evals[-1]["val_loss"]) if evals else "?"

    def preempt(self) -> None:
        signum = self.stop.signum or 15
        state = "pending"
        if self.d.is_main:
            if rundir.read_status(self.run_dir).get("state") == "cancelled":  # `ablate cancel` sent the signal
                state = "cancelled"
            self.status(state=state, note="preempted" if state == "pending" else "cancelled",
                        ckpt_step=self.step, ended=time.time() if state == "cancelled" else None)
        self.log(f"signal {signum}: checkpoint saved at step {self.step}, state {state}")
        self.stop.chain_previous()  # submitit's checkpoint-and-requeue handler, when there is one
        raise Preempted(self.step, signum, state)

    def _finish_peaks(self) -> dict:
        steady = self._steady_peaks()
        # a run too short to pass its warm-up: the whole-run peak is the only figure there is
        return steady if any(v is not None for v in steady.values()) else devices.peaks(self.d.device)

    def close(self) -> None:
        """Drop the DDP wrapper (and with it the Reducer, which holds the process group from C++)
        before the group is destroyed: see distributed.teardown."""
        self.model = None

    def finish(self, state: str, error: str | None = None) -> str:
        ckpt_bytes = None
        # fsdp: the shards gathered into one state_dict on rank 0 (every rank takes part)
        weights = sharding.full_weights(self.raw) if self.d.sharded and state == "done" else self.raw
        if self.d.is_main:
            self.status()  # still ours? (the results below are this attempt's to write)
            if state == "done":
                ckpt_bytes = checkpoint.save_weights(self.run_dir / "model.pt", weights)
            rec = summary.build(self.cfg, self.doc, state, self.raw, self.run_dir, self.d, steps=self.step,
                                train_s=self._train_s(), wall_s=self._wall_s(), attempt_starts=self.attempt_starts,
                                ckpt_bytes=ckpt_bytes, peaks=self._finish_peaks(),
                                tracked=self.tracked, data=self.batches.sizes())
            rundir.write_json_atomic(self.run_dir / rundir.SUMMARY, rec)
            self.status(state=state, ended=time.time(), step=self.step, error=error, wall_s=self._wall_s())
            if state == "done" and not self.cfg.keep_ckpt:  # model.pt has the weights: AdamW's state is 2/3 of the bytes
                (self.run_dir / rundir.CKPT).unlink(missing_ok=True)
                checkpoint.remove_stale_shards(self.run_dir)  # fsdp: the shards it named
            self.log(f"{state} at step {self.step}" + (f": {error}" if error else ""))
        return state
