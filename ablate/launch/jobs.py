"""The one thing every job runs: `train(run_dir)`, wrapped so that submitit can requeue it.

Preemption and time limits, step by step (Slurm sends SIGUSR2 `signal_delay_s` before the limit):
  1. submitit installed its handler for SIGUSR2 (checkpoint_and_try_requeue) before calling us;
  2. the trainer's StopFlag (ablate.train.signals) replaces it with a flag for the length of
     train(), remembering the old handler;
  3. at the next step boundary the trainer saves ckpt.pt, writes status "pending" (note
     "preempted") and calls the remembered handler (`StopFlag.chain_previous`);
  4. submitit's handler calls CellJob.checkpoint() below, pickles what it returns and runs
     `scontrol requeue` (up to max_requeue time-outs; preemptions are not counted), then exits;
  5. the requeued job unpickles a CellJob that holds nothing but the run dir, and train()
     resumes from run_dir/ckpt.pt. Nothing about the model is ever baked into the pickle.
A SIGTERM (scancel, `ablate cancel`, a local stop) also saves, but is not requeued.
"""
from __future__ import annotations

import os
import socket
import sys

import submitit

from ablate.train.signals import StopFlag

THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


class CellJob(submitit.helpers.Checkpointable):
    """`ablate train RUN_DIR` as a picklable callable: run_dir, the CPU threads it may use, and the
    attempt id `ablate submit` gave it (the trainer writes state only while the run is that
    attempt's; a requeued job is the same attempt)."""

    def __init__(self, run_dir: str, threads: int | None = None, attempt: str | None = None):
        self.run_dir = str(run_dir)
        self.threads = threads
        self.attempt = attempt

    def __call__(self) -> str:
        # first of all: a stop signal (`ablate cancel`, preemption) from now on is the trainer's to
        # honour, not submitit's to bypass while torch imports for seconds
        with StopFlag() as stop:
            if self.threads:  # before torch is imported: concurrent jobs must not oversubscribe the cores
                for var in THREAD_VARS:
                    os.environ[var] = str(self.threads)
            task, tasks = os.environ.get("SLURM_PROCID"), os.environ.get("SLURM_NTASKS", "1")
            where = f" (node {os.environ.get('SLURMD_NODENAME', '?')}, task {task} of {tasks})" \
                if task is not None and tasks != "1" else ""  # which task of a multi-task job, on which Slurm node
            print(f"[ablate] {self.run_dir} on {socket.gethostname()}{where}: CUDA_VISIBLE_DEVICES="
                  f"{os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}, threads {self.threads or 'default'}",
                  file=sys.stderr, flush=True)
            from ablate.train.job import train  # torch: imported in the job, never by the command that submits it

            if self.threads:
                import torch  # loaded by the trainer import just above: no cost here

                torch.set_num_threads(self.threads)
            return train(self.run_dir, getattr(self, "attempt", None), stop)  # getattr: pickles from before attempts

    def checkpoint(self, *args, **kwargs) -> submitit.helpers.DelayedSubmission:
        # The trainer has already saved ckpt.pt (it calls submitit's handler after saving);
        # requeue a fresh job for the same run dir, which resumes from that checkpoint.
        return submitit.helpers.DelayedSubmission(CellJob(self.run_dir, self.threads, getattr(self, "attempt", None)))

    def __repr__(self) -> str:
        return f"CellJob({self.run_dir!r})"
