"""Helpers and fixtures for the launch tests (a plain module: tests/launch is on sys.path).

No conftest.py here on purpose: the top-level tests import `conftest` by name, and a second
conftest module would shadow it. Test modules import the fixtures they use from here.
The root conftest points ABLATE_RUNS_DIR / ABLATE_DATA_DIR at the test's tmp_path; Slurm jobs
inherit that environment from sbatch and see the same files (single node)."""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ablate.core import rundir
from ablate.launch import state as scheduler
from ablate.plan.grid import load_grid

ROOT = Path(__file__).resolve().parents[2]

# 2 layers x 32 wide, character level: a step takes a few milliseconds on one core
GRID = """\
name: {name}
data: {{dataset: 'text:{corpus}', tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: {steps}, eval_interval: {eval_interval},
        eval_iters: 2, log_interval: {log_interval}, ckpt_interval: {ckpt_interval}, device: {device}{extra}}}
arch_defaults: {{gpt: {{lr: 3e-3}}, ngpt: {{lr: 1e-2}}}}
grid: {grid}
resources: {resources}
"""


def make_corpus(path: Path) -> Path:
    words = "the king and queen of the castle walk in the garden while the fool sings".split()
    lines = [" ".join(words[(i * 7 + j) % len(words)] for j in range(5 + i % 4)) for i in range(400)]
    path.write_text("\n".join(lines) + "\n")
    return path


def write_grid(tmp_path: Path, name: str = "g", grid: str = "{arch: [gpt]}", steps: int = 30, resources: str = "{}",
               device: str = "cpu", eval_interval: int = 10, log_interval: int = 5, ckpt_interval: int = 10,
               extra: str = "") -> Path:
    corpus = tmp_path / "corpus.txt"
    if not corpus.exists():
        make_corpus(corpus)
    path = tmp_path / f"{name}.yaml"
    path.write_text(GRID.format(name=name, corpus=corpus, steps=steps, grid=grid, resources=resources, device=device,
                                eval_interval=eval_interval, log_interval=log_interval, ckpt_interval=ckpt_interval,
                                extra=extra))
    return path


