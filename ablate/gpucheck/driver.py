"""One prepared GPU check: every CUDA test, the attention kernels, MFU, nGPT's overhead, memory
against the plan's estimate and resume after a kill, in one call, inside a time budget.

    scripts/gpu-check.sh OUTDIR [--cpu] [--only STAGES] [--cells NAMES] [--budget SECONDS]

Stages, in order; each has its own time cap and leaves a reserve for the stages after it, so a
slow stage cannot eat the rest; a stage that fails records its error and the next one starts:

    env      versions and the device
    data     the data set the cells train on (offline: the wheelhouse brings the corpus)
    tests    pytest -m cuda: tests/model in parallel shards, then tests/train alone (it measures
             memory and fills the device to get an OOM); meanwhile a background job compiles the
             benchmark's compiled cells once, so their compile caches are warm when timed
    kernels  attention alone at the long context: the kernel each route runs, time, memory
    bench    the benchmark cells, one process each, in priority order until the stage's time is up;
             from the tests stage on, a background job simulates each cell's step under
             FakeTensorMode (as `ablate plan --memory` does) for the measured vs simulated column
    resume   two uninterrupted runs and one SIGKILLed and resumed: the loss differences

OUTDIR gets gpu-check.json (everything), gpu-check.md (the table, targets, stages) and
gpu-check.log (every job's output), rewritten after each stage and cell, so a run stopped from
outside still leaves what it measured. The targets are reported as pass / miss, never asserted.
--cpu runs the same stages at a tiny size on the CPU (compile disabled): the test suite runs it
so that the check cannot rot while no GPU is around. No torch here: jobs run in child
processes (jobs.py); this file imports only torch-free modules (core, the check's own).
"""
from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from ablate.core import rundir
from ablate.core.provenance import git_sha
from ablate.gpucheck.profiles import PROFILES, cells, kernel_cases
from ablate.gpucheck.report import markdown, targets
from ablate.gpucheck.resume import resume

ROOT = Path(__file__).resolve().parents[2]  # the checkout: pytest runs its tests/, jobs run from here

STAGES = ("env", "data", "tests", "kernels", "bench", "resume")
MIN_STAGE_S = 5.0  # a stage with less time than this left is skipped, not started


# each job leads its own process group (so a cap ends the job and everything it started) but
# stays in our session: if this driver is killed from outside, nothing it started outlives it
GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"start_new_session": True}


