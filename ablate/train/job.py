"""One attempt at a run dir, what every job runs: `train(run_dir)`, and its command line
`python -m ablate.train RUN_DIR` (`main`).

Outcomes (status.json "state", and what train() does):
  done      trained max_iters steps; summary.json, model.pt, final ckpt.pt written; returns "done"
  diverged  logged or eval loss NaN/inf or > diverge_loss: stops, keeps logs; returns "diverged"
  oom       CUDA out of memory: records the step and memory; returns "oom"
  failed    any other exception: the traceback's last lines in "error"; re-raises
  pending   a signal (SIGUSR1/SIGUSR2/SIGTERM): checkpoint saved, note "preempted"; raises Preempted
  cancelled as pending, when `ablate cancel` had marked the run meanwhile (signal or not: the
            trainer also reads status.json every few seconds); raises Preempted. A job whose cell
            was cancelled before it claimed the run trains nothing (Cancelled, a Preempted)
`python -m ablate.train RUN_DIR` maps these to exit codes 0 / 0 / 0 / 1 / 75 / 75.

One trainer per run dir: rank 0 holds rundir.train_lock for the whole attempt (a second trainer
exits 2 naming the holder's pid and host). Every status write names the attempt this trainer
runs for (the job's, from `ablate submit`; one of its own when started by hand) and is
compare-and-set: once status.json names another attempt, this trainer writes nothing more and
stops (rundir.Superseded, exit 2).
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from pathlib import Path

import torch

from ablate.core import rundir
from ablate.core.errors import AblateError
from ablate.train import devices, distributed, summary
from ablate.train.distributed import Dist
from ablate.train.signals import EXIT_PREEMPTED, Cancelled, Preempted, StopFlag
from ablate.train.trainer import Trainer

__all__ = ["train", "main", "Preempted", "EXIT_PREEMPTED"]


def _error_text(e: BaseException, lines: int = 15) -> str:
    tail = "".join(traceback.format_exception(e)).rstrip().splitlines()[-lines:]
    return "\n".join(tail)[-3000:]


def _claim(run_dir: Path, d: Dist | None, attempt: str | None) -> dict:
    """Mark the run running for `attempt` (the job's; None: a trainer started by hand takes a new
    one). Returns the `expect` that every later status write of this trainer passes."""
    prev = rundir.read_status(run_dir)
    now = time.time()
    fields = dict(state="running", attempts=int(prev.get("attempts") or 0) + 1, started=now, heartbeat=now, ended=None,
                  error=None, note=None, **summary.job_fields())
    if d is not None:
        fields.update(device=str(d.device), device_name=devices.device_name(d.device), world_size=d.world_size)
    if attempt is not None and prev.get("attempt_id") == attempt and prev.get("state") == "cancelled":
        raise Cancelled(int(prev.get("ckpt_step") or 0))  # `ablate cancel` came first, maybe before our handler
    expect = {"attempt_id": attempt, "state": prev.get("state")} if attempt is not None else None
    attempt = attempt or rundir.new_attempt()
    if rundir.update_status(run_dir, expect=expect, attempt_id=attempt, **fields) is None:
        now = rundir.read_status(run_dir)
        if now.get("attempt_id") == attempt and now.get("state") == "cancelled":  # cancelled as we claimed
            raise Cancelled(int(now.get("ckpt_step") or 0))
        raise rundir.Superseded(f"{run_dir}: this job is attempt {attempt}, but status.json names attempt "
                                f"{rundir.read_status(run_dir).get('attempt_id')}: a newer submission owns the run; "
                                "not training")
    return {"attempt_id": attempt}


def _finished(run_dir: Path) -> bool:
    """The run is done and kept only its weights (no ckpt.pt to resume from)."""
    summary = rundir.read_json(run_dir / rundir.SUMMARY) or {}
    return summary.get("state") == "done" and (run_dir / "model.pt").exists() and not (run_dir / rundir.CKPT).exists()


def train(run_dir, attempt: str | None = None, stop: StopFlag | None = None) -> str:
    """Train (or resume) the run in run_dir; returns the final state. See the module docstring.
    attempt: the attempt id `ablate submit` gave this job (None when started by hand); stop: a
    StopFlag the job installed before anything slow (None: train installs its own)."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise AblateError(f"run dir {run_dir} does not exist")
    is_main = distributed.env_rank() == 0
    d, trainer = None, None
    owner = {"attempt_id": attempt} if attempt is not None else None  # whose state we may write

    def status(**fields):
        if is_main:
            rundir.update_status(run_dir, expect=owner, **fields)

    flag = contextlib.nullcontext(stop) if stop is not None else StopFlag()
    with rundir.train_lock(run_dir) if is_main else contextlib.nullcontext(), flag as stop:
        try:
            cfg, doc = rundir.read_config(run_dir)
            if _finished(run_dir):  # done and its checkpoint let go: nothing to train (a new start would retrain)
                return "done"
            d = distributed.setup(cfg.device, cfg.strategy, stop)
            if is_main:
                owner = _claim(run_dir, d, attempt)
            trainer = Trainer(run_dir, cfg, doc, d, stop, owner)
            return trainer.fit()
        except (Preempted, rundir.Superseded):
            raise
        except torch.OutOfMemoryError as e:  # a result (this config does not fit), not a failure
            step = trainer.step if trainer is not None else 0
            err = f"out of memory at step {step}: {str(e).splitlines()[0][:300]}"
            status(oom_step=step, oom_peak_alloc=devices.peaks(d.device)["peak_alloc"],
                   oom_capacity=devices.capacity(d.device))
            if trainer is None or not hasattr(trainer, "_t_start"):  # while building: no summary to write
                status(state="oom", ended=time.time(), error=err)
                return "oom"
            trainer.optimizer.zero_grad(set_to_none=True)
            return trainer.finish("oom", err)
        except KeyboardInterrupt:
            status(state="cancelled", ended=time.time(), error="KeyboardInterrupt")
            raise
        except Exception as e:
            status(state="failed", ended=time.time(), error=_error_text(e))
            raise
        finally:
            if trainer is not None:
                trainer.close()  # first: see distributed.teardown
            distributed.teardown(d)


def main(argv=None) -> int:
    """`python -m ablate.train RUN_DIR`: exit 0 done/diverged/oom, 75 preempted, 2 config error, 1 failure."""
    p = argparse.ArgumentParser(prog="python -m ablate.train", description="train (or resume) one run dir")
    p.add_argument("run_dir")
    args = p.parse_args(argv)
    try:
        state = train(args.run_dir)
    except Preempted as e:
        print(f"ablate train: {e}", file=sys.stderr)
        return EXIT_PREEMPTED
    except AblateError as e:
        print(f"ablate train: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception:
        traceback.print_exc()
        return 1
    print(f"ablate train: {state}", file=sys.stderr)
    return 0
