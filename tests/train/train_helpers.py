"""Helpers shared by the trainer tests (imported as a plain module: tests/train is on sys.path)."""
import json
import os
import random
import subprocess
import sys
from pathlib import Path

from ablate.core import rundir

ROOT = Path(__file__).resolve().parents[2]
WORDS = ("the king and queen of the castle walk in the garden at night while the fool sings a song "
         "of bread wine love and war to the guards who stand at the gate").split()


def make_corpus(path: Path, n_lines: int = 600, seed: int = 0) -> Path:
    """Lines of 5-9 words from a small vocabulary: quick to learn, far from trivial."""
    rng = random.Random(seed)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(5, 9))) for _ in range(n_lines)]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


# tiny: a step takes milliseconds on one CPU core
TINY = dict(n_layer=2, n_head=2, n_embd=32, context=32, batch_size=8, max_iters=40, eval_interval=10, eval_iters=4,
            log_interval=5, ckpt_interval=10, tokenizer="char", device="cpu", seed=1)


def evals_of(run_dir) -> list[dict]:
    """evals.jsonl without the wall-clock field (the only one that differs between equal runs)."""
    return [{k: v for k, v in r.items() if k != "elapsed"} for r in rundir.read_jsonl(Path(run_dir) / rundir.EVALS)]


def train_subprocess(run_dir, env=None, log_name="train") -> subprocess.Popen:
    """`python -m ablate.train RUN_DIR` as a real process (what a job runs); output in <run_dir>.<log_name>.log."""
    full_env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
    log = open(Path(f"{run_dir}.{log_name}.log"), "a")
    return subprocess.Popen([sys.executable, "-m", "ablate.train", str(run_dir)], cwd=ROOT, env=full_env,
                            stdout=log, stderr=subprocess.STDOUT, text=True)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_ranks(run_dir, world: int, env=None) -> list[subprocess.Popen]:
    """`world` gloo ranks of one run dir, as torchrun starts them; rank r logs to <run_dir>.rank<r>.log."""
    port = str(free_port())
    return [train_subprocess(run_dir, log_name=f"rank{r}", env={
        "WORLD_SIZE": str(world), "RANK": str(r), "LOCAL_RANK": str(r), "MASTER_ADDR": "127.0.0.1",
        "MASTER_PORT": port, **(env or {})}) for r in range(world)]


def log_of(run_dir, log_name="train") -> str:
    return Path(f"{run_dir}.{log_name}.log").read_text()


def read_lines(path) -> list[dict]:
    """Every line must be complete JSON (stricter than rundir.read_jsonl)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


def assert_same_curves(single, other, eval_steps: list[int], tokens: list[int], tol: float = 2e-6) -> None:
    """Two runs of one config (one process vs several, same global batch) logged the same losses:
    evals at eval_steps (val and train), metrics with these cumulative token counts."""
    import pytest

    e1, e2 = read_lines(Path(single) / rundir.EVALS), read_lines(Path(other) / rundir.EVALS)
    assert [e["step"] for e in e2] == [e["step"] for e in e1] == eval_steps
    for a, b in zip(e1, e2):
        for k in ("val_loss", "train_loss"):
            assert b[k] == pytest.approx(a[k], abs=tol), (a["step"], k, a[k], b[k])
    m1, m2 = read_lines(Path(single) / rundir.METRICS), read_lines(Path(other) / rundir.METRICS)
    assert [m["tokens"] for m in m2] == [m["tokens"] for m in m1] == tokens
    for a, b in zip(m1, m2):
        assert b["loss"] == pytest.approx(a["loss"], abs=tol), (a["step"], a["loss"], b["loss"])
