"""The one place where an executor's name picks an executor: `--executor NAME`, the default for
this machine, and the `executor` a status.json records.

    executor("slurm")              -> SlurmExecutor()   (LocalExecutor, DebugExecutor)
    default_name()                 -> "slurm" where a Slurm controller answers, else "local"
"""
from __future__ import annotations

import shutil
import subprocess

from ablate.core.errors import AblateError, closest
from ablate.launch.executor import Executor
from ablate.launch.local import DebugExecutor, LocalExecutor
from ablate.launch.slurm import SlurmExecutor

EXECUTORS = {cls.name: cls for cls in (LocalExecutor, SlurmExecutor, DebugExecutor)}
NAMES = tuple(EXECUTORS)


def executor_class(name: str) -> type[Executor]:
    if name not in EXECUTORS:
        raise AblateError(f"unknown executor '{name}'{closest(name, NAMES)}; allowed: {', '.join(NAMES)}")
    return EXECUTORS[name]


def executor(name: str) -> Executor:
    """The executor a name stands for, with no submit options (to ask about jobs, to cancel)."""
    return executor_class(name)()


def default_name() -> str:
    """slurm where a Slurm controller answers, local where Slurm is not installed. Slurm installed
    but its controller silent is an error, not a quiet fallback: on a login node that would start
    training there instead of on the cluster."""
    if not shutil.which("sbatch"):
        return "local"
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
        answer = " ".join((ping.stdout + ping.stderr).split()) or f"exit {ping.returncode}"
    except (OSError, subprocess.SubprocessError) as e:
        answer = f"{type(e).__name__}: {e}"
    else:
        if "UP" in ping.stdout:
            return "slurm"
    raise AblateError(f"sbatch is on PATH but no Slurm controller answers (scontrol ping: {answer[:200]}): "
                      "start Slurm, or pass --executor local to run the cells on this machine")
