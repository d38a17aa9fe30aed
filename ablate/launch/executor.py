"""One interface for every way a cell can run, as submitit has one Executor for Slurm, local and
debug jobs. The name a user picks (`--executor`) or a status.json records is looked up once, in
executors.py; everything else asks the executor it got:

    check()                      can it run here at all (sbatch on PATH...): one line if not
    for_submit(grid, ...)        an instance set up for one submit (local slots, array parallelism)
    dispatch(grid, cells, ...)   start the cells (their run dirs are written); a LocalRunner or None
    after_dispatch(wait, detach) what submit does next: "watch" (progress until done), "ran" (the
                                 cells already ran here) or "return"
    views(statuses)              the scheduler's word on each cell's job (a JobView, or None)
    cancel(jobs, grace_s, echo)  stop the jobs of cells already marked cancelled
    unstarted                    the state of a cell whose job ended before it started it

Implementations: SlurmExecutor (slurm.py), LocalExecutor and DebugExecutor (local.py).
"""
from __future__ import annotations

from dataclasses import dataclass

# JobView states that are ablate's own words about a job, not a scheduler's state
OWN_STATES = ("ALIVE", "GONE", "WAITING", "ENDED", "OTHER HOST")


@dataclass(frozen=True)
class JobView:
    """The scheduler's word on one job. active None: the scheduler could not be asked."""
    job_id: str
    state: str                    # Slurm state (RUNNING, TIMEOUT...), or one of OWN_STATES
    active: bool | None
    reason: str = ""              # squeue's pending reason (Resources, JobHeldUser, BeginTime...)


class Executor:
    """The contract (see the module docstring); the defaults are those of an executor that keeps
    no jobs of its own to ask about or stop."""
    name = ""
    unstarted = "failed"  # a queued cell whose job ended before starting it: the job's failure

    def check(self) -> None:
        """Raise AblateError when this executor cannot run on this machine."""

    @classmethod
    def for_submit(cls, grid, *, jobs: int | None = None, gpus: str | None = None,
                   array_parallelism: int | None = None, echo=print) -> "Executor":
        """An instance set up for submitting `grid`'s cells; options it has no use for are ignored."""
        return cls()

    def dispatch(self, grid, cells, folder, echo=print):
        """Start `cells` (their config.json written), recording each one's job in its status.json.
        Returns a LocalRunner when a local process now owns the cells, else None."""
        raise NotImplementedError

    def after_dispatch(self, wait: bool, detach: bool) -> str:
        return "watch" if wait else "return"

    def views(self, statuses: list[dict]) -> list[JobView | None]:
        """A JobView (or None: nothing to ask) for each status.json that names this executor."""
        return [None] * len(statuses)

    def cancel(self, jobs: list[tuple[str, dict]], grace_s: float, echo=print) -> list[str]:
        """Stop the jobs of (run_id, status) pairs, already marked cancelled; lines to show."""
        return []
