"""Preemption: a signal only sets a flag; the loop checkpoints at the next step boundary.

SIGUSR1 / SIGUSR2 (Slurm's --signal, submitit's preemption/timeout signal) and SIGTERM
(scancel, preemption, time limit, `ablate cancel` on a local job) all mean "save and stop".
Doing the work in the handler would interrupt a half-finished optimizer step; setting a flag
keeps the checkpoint consistent. After saving, the trainer writes status "pending" (note
"preempted": the cell is not done and will resume from ckpt.pt when run again) and raises
`Preempted`; `python -m ablate.train` turns that into exit code EXIT_PREEMPTED (75, EX_TEMPFAIL).

Under submitit, the handler that submitit had installed for the signal (checkpoint + requeue)
is called after the save, so submitit's requeue keeps working: `chain_previous`.
"""
from __future__ import annotations

import signal
import threading

SIGNALS = (signal.SIGUSR1, signal.SIGUSR2, signal.SIGTERM)
EXIT_PREEMPTED = 75


class Preempted(Exception):
    """Raised by train() after a signal: ckpt.pt holds `step`, status.json says pending/preempted
    (or cancelled, when `ablate cancel` marked the run while it was stopping)."""

    def __init__(self, step: int, signum: int, state: str = "pending", why: str | None = None):
        self.step, self.signum, self.state = step, signum, state
        why = why or f"stopped by {signal.Signals(signum).name}"
        super().__init__(f"{why} at step {step}: checkpoint saved, state {state}")


class Cancelled(Preempted):
    """Raised by train() for a job whose cell was cancelled before it could start training (the
    signal may have come before any handler of ours was installed): nothing is trained."""

    def __init__(self, step: int):
        super().__init__(step, signal.SIGTERM, "cancelled", why="cancelled before training started")


class StopFlag:
    """Context manager that installs flag-setting handlers and restores the previous ones."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict = {}

    def _handler(self, signum, frame):
        self.signum = signum

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is threading.main_thread():  # signal.signal only works there
            for s in SIGNALS:
                self._previous[s] = signal.signal(s, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        self.restore()

    def restore(self) -> None:
        for s, h in self._previous.items():
            signal.signal(s, h if h is not None else signal.SIG_DFL)
        self._previous = {}

    def chain_previous(self) -> None:
        """Restore the old handlers and call the one for the received signal, if it is Python code
        (submitit's checkpoint-and-requeue; it may exit the process)."""
        previous = dict(self._previous)
        self.restore()
        h = previous.get(self.signum)
        if callable(h):
            h(self.signum, None)