def cli(*args, env=None, timeout=300) -> subprocess.CompletedProcess:
    """The real `ablate` entry point in a subprocess."""
    return subprocess.run([sys.executable, "-m", "ablate.cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def run_dirs(grid_name: str) -> list[Path]:
    root = Path(os.environ["ABLATE_RUNS_DIR"]) / grid_name
    return sorted(p for p in root.iterdir() if (p / rundir.CONFIG).exists()) if root.exists() else []


def states(grid_name: str) -> list[str]:
    return [rundir.state_of(p) for p in run_dirs(grid_name)]


def wait_until(predicate, timeout: float, what: str, poll: float = 0.2):
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")


def steps_unbroken(run_dir: Path, key_file: str, every: int, last: int | None) -> list[int]:
    """The logged steps, asserting they run every..last (last None: up to the last complete line of a
    file that a live job still appends to) with no gap and no repeat."""
    steps = [r["step"] for r in rundir.read_jsonl(run_dir / key_file)]
    last = steps[-1] if last is None and steps else last
    assert steps == list(range(every, last + 1, every)) or steps == list(range(0, last + 1, every)), steps
    return steps


def settle(grid_path, timeout=180, nudge_requeued=False):
    """Wait until no cell of the grid has a live job; returns the reconciled cells. With
    nudge_requeued, a requeued job is started at once: Slurm gives a requeued job a BeginTime
    two minutes ahead (to let a failed node recover), which only slows this test down."""
    grid = load_grid(grid_path)

    def quiet():
        cells = scheduler.reconcile(grid.cells)
        if nudge_requeued:
            for c in cells:
                if c.job is not None and c.job.active and c.job.reason == "BeginTime":
                    subprocess.run(["scontrol", "update", f"JobId={c.job.job_id}", "StartTime=now"],
                                   capture_output=True, timeout=30)
        return cells if not any(c.active for c in cells) else None

    return wait_until(quiet, timeout, f"the jobs of {grid_path.name} to end", poll=1.0)


def sacct_state(job_id: str) -> str:
    out = subprocess.run(["sacct", "-X", "-n", "-P", "-j", job_id.split("_")[0], "-o", "JobID,State"],
                         capture_output=True, text=True, timeout=30).stdout
    states = dict(line.split("|", 1) for line in out.splitlines() if "|" in line)
    return states.get(job_id, "?").split()[0] if states.get(job_id) else "?"


def slurm_skip_reason(conf: str | None = None, start: str = "scripts/start-slurm.sh") -> str | None:
    """None when a Slurm controller answers here (conf: that cluster's SLURM_CONF); otherwise why the
    Slurm tests are skipped, and `start`, the command that starts it."""
    if not shutil.which("sbatch"):
        return f"Slurm is not installed here (no sbatch on PATH); start it with {start}"
    env = {**os.environ, "SLURM_CONF": conf} if conf else None
    try:
        out = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=20, env=env)
    except (OSError, subprocess.SubprocessError) as e:
        return f"Slurm is not running (scontrol ping: {e}); start it with {start}"
    if "UP" not in out.stdout:
        said = (out.stdout + out.stderr).strip().splitlines()  # the first line; then a banner of asterisks
        return f"Slurm is not running (scontrol ping: {said[0] if said else 'no answer'}); start it with {start}"
    return None


@pytest.fixture(autouse=True)
def one_thread(monkeypatch):
    """Jobs started by a test use one intra-op thread unless told otherwise (on these small VMs a
    second OpenMP thread makes tiny matmuls much slower)."""
    monkeypatch.setenv("OMP_NUM_THREADS", "1")


@pytest.fixture(autouse=True)
def no_leftover_jobs():
    """A test that fails half-way must not leave its cells training (they are given 10^7 steps and
    would load the machine for the rest of the suite): afterwards, kill whatever a run dir's
    status.json still names alive (the local runner, the submitit controller, the trainer)."""
    from ablate.launch.procs import pid_alive

    root = Path(os.environ["ABLATE_RUNS_DIR"])
    yield
    for status in root.glob("*/*/" + rundir.STATUS):
        st = rundir.read_json(status) or {}
        for pid in {st.get(k) for k in ("runner_pid", "job_id", "pid")} - {None}:
            if str(pid).isdigit() and pid_alive(pid):
                os.kill(int(pid), signal.SIGKILL)


@pytest.fixture
def grid_file(tmp_path):
    """grid_file(name=..., grid=..., steps=..., resources=...) -> a tiny grid YAML."""
    def make(**kw):
        return write_grid(tmp_path, **kw)
    return make


FAKE_SBATCH = """#!/bin/sh
d="$(dirname "$0")"
n=$(( $(cat "$d/next" 2>/dev/null || echo 41) + 1 )); echo $n > "$d/next"
cp "$1" "$d/script.$n"
echo "Submitted batch job $n"
"""


@pytest.fixture
def fake_slurm(tmp_path, monkeypatch):
    """Slurm's commands as scripts on PATH: sbatch records the script and answers a job id,
    scontrol logs its arguments, squeue / sacct know no job, sinfo offers gpu:2, srun exists (submitit
    refuses to build a SlurmExecutor without it) and fails if a job ever ran. These tests need no
    cluster; the real-Slurm ones are tests/launch/test_launch_slurm.py."""
    from ablate.launch import resources as res

    bin_dir = tmp_path / "fakeslurm"
    bin_dir.mkdir()
    scripts = {"sbatch": FAKE_SBATCH,
               "scontrol": '#!/bin/sh\necho "$@" >> "$(dirname "$0")/scontrol.log"\n',
               "squeue": "#!/bin/sh\nexit 0\n", "sacct": "#!/bin/sh\nexit 0\n", "sinfo": "#!/bin/sh\necho gpu:2\n",
               "srun": "#!/bin/sh\necho 'fake srun: no cluster here' >&2\nexit 1\n"}
    for name, body in scripts.items():
        (bin_dir / name).write_text(body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    monkeypatch.setattr(res, "max_array_size", lambda: 2)
    return bin_dir
