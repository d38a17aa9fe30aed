"""The GPU check's resume stage: does a run killed with SIGKILL and resumed from its checkpoint
train like one that was never interrupted? On CPU in fp32 it must match bit for bit; on CUDA,
atomics in the attention backward make even two uninterrupted runs differ, so two of those
run beside the killed one, and the report gives both differences: resumed vs uninterrupted,
and uninterrupted vs uninterrupted (the noise floor). Everything goes through the real entry
point, `python -m ablate.train RUN_DIR`. No torch here.
"""
from __future__ import annotations

import re
import sys
import threading
import time

from ablate.core import rundir

RUNS = ("once", "again", "killed")


def _losses(run_dir, name: str, key: str) -> dict:
    return {r["step"]: r[key] for r in rundir.read_jsonl(run_dir / name) if r.get(key) is not None}


def _max_diff(a: dict, b: dict) -> float | None:
    if not a or set(a) != set(b):
        return None  # different steps logged: no like-for-like comparison
    return max(abs(a[s] - b[s]) for s in a)


def resume(check, deadline: float) -> dict:
    p = check.p
    config = {"dataset": p["dataset"], "tokenizer": p["tokenizer"], "seed": 0, **p["resume"]["config"]}
    kill_after = p["resume"]["kill_after"]
    dirs = {name: check.work / "resume" / name for name in RUNS}
    for name, d in dirs.items():
        rundir.write_json_atomic(d / rundir.CONFIG, {"config": config, "grid": "gpu-check", "run_id": name})
    cmd = lambda name: [sys.executable, "-m", "ablate.train", str(dirs[name])]
    rcs, killed = {}, {}

    def run(name, job=None, keep=None):
        rcs[job or name] = check.run(f"resume-{job or name}", cmd(name), deadline, keep=keep)[0]

    def kill_when_due(proc):  # SIGKILL once the run has logged step kill_after: no chance to save
        def watch():
            while proc.poll() is None and time.monotonic() < deadline:
                steps = [r["step"] for r in rundir.read_jsonl(dirs["killed"] / rundir.METRICS)]
                if steps and max(steps) >= kill_after:
                    killed["step"] = max(steps)
                    check.kill(proc)
                    return
                time.sleep(0.01)
        threading.Thread(target=watch, daemon=True).start()

    threads = [threading.Thread(target=run, args=(name,)) for name in ("once", "again")]
    threads.append(threading.Thread(target=run, args=("killed", "killed-1", kill_when_due)))
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if "step" not in killed:
        raise check.StageError(f"the run to kill ended (exit {rcs.get('killed-1')}) before step {kill_after} was logged or "
                         f"the stage's time ran out")
    run("killed", "killed-2")
    log = (check.work / "logs" / "resume-killed-2.log").read_text(errors="replace")
    resumed = re.search(r"resumed from \S+ at step (\d+)", log)
    out = {"config": f"{config['arch']} {config['n_layer']}x{config['n_embd']}, T {config['context']}, "
                     f"{config['dtype']}, {config['max_iters']} steps, checkpoint every {config['ckpt_interval']}",
           "killed_at_step": killed["step"], "resumed_from_step": int(resumed.group(1)) if resumed else None,
           "exit_codes": rcs}
    for what, name, key in (("train", rundir.METRICS, "loss"), ("val", rundir.EVALS, "val_loss")):
        once, again, back = (_losses(dirs[n], name, key) for n in RUNS)
        out[f"max_{what}_loss_diff_resumed"] = _max_diff(once, back)
        out[f"max_{what}_loss_diff_repeat"] = _max_diff(once, again)
    out["final_val_loss"] = {n: (rundir.read_jsonl(dirs[n] / rundir.EVALS) or [{}])[-1].get("val_loss") for n in RUNS}
    summary = rundir.read_json(dirs["killed"] / rundir.SUMMARY) or {}
    out["summary_attn_kernel"] = summary.get("attn_kernel")
    if any(rcs.get(n) != 0 for n in ("once", "again", "killed-2")) or not resumed:
        raise check.StageError(f"exit codes {rcs}; resumed line {'found' if resumed else 'missing'} in the resumed run's log")
    check.result["resume"] = out
    return out
