"""`ablate gc`: what finished runs no longer need, listed and removed.

A finished run keeps model.pt (its weights) and its logs; ckpt.pt (the weights and AdamW's
state, ~3x the bytes of model.pt) only when its config says `keep_ckpt: true`. Runs finished
before that policy (or by hand) may still hold a checkpoint; gc removes it, and the temp files
of saves a kill interrupted. It never touches a run that is not done, nor a file a running job
may write: a run dir's state is read under its status lock's rules (state done, no live job).
"""
from __future__ import annotations

import shutil

from dataclasses import dataclass
from pathlib import Path

from ablate.core import rundir
from ablate.core.errors import AblateError

TEMP_GLOBS = (".ckpt.pt.*.tmp", ".model.pt.*.tmp")


@dataclass
class Garbage:
    run_dir: Path
    files: list  # paths
    bytes: int


def collect(run_dirs) -> list[Garbage]:
    """What the policy no longer keeps, per finished run dir (a broken one is skipped)."""
    out = []
    for run_dir in run_dirs:
        run_dir = Path(run_dir)
        if rundir.state_of(run_dir) != "done" or rundir.identity_problem(run_dir, missing_ok=False):
            continue
        try:
            cfg, _ = rundir.read_config(run_dir)
        except AblateError:
            continue
        files = [p for g in TEMP_GLOBS for p in run_dir.glob(g)]
        if not cfg.keep_ckpt and (run_dir / "model.pt").is_file():
            files += [run_dir / name for name in (rundir.CKPT, rundir.CKPT_SHARDS) if (run_dir / name).exists()]
        if files:
            out.append(Garbage(run_dir, files, sum(_size(p) for p in files)))
    return out


def _size(path: Path) -> int:
    """Bytes of a file, or of every file under a directory (fsdp's ckpt.shards)."""
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def gc(run_dirs, dry_run: bool = False, echo=print) -> int:
    """Remove (or with dry_run only list) what the finished runs no longer keep; returns bytes."""
    garbage = collect(run_dirs)
    total = sum(g.bytes for g in garbage)
    for g in garbage:
        if not dry_run and rundir.state_of(g.run_dir) != "done":  # it changed since we looked (--force): leave it
            continue
        for path in g.files:
            echo(f"{'would remove' if dry_run else 'removed'} {path} ({_size(path) / 1e6:.1f} MB)")
            if not dry_run:
                _remove(path)
    echo(f"{'would free' if dry_run else 'freed'} {total / 1e6:.1f} MB in {len(garbage)} finished run(s)")
    return total