def kill(proc: subprocess.Popen) -> None:
    """End a job we started, and everything it started (its own process group)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


class StageError(Exception):
    """A stage (or job) failed or ran out of time; the message is the one line to record, and
    `partial` what the job had written before it stopped (None if nothing)."""

    def __init__(self, msg: str, status: str = "failed", partial: dict | None = None):
        super().__init__(msg)
        self.status, self.partial = status, partial


class Check:
    StageError, kill = StageError, staticmethod(kill)  # for resume.py
    jobs = [sys.executable, "-m", "ablate.gpucheck.jobs"]  # + JOB SPEC OUT: the measuring side

    def __init__(self, out: Path, profile: str, only: tuple, cell_names: tuple, budget: float | None, work: Path):
        self.out, self.work, self.p = out, work, PROFILES[profile]
        self.only, self.cell_names = only or STAGES, cell_names
        self.t0 = time.monotonic()
        self.deadline = self.t0 + (budget or self.p["budget"])
        self.log_lock = threading.Lock()
        self.warm_proc, self.warmed, self.live = None, {}, set()
        self.sim_thread, self.sim_proc = None, None
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", "ABLATE_DATA_DIR": str(work / "data"),
                    "ABLATE_RUNS_DIR": str(work / "runs"), "PYTHONPATH": os.pathsep.join(
                        [str(ROOT)] + ([os.environ["PYTHONPATH"]] if os.environ.get("PYTHONPATH") else []))}
        self.env.update(self.p.get("env", {}))
        self.result = {"profile": profile, "budget_s": budget or self.p["budget"],
                       "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "git_sha": git_sha(ROOT),
                       "env": {}, "stages": {}, "tests": {}, "kernels": [], "cells": [], "resume": {}, "targets": []}

    # ---- time
    def left(self) -> float:
        return self.deadline - time.monotonic()

    def stage(self, name: str, fn) -> None:
        reserve = sum(self.p["reserve"].get(s, 0) for s in STAGES[STAGES.index(name) + 1:] if s in self.only)
        timeout = min(self.p["caps"][name], self.left() - reserve)
        rec = {"cap_s": self.p["caps"][name]}
        if name not in self.only:
            rec.update(status="skipped", note="not selected (--only)")
        elif timeout < MIN_STAGE_S:
            rec.update(status="skipped", note=f"no time left ({self.left():.0f} s of the budget, {reserve} s reserved)")
        else:
            t0 = time.monotonic()
            rec.update(status="running", timeout_s=round(timeout))
            self.result["stages"][name] = rec
            try:
                fn(t0 + timeout)
                rec["status"] = "ok"
            except StageError as e:
                rec.update(status=e.status, error=str(e))
            except Exception as e:  # a bug in the check itself: record it and go on
                rec.update(status="failed", error=f"{type(e).__name__}: {e}")
            rec["seconds"] = round(time.monotonic() - t0, 1)
        self.result["stages"][name] = rec
        self.write()

    # ---- processes
    def run(self, name: str, cmd: list, deadline: float, env: dict | None = None, keep=None) -> tuple[int | None, str]:
        """Run cmd in its own process group until it ends or `deadline` (then the group is
        killed: rc None). Its output goes to OUTDIR/gpu-check.log; returns (rc, last lines)."""
        log = self.work / "logs" / f"{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        t0 = time.monotonic()
        with open(log, "w") as f:
            proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT, env={**self.env, **(env or {})},
                                    **GROUP)
            self.live.add(proc)
            if keep is not None:
                keep(proc)
            try:
                rc = proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                kill(proc)
                rc = None
            finally:
                self.live.discard(proc)
        text = log.read_text(errors="replace")
        with self.log_lock, open(self.out / "gpu-check.log", "a") as f:
            f.write(f"\n===== {name}: {'killed at its time cap' if rc is None else f'exit {rc}'} "
                    f"after {time.monotonic() - t0:.1f} s: {' '.join(map(str, cmd))}\n{text}")
        return rc, "\n".join(line for line in text.splitlines()[-12:] if "USDT:" not in line)

    def job(self, name: str, job: str, spec: dict, deadline: float) -> dict:
        spec_path, out_path = self.work / "jobs" / f"{name}.spec.json", self.work / "jobs" / f"{name}.json"
        rundir.write_json_atomic(spec_path, spec)
        rc, tail = self.run(name, self.jobs + [job, str(spec_path), str(out_path)], deadline)
        partial = rundir.read_json(out_path)
        if rc is None:
            raise StageError(f"{name}: killed at its time cap; last output: {_last_line(tail)}", "timeout", partial)
        if rc != 0 or partial is None:
            raise StageError(f"{name}: exit {rc}: {_last_line(tail)}", partial=partial)
        return partial

    # ---- stages
    def stage_env(self, deadline):
        self.result["env"] = self.job("env", "env", {}, deadline)

    def stage_data(self, deadline):
        self.result["data"] = self.job("data", "data", {"dataset": self.p["dataset"], "tokenizer": self.p["tokenizer"]},
                                       deadline)

    def stage_tests(self, deadline):
        warm = threading.Thread(target=self.warm, daemon=True)
        if "bench" in self.only:
            self.start_simulate()
            if self.p["warm"]:
                warm.start()
        try:
            self._tests(deadline)
        finally:
            self.stop_warm(warm)

    def _tests(self, deadline):
        results = self.work / "tests.jsonl"
        pytest = [sys.executable, "-m", "pytest", "-q", "-p", "ablate.gpucheck.pytest_shard", "-p", "no:cacheprovider", "-m", "cuda"]
        env = {"GPU_CHECK_RESULTS": str(results)}
        start, k, rcs = time.monotonic(), self.p["shards"], {}
        model_deadline = start + self.p["model_tests_share"] * (deadline - start)

        def shard(i):
            rcs[f"model-{i}"] = self.run(f"tests-model-{i}", pytest + ["tests/model"], model_deadline,
                                         {**env, "GPU_CHECK_SHARD": f"{i}/{k}"})
        threads = [threading.Thread(target=shard, args=(i,)) for i in range(k)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rcs["train"] = self.run("tests-train", pytest + ["tests/train"], deadline, env)
        self.result["tests"] = summary = _test_summary(rundir.read_jsonl(results))
        killed = [name for name, (rc, _) in rcs.items() if rc is None]
        broken = [(name, rc, tail) for name, (rc, tail) in rcs.items() if rc not in (None, 0, 1, 5)]  # 1: failures, 5: none selected
        if killed:
            raise StageError(f"{', '.join(killed)} killed at the cap; {summary['not_run']} tests did not run", "timeout")
        if broken:
            raise StageError(f"pytest {broken[0][0]} exit {broken[0][1]}: {_last_line(broken[0][2])}")
        if summary["failed"] or summary["errors"] or summary["not_run"]:
            raise StageError(f"{summary['failed']} failed, {summary['errors']} errors, {summary['not_run']} not run: "
                             + "; ".join(f["test"] for f in summary["failures"][:5]))

    def warm(self):
        """Compile each compiled cell once (one step), in bench order, while the tests run: the
        compile caches are on disk, so the timed run of the cell compiles from them."""
        for c in self.cells():
            if not c["compiled"] or self.warm_proc == "stop":
                continue
            spec = self.cell_spec(c, warm=True)
            spec_path = self.work / "jobs" / f"warm-{c['name']}.spec.json"
            rundir.write_json_atomic(spec_path, spec)
            rc, _ = self.run(f"warm-{c['name']}", self.jobs + ["cell", str(spec_path), str(spec_path.with_suffix(".out"))],
                             time.monotonic() + self.p["cell_cap"]["compiled"], keep=self._set_warm)
            self.warmed[c["name"]] = rc == 0

    def _set_warm(self, proc):
        if self.warm_proc == "stop":
            kill(proc)
        else:
            self.warm_proc = proc

    def stop_warm(self, thread):
        proc, self.warm_proc = self.warm_proc, "stop"
        if isinstance(proc, subprocess.Popen):
            kill(proc)
        if thread.is_alive():
            thread.join()

    def start_simulate(self):
        """Simulate every bench cell's step (FakeTensorMode: CPU only, no device memory) in the
        background, from the tests stage (or the bench stage's start) until the check ends."""
        if self.sim_thread is not None:
            return
        spec_path = self.work / "jobs" / "simulate.spec.json"
        rundir.write_json_atomic(spec_path, {"cells": [{"name": c["name"], "config": c["config"]} for c in self.cells()]})
        cmd = self.jobs + ["simulate", str(spec_path), str(self.work / "jobs" / "simulate.json")]
        self.sim_thread = threading.Thread(target=self.run, args=("simulate", cmd, self.deadline), daemon=True,
                                           kwargs={"keep": lambda proc: setattr(self, "sim_proc", proc)})
        self.sim_thread.start()

    def stop_simulate(self):
        if self.sim_thread is None:
            return
        while self.sim_thread.is_alive() and self.sim_proc is None:  # it is starting: wait for its process
            time.sleep(0.05)
        if self.sim_proc is not None and self.sim_proc.poll() is None:
            kill(self.sim_proc)
        self.sim_thread.join()

    def stage_kernels(self, deadline):
        spec = {**self.p["kernels"], "device": self.p["device"], "n_head": self.p["model"]["n_head"],
                "head_dim": self.p["model"]["n_embd"] // self.p["model"]["n_head"], "n_kv_head": self.p["gqa_kv"],
                "window": self.p["window"], "cases": kernel_cases()}
        try:
            self.result["kernels"] = self.job("kernels", "kernels", spec, deadline)["rows"]
        except StageError as e:
            self.result["kernels"] = (e.partial or {}).get("rows", [])  # the rows finished before it stopped
            raise

    def cells(self) -> list[dict]:
        names = self.cell_names or self.p.get("cells")
        return [c for c in cells(self.p) if not names or c["name"] in names]

    def cell_spec(self, c: dict, warm: bool = False) -> dict:
        return {"config": c["config"], "run_dir": str(self.work / ("warm" if warm else "cells") / c["name"]),
                "warmup": 1 if warm else self.p["warmup"], "steps": 0 if warm else self.p["steps"]}

    def stage_bench(self, deadline):
        self.start_simulate()
        self.result["cells"] = []
        for c in self.cells():
            row = {k: c[k] for k in ("name", "arch", "ctx", "tag", "backend", "compiled")}
            row.update(context=c["config"]["context"], batch_size=c["config"]["batch_size"],
                       warmed=self.warmed.get(c["name"], False))
            self.result["cells"].append(row)
            left = deadline - time.monotonic()
            if left < MIN_STAGE_S:
                row.update(status="skipped", error="no time left in the bench stage")
                continue
            cap = self.p["cell_cap"]["compiled" if c["compiled"] else "eager"]
            try:
                row.update(self.job(c["name"], "cell", self.cell_spec(c), time.monotonic() + min(cap, left)))
                row["status"] = "ok"
            except StageError as e:
                row.update(status=e.status, error=str(e))
            self.write()

    def stage_resume(self, deadline):
        self.result["resume"] = resume(self, deadline)

    # ---- output
    def write(self) -> None:
        self.result["elapsed_s"] = round(time.monotonic() - self.t0, 1)
        sims = (rundir.read_json(self.work / "jobs" / "simulate.json") or {}).get("sims", {})
        for row in self.result["cells"]:  # the simulation's figures, as far as it has got
            sim = sims.get(row["name"], {})
            if "total" in sim:
                row.update(sim_peak=sim["total"], sim_device=sim["device"],
                           sim_breakdown={k: v for k, v in sim.items() if k not in ("total", "device", "seconds")})
            elif "error" in sim:
                row["sim_error"] = sim["error"]
        self.result["targets"] = targets(self.result["cells"])
        rundir.write_json_atomic(self.out / "gpu-check.json", self.result)
        try:
            text = markdown(self.result)
        except Exception as e:  # a bug in the report must not stop the measuring: the JSON has it all
            text = f"# GPU check\n\nthe markdown failed ({type(e).__name__}: {e}); see gpu-check.json\n"
        with rundir.atomic_file(self.out / "gpu-check.md") as f:
            f.write(text)

    def main(self) -> None:
        for name in STAGES:
            self.stage(name, getattr(self, f"stage_{name}"))
        self.stop_simulate()
        self.write()


# ---------------------------------------------------------------- helpers

def _last_line(text: str) -> str:
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else "(no output)"


def _test_summary(lines: list[dict]) -> dict:
    tests = [r for r in lines if "test" in r]
    count = lambda outcome, when=None: sum(r["outcome"] == outcome and (when is None or (r["when"] == "call") == when)
                                           for r in tests)
    reasons: dict = {}
    for r in tests:
        if r["outcome"] == "skipped":
            reasons[r.get("reason", "?")] = reasons.get(r.get("reason", "?"), 0) + 1
    done = {r["test"] for r in tests}
    return {"collected": sum(r["collected"] for r in lines if "collected" in r), "passed": count("passed"),
            "failed": count("failed", True), "errors": count("failed", False), "skipped": count("skipped"),
            "not_run": max(0, sum(r["collected"] for r in lines if "collected" in r) - len(done)),
            "seconds": round(sum(r["seconds"] for r in tests), 1), "skip_reasons": reasons,
            "failures": [r for r in tests if r["outcome"] == "failed"]}


def work_dir() -> Path:
    """Run dirs and data on /dev/shm when it has room (the resume stage writes GB-sized
    checkpoints), else the temp dir."""
    try:
        st = os.statvfs("/dev/shm")
        if st.f_bavail * st.f_frsize > 32 * 2 ** 30:
            return Path(tempfile.mkdtemp(prefix="gpu-check-", dir="/dev/shm"))
    except OSError:
        pass
    return Path(tempfile.mkdtemp(prefix="gpu-check-"))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="scripts/gpu-check.sh", description=__doc__.split("\n\n")[0])
    p.add_argument("outdir", type=Path, help="gets gpu-check.json, gpu-check.md and gpu-check.log")
    p.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (what the test suite runs)")
    p.add_argument("--only", default="", help=f"comma-separated stages to run (of {', '.join(STAGES)}; data is "
                                               "needed by tests, bench and resume)")
    p.add_argument("--cells", default="", help="comma-separated bench cell names (default: the profile's)")
    p.add_argument("--budget", type=float, default=None, help="seconds for everything (default: the profile's)")
    p.add_argument("--keep", action="store_true", help="keep the work dir (run dirs, data, job logs)")
    args = p.parse_args(argv)
    only = tuple(s for s in args.only.split(",") if s)
    bad = [s for s in only if s not in STAGES]
    if bad:
        p.error(f"--only: unknown stage {bad[0]!r}; stages are {', '.join(STAGES)}")
    profile = "cpu" if args.cpu else "gpu"
    names = tuple(s for s in args.cells.split(",") if s)
    unknown = [n for n in names if n not in {c["name"] for c in cells(PROFILES[profile])}]
    if unknown:
        p.error(f"--cells: unknown cell {unknown[0]!r}; cells are {', '.join(c['name'] for c in cells(PROFILES[profile]))}")
    args.outdir.mkdir(parents=True, exist_ok=True)
    (args.outdir / "gpu-check.log").write_text("")
    work = work_dir()
    check = Check(args.outdir, profile, only, names, args.budget, work)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # a timeout from outside: clean up below
    try:
        check.main()
    finally:
        for proc in list(check.live):
            kill(proc)
        check.write()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print((args.outdir / "gpu-check.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
