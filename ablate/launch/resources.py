"""A grid's generic `resources` -> each executor's parameters, in one table; what the cluster allows.

    resources: {gpus: 1, cpus: 8, mem_gb: 64, time_min: 720, partition: gpu, max_requeue: 5}

TABLE is the only place where a generic name meets a backend name. Zero / None means "the
executor's default" and is left out, so a grid never has to spell out what the cluster
already decides. Derived settings (one task per GPU for DDP, the warning-signal delay, the
thread count of a job) are computed below the table, each in one function.
"""
from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

from ablate.core.errors import AblateError


def _mem(gb: float) -> str:
    return f"{int(round(gb * 1024))}M"


# generic name -> (submitit SlurmExecutor parameter, submitit LocalExecutor parameter, convert).
# None: the backend has no such knob (local runs use the whole machine, have no time limit).
TABLE = {
    "gpus":        ("gpus_per_node", "gpus_per_node", int),
    "nodes":       ("nodes",         None,            int),
    "cpus":        ("cpus_per_task", None,            int),
    "mem_gb":      ("mem",           None,            _mem),
    "time_min":    ("time",          None,            int),
    "partition":   ("partition",     None,            str),
    "account":     ("account",       None,            str),
    "qos":         ("qos",           None,            str),
    "constraint":  ("constraint",    None,            str),
    "max_requeue": ("max_num_timeout", "max_num_timeout", int),  # an executor argument, not an sbatch flag
}
EXECUTOR_ARGS = ("max_num_timeout",)
LOCAL_TIMEOUT_MIN = 60 * 24 * 365  # local jobs have no time limit worth the name


def _translate(resources, column: int) -> dict:
    out = {}
    for name, row in TABLE.items():
        value = getattr(resources, name)
        if row[column] is not None and value not in (None, 0, ""):
            out[row[column]] = row[2](value)
    return out


