"""Reconciling status.json with the scheduler: squeue / sacct parsing (fake binaries), local pids,
and the state a cell is really in when its job died without a word."""
import os
import subprocess
import sys

import pytest

from ablate.core import rundir
from ablate.launch import procs, slurm
from ablate.launch import state as scheduler
from ablate.launch.executor import JobView
from ablate.launch.executors import executor
from ablate.launch.state import effective_state


NOT_FOUND = "echo \"$0: command not found\" >&2; exit 127\n"


def fake_bin(tmp_path, monkeypatch, **scripts):
    """Shell scripts named like Slurm commands, first on PATH; the Slurm commands not given act
    as if not installed (a real Slurm may be installed here)."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir(exist_ok=True)
    for name, body in {"squeue": NOT_FOUND, "sacct": NOT_FOUND, "scontrol": NOT_FOUND, **scripts}.items():
        (bin_dir / name).write_text("#!/bin/sh\n" + body)
        (bin_dir / name).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return bin_dir


SQUEUE = """echo "$@" >> "$(dirname "$0")/squeue.args"
cat <<'X'
12_0|RUNNING|None
12_1|PENDING|JobArrayTaskLimit
12_2|COMPLETED|None
13|PENDING|BeginTime
X
"""
SACCT = """cat <<'X'
12_2|COMPLETED
12_3|RUNNING
12_3|TIMEOUT
14|CANCELLED by 0
16_0|COMPLETED
16_[0-2,4%1]|CANCELLED by 0
X
"""


def test_slurm_views_from_squeue_then_sacct(tmp_path, monkeypatch):
    bin_dir = fake_bin(tmp_path, monkeypatch, squeue=SQUEUE, sacct=SACCT)
    views = slurm.slurm_views(["12_0", "12_1", "12_2", "12_3", "13", "14", "15"])
    assert views["12_0"] == JobView("12_0", "RUNNING", True, "None")
    assert views["12_1"] == JobView("12_1", "PENDING", True, "JobArrayTaskLimit")
    assert views["13"].active and views["13"].reason == "BeginTime"       # requeued, waiting to start again
    assert views["12_2"] == JobView("12_2", "COMPLETED", False)
    assert views["12_3"] == JobView("12_3", "TIMEOUT", False)             # the last sacct record wins
    assert views["14"] == JobView("14", "CANCELLED", False)
    assert views["15"] == JobView("15", "UNKNOWN", False)                 # accounting never heard of it
    assert "-j 12,13,14,15" in (bin_dir / "squeue.args").read_text()  # one call, array ids collapsed
    views = slurm.slurm_views(["16_0", "16_2", "16_4"])              # cancelled before they started
    assert [views[j].state for j in ("16_0", "16_2", "16_4")] == ["COMPLETED", "CANCELLED", "CANCELLED"]


def test_without_sacct_a_job_gone_from_squeue_has_ended(tmp_path, monkeypatch):
    fake_bin(tmp_path, monkeypatch, squeue=SQUEUE)
    views = slurm.slurm_views(["12_0", "12_2", "99"])
    assert views["12_0"].active and views["12_2"] == JobView("12_2", "COMPLETED", False)
    assert views["99"] == JobView("99", "GONE", False)


def test_a_missing_command_is_no_answer():
    assert slurm.run_command(["ablate-no-such-command"]) is None


def test_squeue_with_only_purged_ids_means_nothing_active(tmp_path, monkeypatch):
    fake_bin(tmp_path, monkeypatch, squeue="echo 'slurm_load_jobs error: Invalid job id specified' >&2; exit 1\n",
             sacct="exit 1\n")
    assert slurm.slurm_views(["7"]) == {"7": JobView("7", "GONE", False)}


def test_a_controller_that_does_not_answer_is_not_taken_for_an_ended_job(tmp_path, monkeypatch):
    fake_bin(tmp_path, monkeypatch, squeue="echo 'Unable to contact slurm controller' >&2; exit 1\n")
    view = slurm.slurm_views(["7"])["7"]
    assert view.active is None
    cell = scheduler.CellState("r", tmp_path, {"state": "running"}, "running", view)
    assert cell.active  # submit must not run it again


@pytest.mark.parametrize("status, job, expected", [
    ({"state": "running", "started": 1}, JobView("1", "RUNNING", True), ("running", "")),
    ({"state": "queued"}, JobView("1", "PENDING", True, "Resources"), ("queued", "pending: Resources")),
    ({"state": "queued"}, JobView("1", "RUNNING", True), ("running", "")),
    ({"state": "pending", "note": "preempted"}, JobView("1", "PENDING", True, "BeginTime"),
     ("queued", "requeued after preemption (pending)")),
    ({"state": "cancelled"}, JobView("1", "COMPLETING", True), ("cancelled", "job still completing")),
    ({"state": "done"}, JobView("1", "COMPLETED", False), ("done", "")),
    ({"state": "failed", "error": "x"}, JobView("1", "FAILED", False), ("failed", "")),
    ({"state": "pending", "note": "preempted"}, JobView("1", "TIMEOUT", False), ("pending", "")),
    ({"state": "running", "started": 1}, JobView("3_1", "TIMEOUT", False),
     ("failed", "job 3_1 ended TIMEOUT without writing a final state")),
    ({"state": "running", "started": 1}, JobView("3", "NODE_FAIL", False),
     ("failed", "job 3 ended NODE_FAIL without writing a final state")),
    ({"state": "running", "started": 1}, JobView("3", "CANCELLED", False),
     ("cancelled", "job 3 CANCELLED without a final state")),
    ({"state": "queued"}, JobView("3", "CANCELLED", False), ("cancelled", "cancelled before it started (slurm CANCELLED)")),
    ({"state": "queued"}, JobView("3", "FAILED", False), ("failed", "job 3 ended FAILED without writing a final state")),
    ({"state": "running"}, JobView("3", "UNREACHABLE", None, "squeue failed"), ("running", "slurm unreachable (squeue failed)")),
    ({}, None, ("new", "")),
])
def test_effective_state_slurm(status, job, expected):
    assert effective_state(status, job, executor("slurm")) == expected


def test_effective_state_local_runner_gone_before_the_cell_started():
    assert effective_state({"state": "queued"}, JobView("5", "GONE", False), executor("local")) == \
        ("pending", "never started: its local runner stopped")
    assert effective_state({"state": "running", "started": 1}, JobView("5", "GONE", False), executor("local"))[0] == "failed"


def test_local_view_follows_the_job_then_the_runner(tmp_path):
    me = str(os.getpid())
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    assert procs.pid_alive(me) and not procs.pid_alive(dead.pid) and not procs.pid_alive("x")
    host = {"host": __import__("socket").gethostname()}
    assert procs.local_view({**host, "state": "running", "job_id": me}).active
    assert procs.local_view({**host, "state": "running", "job_id": str(dead.pid)}).active is False
    waiting = procs.local_view({**host, "state": "queued", "job_id": None, "runner_pid": int(me)})
    assert waiting.active and waiting.state == "WAITING"
    assert procs.local_view({**host, "state": "queued", "runner_pid": dead.pid}).active is False
    other = procs.local_view({"host": "elsewhere", "state": "running", "job_id": "1", "heartbeat": 0})
    assert other.active is False and other.state == "OTHER HOST"
    assert procs.local_view({"state": "done"}) is None


def test_reconcile_then_record_lost_writes_the_scheduler_state(tmp_path, monkeypatch):
    fake_bin(tmp_path, monkeypatch, squeue=SQUEUE, sacct=SACCT)

    class C:
        def __init__(self, rid):
            self.run_id, self.run_dir = rid, tmp_path / rid

    cells = [C("a"), C("b"), C("c"), C("d")]
    for c, st in zip(cells, [{"state": "running", "job_id": "12_0", "started": 1},
                             {"state": "running", "job_id": "12_3", "started": 1},
                             {"state": "done", "job_id": "12_2"},
                             {}]):
        c.run_dir.mkdir()
        if st:
            rundir.write_json_atomic(c.run_dir / rundir.STATUS, {**st, "executor": "slurm"})
    views = scheduler.reconcile(cells)
    assert [(v.state, v.active) for v in views] == [("running", True), ("failed", False), ("done", False),
                                                    ("new", False)]
    assert [v.run_id for v in scheduler.record_lost(views)] == ["b"]
    st = rundir.read_status(tmp_path / "b")
    assert st["state"] == "failed" and st["scheduler_state"] == "TIMEOUT" and "without writing" in st["error"]
    assert rundir.read_status(tmp_path / "a")["state"] == "running"  # live jobs are left alone
