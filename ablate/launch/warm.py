"""Warm jobs: the local runner imports torch once and forks each single-process cell from itself.

A fresh submitit job spends ~10 CPU-seconds before its first step importing torch and, at its
optimizer's first construction, torch._dynamo (torch.optim imports it lazily): on the quickstart's
smallest cells about as long as the training itself. The runner imports them once (warm_up) and
forks a child per cell. The child is a fresh process in everything a cell can touch: its own
address space, its own CUDA_VISIBLE_DEVICES and thread count, set before it initializes CUDA or
runs an op; a crash, an OOM kill or a hang ends only it, and the next cell is forked from the
runner, not from it. The runner never runs a torch op or initializes CUDA, which is what makes
forking safe (torch's DataLoader forks its workers the same way). Slots with several GPUs (a
process per GPU) keep submitit's LocalExecutor, as does every cell with ABLATE_WARM=0.

    job = ForkedJob(folder, CellJob(run_dir, threads, attempt), gpus=(), close=[...])
    job.job_id        # the child's pid: status.json's job_id, what `ablate cancel` signals
    job.done()        # reaped?      job.exception(): why it failed, as finish() asks submitit's
"""
from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from types import SimpleNamespace


def enabled() -> bool:
    return os.environ.get("ABLATE_WARM", "1") != "0"


def warm_up() -> None:
    """Import what every job imports, so that forked children start with it."""
    import torch  # the runner is the one launch process that holds torch: to fork cells from

    import ablate.train.job  # noqa: F401  same reason: everything a job imports

    # torch.optim imports torch._dynamo at the first optimizer (~6 CPU-s): torch.compiler.disable
    # is the public call that loads it, and it runs no op
    torch.compiler.disable(warm_up)


class ForkedJob:
    """One cell in a child forked from this (warm) process; submitit's LocalJob's face that the
    runner uses: job_id, paths.stdout / paths.stderr, done(), exception()."""

    def __init__(self, folder: Path, job, gpus: tuple = (), close: list[int] = ()):
        folder.mkdir(parents=True, exist_ok=True)
        self._status: int | None = None
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        self.pid = pid or os.getpid()
        self.job_id = str(self.pid)
        stem = folder / f"{self.pid}_0"  # submitit's names: <job id>_<task>_log.out
        self.paths = SimpleNamespace(stdout=Path(f"{stem}_log.out"), stderr=Path(f"{stem}_log.err"))
        self._error = Path(f"{stem}_error.txt")
        if pid == 0:
            _child(job, gpus, self.paths, self._error, close)  # never returns

    def done(self) -> bool:
        if self._status is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self._status = status
        return self._status is not None

    def exit_code(self) -> int | None:
        """The child's exit code; -N when a signal N ended it; None while it runs."""
        return os.waitstatus_to_exitcode(self._status) if self.done() else None

    def exception(self) -> Exception | None:
        """Why the child failed (its traceback, or the signal that ended it); None if it exited 0."""
        code = self.exit_code()
        if not code:
            return None
        if code < 0:
            name = signal.Signals(-code).name
            return RuntimeError(f"the job's process was ended by {name}"
                                + (" (the kernel's out-of-memory killer sends it too)" if name == "SIGKILL" else ""))
        text = self._error.read_text(errors="replace").strip() if self._error.exists() else ""
        return RuntimeError(text or f"the job's process exited with code {code}")


def _child(job, gpus: tuple, paths, error_file: Path, close: list[int]) -> None:
    """The forked cell: its own signals, output files, GPUs and locks, then the job; exits."""
    code = 1
    try:
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(sig, signal.SIG_DFL)  # the runner's handlers are not the cell's (CellJob sets its own)
        for fd in close:  # other jobs' slot locks: a copy held here would keep their slots taken after they end
            try:
                os.close(fd)
            except OSError:
                pass
        for fd, path in ((1, paths.stdout), (2, paths.stderr)):
            out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(out, fd)
            os.close(out)
        os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(str(g) for g in gpus)  # as submitit's LocalExecutor sets it
        job()
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    except BaseException:
        text = traceback.format_exc()
        try:
            error_file.write_text(text)
            print(text, file=sys.stderr)
        except BaseException:
            pass
    finally:
        try:
            sys.stdout.flush()
            sys.stderr.flush()
        finally:
            os._exit(code)  # never the runner's exit path: its handlers and atexit are not the cell's