def signal_delay_s(time_min: int) -> int:
    """Seconds before the time limit at which Slurm sends SIGUSR2 (save + requeue). slurmctld checks
    limits every 30 s and sends the signal as soon as `now + delay + 30 >= end`, i.e. up to 30 s
    early: a 1-minute job asking for 30 s would be signalled as it starts, before any handler is
    installed (and die of it). So: a sixth of the limit, between 10 s and submitit's 90 s."""
    return int(min(90, max(10, time_min * 60 // 6)))


def slurm_parameters(resources, grid_name: str, array_parallelism: int | None = None) -> tuple[dict, dict]:
    """(SlurmExecutor.update_parameters kwargs, SlurmExecutor constructor kwargs)."""
    params = _translate(resources, 0)
    ctor = {k: params.pop(k) for k in EXECUTOR_ARGS if k in params}
    ctor.setdefault("max_num_timeout", 0)
    if resources.gpus > 1 or resources.nodes > 1:  # DDP: one process per GPU, each sees all of the node's GPUs
        params["ntasks_per_node"] = tasks_per_node(resources)
    params["signal_delay_s"] = signal_delay_s(resources.time_min or 60)
    params["job_name"] = f"ablate-{grid_name}"
    # held at submission, released once every status.json knows its job id (see slurm.py)
    params["additional_parameters"] = {"hold": True}
    if array_parallelism:
        params["array_parallelism"] = int(array_parallelism)
    return params, ctor


def tasks_per_node(resources) -> int:
    """Ranks per node: one per GPU; on CPU (gpus: 0) one per node, whose torch threads use the task's
    `cpus`. A job runs nodes x tasks_per_node ranks (WORLD_SIZE), all from the same environment."""
    return max(1, resources.gpus)


def check_one_node(resources, executor: str) -> None:
    """The local and debug executors run a cell on this machine: nodes > 1 is for Slurm."""
    if resources.nodes > 1:
        raise AblateError(f"resources.nodes is {resources.nodes}, but --executor {executor} runs each cell on this one "
                          f"machine; use --executor slurm for several nodes, or nodes: 1")


def threads_per_job(jobs: int, cpus: int | None = None) -> int:
    """Torch threads for each of `jobs` concurrent jobs sharing this machine's cores; an
    OMP_NUM_THREADS set by the user caps it (tiny models run faster on one thread)."""
    share = max(1, (cpus or os.cpu_count() or 1) // max(1, jobs))
    cap = os.environ.get("OMP_NUM_THREADS", "")
    return min(share, int(cap)) if cap.isdigit() and int(cap) > 0 else share


# ---- local GPU slots

@dataclass(frozen=True)
class Slot:
    """Where one local job runs: its GPUs (CUDA_VISIBLE_DEVICES) and its CPU threads."""
    gpus: tuple = ()
    threads: int = 1

    def label(self) -> str:
        return f"gpu {','.join(map(str, self.gpus))}" if self.gpus else f"cpu x{self.threads}"


def visible_gpus() -> list[int]:
    """GPU indices this process may use, without importing torch: CUDA_VISIBLE_DEVICES, else nvidia-smi."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [x.strip() for x in env.split(",") if x.strip()]
        return list(range(len(ids))) if ids and ids[0] not in ("-1", "NoDevFiles") else []
    if not shutil.which("nvidia-smi"):
        return []
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=20).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [int(x) for x in out.split() if x.isdigit()]


def parse_gpus(text: str | None) -> list[int] | None:
    if text is None or text == "all":
        return None
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise AblateError(f"--gpus {text!r}: expected a list of GPU indices like 0,1,2,3 (or 'all')") from None


def local_slots(resources, gpus: list[int] | None = None, jobs: int | None = None, warn=print) -> list[Slot]:
    """One slot per concurrent local job: groups of `resources.gpus` GPUs (from --gpus or all visible),
    or, on a CPU-only machine, --jobs slots that divide the cores between them."""
    per_job = max(1, resources.gpus)
    if gpus is None and (resources.gpus > 0 or os.environ.get("CUDA_VISIBLE_DEVICES")):
        gpus = visible_gpus()
    if gpus:
        if len(gpus) < per_job:
            raise AblateError(f"each cell needs {per_job} GPUs (resources.gpus) but only {len(gpus)} are "
                              f"available: {','.join(map(str, gpus))}")
        groups = [tuple(gpus[i:i + per_job]) for i in range(0, len(gpus) - per_job + 1, per_job)]
        if jobs:
            groups = groups[:jobs]
        threads = threads_per_job(len(groups))
        return [Slot(g, threads) for g in groups]
    if resources.gpus > 0:
        warn(f"warning: resources.gpus is {resources.gpus} but no GPU is visible here: running on CPU")
    n = max(1, jobs or 1)
    return [Slot((), threads_per_job(n))] * n


# ---- what the Slurm cluster allows

@functools.lru_cache(maxsize=1)
def slurm_config() -> dict:
    """`scontrol show config` as a dict ({} when scontrol is missing or the controller is down)."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {}
    conf = {}
    for line in out.stdout.splitlines():
        m = re.match(r"^(\w+)\s*=\s*(.*)$", line.strip())
        if m:
            conf[m.group(1)] = m.group(2).strip()
    return conf


def max_array_size() -> int:
    """Most tasks one job array may hold: indices run 0..MaxArraySize-1 (Slurm's default 1001)."""
    value = slurm_config().get("MaxArraySize", "1001")
    return int(value) if value.isdigit() and int(value) > 0 else 1001


def check_gpus_available(resources) -> None:
    """A clear error, before sbatch, when the cells ask for GPUs that no node in the partition has."""
    if resources.gpus <= 0:
        return
    cmd = ["sinfo", "-h", "-o", "%G"] + (["-p", resources.partition] if resources.partition else [])
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return  # sbatch will say what is wrong
    if out.returncode != 0:
        return
    counts = [int(m.group(1)) for g in out.stdout.split() for m in [re.search(r"gpu(?::[^:,()]+)?:(\d+)", g)] if m]
    where = f"partition {resources.partition}" if resources.partition else "this cluster"
    if not counts:
        raise AblateError(
            f"resources.gpus is {resources.gpus} but no node of {where} has GPUs (sinfo gres: "
            f"{' '.join(sorted(set(out.stdout.split()))) or 'none'}); use gpus: 0, a GPU partition, or for a "
            f"test cluster start Slurm with SLURM_FAKE_GPUS=N scripts/start-slurm.sh")
    if resources.gpus > max(counts):
        raise AblateError(f"resources.gpus is {resources.gpus} but the nodes of {where} have at most "
                          f"{max(counts)} GPUs each; use nodes: N for more")
