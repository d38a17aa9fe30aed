"""`ablate status` and `ablate cancel`: what the run dirs (and the scheduler) say."""
from __future__ import annotations

import collections
import os
import signal
import time

from ablate.plan import rundir
from ablate.plan.grid import Grid, runs_root


def _rows(grid: Grid | None):
    if grid is not None:
        return [(c.run_id, c.run_dir) for c in grid.cells]
    root = runs_root()
    return [(p.name, p) for p in sorted(root.glob("*/*")) if (p / rundir.CONFIG).exists()]


def status_report(grid: Grid | None) -> str:
    counts = collections.Counter()
    lines = []
    for rid, run_dir in _rows(grid):
        st = rundir.read_status(run_dir)
        state = st.get("state", "new")
        counts[state] += 1
        if state in ("running", "queued", "failed", "oom", "diverged", "cancelled"):
            m = (rundir.read_jsonl(run_dir / rundir.METRICS)[-1:] or [{}])[0]
            age = time.time() - st.get("heartbeat", st.get("updated", time.time()))
            err = (st.get("error") or "").strip().splitlines()[-1:] or [""]
            lines.append(f"{rid}  {state:<9} step {m.get('step', '-')!s:>6}  loss {m.get('loss', float('nan')):.3f}  "
                         f"{m.get('tokens_per_s') or 0:>9,.0f} tok/s  job {st.get('job_id', '-')}  "
                         f"heartbeat {age:.0f}s ago  {err[0][:120]}")
    head = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no runs"
    return "\n".join([head, *lines])


def cancel(grid: Grid, cells) -> list[str]:
    out = []
    for cell in cells:
        st = rundir.read_status(cell.run_dir)
        if st.get("state") not in ("queued", "running", "pending"):
            continue
        job = st.get("job_id")
        if st.get("executor") == "local" and job and job.isdigit():
            try:
                os.kill(int(job), signal.SIGTERM)
            except ProcessLookupError:
                pass
        rundir.update_status(cell.run_dir, state="cancelled")
        out.append(f"cancelled {cell.run_id} (job {job})")
    return out or ["nothing to cancel"]
