"""The local executor through the real CLI: slots and threads, progress, --detach, cancel,
Ctrl-C (jobs checkpoint, the next submit resumes them)."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ablate.core import rundir
from launch_helpers import ROOT, cli, run_dirs, states, steps_unbroken, wait_until
from launch_helpers import grid_file, no_leftover_jobs, one_thread  # noqa: F401  (fixtures)

# A cell these tests interrupt must still be running when the signal lands, however loaded the
# machine: by construction, not by timing. No test waits for it to finish; each resumes it, checks
# the resumed attempt carries on from its checkpoint, and cancels it.
LONG = dict(steps=10 ** 7, log_interval=50, eval_interval=500, ckpt_interval=500)


def test_two_cpu_slots_share_the_cores_and_show_progress(grid_file):
    grid = grid_file(grid="{arch: [gpt, ngpt]}")
    r = cli("submit", grid, "--executor", "local", "--jobs", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "on 2 local slot(s) (cpu x1, cpu x1)" in r.stdout and "grid g: 2 done" in r.stdout
    assert "final val loss" in r.stdout
    for d in run_dirs("g"):
        st = rundir.read_status(d)
        assert st["state"] == "done" and st["executor"] == "local" and st["slot"] == "cpu x1"
        assert "1 threads" in st["device_name"]  # os.cpu_count() // 2 jobs (this machine: 2 cores)
        assert st["job_id"].isdigit() and st["stderr"].endswith("_0_log.err")
    r = cli("submit", grid, "--executor", "local")
    assert "nothing to submit" in r.stdout
    r = cli("status", grid)
    assert r.returncode == 0 and r.stdout.startswith("grid g: 2 done"), r.stdout


def test_one_job_per_gpu_slot_sees_only_its_gpu(grid_file):
    """--gpus 0,1 on this CPU-only machine (device: cpu): submitit's LocalExecutor sets each
    job's CUDA_VISIBLE_DEVICES to its slot, as on a GPU host."""
    grid = grid_file(grid="{arch: [gpt, ngpt]}", resources="{gpus: 1}")
    r = cli("submit", grid, "--executor", "local", "--gpus", "0,1")
    assert r.returncode == 0 and "2 local slot(s) (gpu 0, gpu 1)" in r.stdout, r.stdout + r.stderr
    seen = set()
    for d in run_dirs("g"):
        st = rundir.read_status(d)
        assert st["state"] == "done" and st["slot"] in ("gpu 0", "gpu 1")
        log = open(st["stderr"]).read()
        assert f"CUDA_VISIBLE_DEVICES='{st['slot'][-1]}'" in log, log
        seen.add(st["slot"])
    assert seen == {"gpu 0", "gpu 1"}


def test_detach_then_status_then_cancel_then_retry_resumes(grid_file):
    grid = grid_file(grid="{arch: [gpt, ngpt]}", **LONG)
    t0 = time.time()
    r = cli("submit", grid, "--executor", "local", "--detach")  # one slot: the second cell waits
    assert r.returncode == 0 and time.time() - t0 < 20, r.stdout + r.stderr
    assert "detached" in r.stdout
    first, second = wait_until(lambda: [d for d in run_dirs("g") if rundir.read_status(d).get("step", 0) >= 100]
                               and run_dirs("g"), 60, "a cell at step 100")
    running = first if rundir.read_status(first).get("step", 0) >= 100 else second
    waiting = second if running == first else first
    r = cli("status", grid)
    assert "1 running, 1 queued" in r.stdout and "waiting for a free slot" in r.stdout, r.stdout
    assert "never submitted twice" in cli("submit", grid, "--executor", "local", "--retry", "--detach").stdout

    r = cli("cancel", grid)
    assert r.returncode == 0 and r.stdout.count("cancelled ") == 2, r.stdout
    wait_until(lambda: rundir.read_status(running).get("ckpt_step"), 30, "the checkpoint on SIGTERM")
    runner = int(rundir.read_status(running)["runner_pid"])
    wait_until(lambda: not _alive(runner), 30, "the runner to exit")
    assert states("g") == ["cancelled", "cancelled"]
    ckpt_step = rundir.read_status(running)["ckpt_step"]
    assert ckpt_step >= 100 and not (waiting / rundir.METRICS).exists()
    r = cli("status", grid)
    assert "2 cancelled" in r.stdout

    r = cli("submit", grid, "--executor", "local", "--retry", "cancelled", "--where", f"run_id={running.name}",
            "--detach")
    assert r.returncode == 0 and "submitted 1 cell" in r.stdout, r.stdout + r.stderr
    resumed_and_cancelled(grid, running, ckpt_step)
    assert rundir.state_of(waiting) == "cancelled"  # --where: the other cell was left alone


def test_ctrl_c_stops_jobs_with_a_checkpoint_and_the_next_submit_resumes(grid_file):
    grid = grid_file(**LONG)
    # Ctrl-C as a terminal delivers it: a suite started in the background (`make test &`) inherits
    # SIGINT ignored, and Python then never turns SIGINT into KeyboardInterrupt
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", "submit", str(grid), "--executor", "local"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        run_dir = wait_until(lambda: [d for d in run_dirs("g") if rundir.read_status(d).get("step", 0) >= 100],
                             60, "step 100")[0]
        proc.send_signal(signal.SIGINT)
        out, _ = proc.communicate(timeout=60)
    finally:
        proc.kill()  # a no-op once it has exited
    assert proc.returncode == 130 and "stopping: running cells save a checkpoint" in out, out
    st = rundir.read_status(run_dir)
    assert (st["state"], st["note"]) == ("pending", "preempted") and st["ckpt_step"] >= 100
    r = cli("submit", grid, "--executor", "local", "--detach")  # pending: resumed without --retry
    assert r.returncode == 0 and "submitted 1 cell" in r.stdout, r.stdout + r.stderr
    resumed_and_cancelled(grid, run_dir, st["ckpt_step"])


def resumed_and_cancelled(grid, run_dir, ckpt_step: int) -> None:
    """The second attempt of run_dir resumed at ckpt_step and carries on with no gap and no repeated
    step in its metrics; then cancel it (it never finishes: LONG) and wait for its runner."""
    wait_until(lambda: rundir.read_status(run_dir).get("attempts") == 2
               and rundir.read_status(run_dir).get("step", 0) >= ckpt_step + 100, 120, "the resumed attempt to advance")
    steps = steps_unbroken(run_dir, rundir.METRICS, 50, None)
    assert steps[-1] >= ckpt_step + 100
    runner = int(rundir.read_status(run_dir)["runner_pid"])
    r = cli("cancel", grid)
    assert r.returncode == 0 and "cancelled " in r.stdout, r.stdout + r.stderr
    wait_until(lambda: not _alive(runner), 60, "the runner to exit")
    st = rundir.read_status(run_dir)
    assert st["state"] == "cancelled" and st["ckpt_step"] > ckpt_step


def _alive(pid: int) -> bool:
    from ablate.launch.procs import pid_alive

    return pid_alive(pid)


def test_two_submits_never_put_more_cells_than_cores_on_the_machine(tmp_path):
    """--jobs bounds one runner; the machine's cores bound all of them (launch/slots.py). Two
    detached submits of two grids, two jobs each, on a 2-core machine: never more than two
    training processes at once, counted from the processes themselves."""
    import subprocess
    import sys
    import time

    from launch_helpers import ROOT, write_grid

    env = {**os.environ, "ABLATE_SLOT_CPUS": "2"}
    grids = [write_grid(tmp_path, name=n, grid=f"{{seed: [0, 1, 2], lr: [{lr}]}}", steps=150)  # no shared cell
             for n, lr in (("left", 0.001), ("right", 0.002))]
    for g in grids:
        r = subprocess.run([sys.executable, "-m", "ablate.cli", "submit", str(g), "--executor", "local", "--jobs", "2",
                            "--detach"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr

    def jobs() -> int:  # the processes that train a cell of these grids: forked by a runner (or submitit's)
        cmds, parents = {}, {}
        for proc in Path("/proc").glob("[0-9]*"):
            try:
                cmds[proc.name] = (proc / "cmdline").read_bytes().replace(b"\0", b" ")
                parents[proc.name] = (proc / "stat").read_text().rsplit(")", 1)[1].split()[1]
            except (OSError, IndexError):
                continue
        ours = {pid for pid, cmd in cmds.items() if str(tmp_path).encode() in cmd}
        runner = b"ablate.launch.local"
        return sum(b"submitit.core._submit" in cmds[pid] or (runner in cmds[pid] and runner in cmds.get(parents[pid], b""))
                   for pid in ours)

    most, deadline = 0, time.time() + 600
    states = lambda: [json.loads(p.read_text()).get("state") for p in tmp_path.glob("runs/*/*/status.json")]  # noqa: E731
    while time.time() < deadline and not (len(states()) == 6 and set(states()) <= {"done", "failed"}):
        most = max(most, jobs())
        time.sleep(0.05)
    assert sorted(states()) == ["done"] * 6
    assert 1 <= most <= 2, most
