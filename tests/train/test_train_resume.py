"""Exact resume: a run killed (SIGKILL) or preempted (SIGUSR2) and restarted produces the same
evals.jsonl, bit for bit, as the same run uninterrupted (CPU, fp32, same seed)."""
import random
import signal
import time

import pytest
import torch

from ablate.core.errors import AblateError
from ablate.core import rundir
from ablate.train.signals import EXIT_PREEMPTED, Preempted
from ablate.train.job import train
from train_helpers import evals_of, log_of, read_lines, train_subprocess

LONG = dict(max_iters=200, eval_interval=20, eval_iters=2, log_interval=5, ckpt_interval=15)


def _wait_for_step(proc, run_dir, step, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"trainer exited (rc {proc.returncode}) before step {step}:\n{log_of(run_dir)}")
        if rundir.read_status(run_dir).get("step", 0) >= step:
            return
        time.sleep(0.002)
    pytest.fail(f"step {step} not reached in {timeout}s")


def _metrics_without_timing(run_dir):
    return [{k: m[k] for k in ("step", "tokens", "loss", "lr")} for m in read_lines(run_dir / rundir.METRICS)]


@pytest.mark.parametrize("arch", ["gpt", "ngpt"])
def test_sigkill_at_a_random_step_then_restart_is_exact(make_run, arch):
    reference = make_run("reference", arch=arch, **LONG)
    assert train(reference) == "done"

    run_dir = make_run("killed", arch=arch, **LONG)
    target = random.Random().randint(20, 180)  # after the first checkpoint (step 15)
    proc = train_subprocess(run_dir)
    _wait_for_step(proc, run_dir, target)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=30) == -signal.SIGKILL, f"target step {target}"
    killed_at = rundir.read_status(run_dir)["step"]
    ckpt_step = torch.load(run_dir / rundir.CKPT, weights_only=True)["step"]
    assert rundir.read_status(run_dir)["state"] == "running" and 15 <= ckpt_step <= killed_at < 200
    with open(run_dir / rundir.METRICS, "a") as f:  # and a line torn by the kill
        f.write('{"step": 999, "tokens": 12')

    proc = train_subprocess(run_dir, log_name="resume")
    assert proc.wait(timeout=120) == 0, log_of(run_dir, "resume")
    assert f"resumed from {run_dir / rundir.CKPT} at step {ckpt_step}" in log_of(run_dir, "resume")
    status = rundir.read_status(run_dir)
    assert (status["state"], status["attempts"]) == ("done", 2)
    assert evals_of(run_dir) == evals_of(reference), f"killed at step {killed_at}, resumed from {ckpt_step}"
    assert _metrics_without_timing(run_dir) == _metrics_without_timing(reference)  # no torn line, no duplicates
    s, s_ref = rundir.read_json(run_dir / rundir.SUMMARY), rundir.read_json(reference / rundir.SUMMARY)
    assert s["final_val_loss"] == s_ref["final_val_loss"] and s["ckpt_bytes"] == s_ref["ckpt_bytes"]
    a, b = torch.load(run_dir / "model.pt", weights_only=True), torch.load(reference / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sigusr2_checkpoints_exits_75_and_resumes_exactly(make_run):
    reference = make_run("reference", **LONG)
    assert train(reference) == "done"

    run_dir = make_run("preempted", **LONG)
    proc = train_subprocess(run_dir)
    _wait_for_step(proc, run_dir, 50)
    proc.send_signal(signal.SIGUSR2)
    assert proc.wait(timeout=60) == EXIT_PREEMPTED, log_of(run_dir)
    assert "stopped by SIGUSR2" in log_of(run_dir)
    status = rundir.read_status(run_dir)
    ckpt_step = torch.load(run_dir / rundir.CKPT, weights_only=True)["step"]
    assert (status["state"], status["note"]) == ("pending", "preempted")
    assert status["ckpt_step"] == ckpt_step >= 50 and ckpt_step < 200
    assert ckpt_step % LONG["ckpt_interval"] != 0 or ckpt_step == status["step"]  # saved on the signal, not by schedule
    assert max(m["step"] for m in read_lines(run_dir / rundir.METRICS)) <= ckpt_step
    assert not (run_dir / rundir.SUMMARY).exists()

    assert train(run_dir) == "done"  # the launcher re-runs the cell: it resumes
    assert rundir.read_status(run_dir)["attempts"] == 2
    assert evals_of(run_dir) == evals_of(reference)
    assert _metrics_without_timing(run_dir) == _metrics_without_timing(reference)


def test_run_killed_before_its_first_checkpoint_starts_over(make_run):
    reference = make_run("reference", max_iters=20, ckpt_interval=0)
    assert train(reference) == "done"
    run_dir = make_run("early", max_iters=20, ckpt_interval=0)
    rundir.append_jsonl(run_dir / rundir.METRICS, {"step": 5, "tokens": 1, "loss": 9.0, "lr": 0.1})  # a lost attempt's
    rundir.append_jsonl(run_dir / rundir.EVALS, {"step": 0, "tokens": 0, "elapsed": 0.1, "val_loss": 9.0, "train_loss": 9.0})
    assert train(run_dir) == "done"
    assert evals_of(run_dir) == evals_of(reference)
    assert _metrics_without_timing(run_dir) == _metrics_without_timing(reference)


def test_rerunning_a_done_run_trains_nothing(make_run):
    run_dir = make_run(max_iters=10, ckpt_interval=0)
    assert train(run_dir) == "done"
    evals = evals_of(run_dir)
    assert train(run_dir) == "done"
    assert evals_of(run_dir) == evals and rundir.read_json(run_dir / rundir.SUMMARY)["steps"] == 10


def test_a_checkpoint_from_another_config_is_refused(make_run):
    run_dir = make_run(max_iters=10, ckpt_interval=5, keep_ckpt=True)
    assert train(run_dir) == "done"
    doc = rundir.read_json(run_dir / rundir.CONFIG)
    doc["config"]["lr"] = 1e-4  # config.json edited in place: the old weights must not be reused silently
    rundir.write_json_atomic(run_dir / rundir.CONFIG, doc)
    with pytest.raises(AblateError, match="belongs to another config"):
        train(run_dir)
    assert rundir.read_status(run_dir)["state"] == "failed"


@pytest.mark.parametrize("bad", ['{"step": null, "loss": 1.0}', '{"step": "7", "loss": 1.0}', '{"loss": 1.0}',
                                 '{"step": 1e300, "loss": 1.0}'])
def test_a_bad_line_in_the_logs_does_not_stop_a_resume(make_run, monkeypatch, bad):
    """Resuming truncates the logs after the checkpoint's step: a line whose step is not a step
    (hand-edited, another tool) is dropped there, not a crash of every retry."""
    from ablate.train import trainer as trainer_mod

    run_dir = make_run(max_iters=20, ckpt_interval=10, log_interval=5, eval_interval=10)
    monkeypatch.setattr(trainer_mod.Trainer, "stop_requested", lambda self: self.step == 10)
    with pytest.raises(trainer_mod.Preempted):
        train(run_dir)
    monkeypatch.undo()
    for name in (rundir.METRICS, rundir.EVALS):
        with open(run_dir / name, "a") as f:
            f.write(bad + "\n")
    assert train(run_dir) == "done"
    steps = [r["step"] for r in read_lines(run_dir / rundir.METRICS)]
    assert steps == [5, 10, 15, 20], steps
    assert [e["step"] for e in evals_of(run_dir)] == [0, 10, 20]


# ---- a cancel is a cancel at any moment of a job's life

def test_a_job_whose_cell_was_cancelled_before_it_started_trains_nothing(make_run):
    """`ablate cancel` marked the cell (its SIGTERM came while the job was starting, before any
    handler of ours): the job must not claim it back as running and train until a SIGKILL."""
    from ablate.train.signals import Cancelled

    run_dir = make_run(max_iters=20)
    rundir.update_status(run_dir, state="cancelled", attempt_id="a1", note="cancelled by ablate cancel")
    with pytest.raises(Cancelled):
        train(run_dir, "a1")
    status = rundir.read_status(run_dir)
    assert status["state"] == "cancelled" and status.get("started") is None
    assert not (run_dir / rundir.METRICS).exists() and not (run_dir / rundir.CKPT).exists()


def test_a_signal_caught_while_the_job_starts_stops_it_before_any_step(make_run):
    """The job installs its StopFlag first (launch/jobs.py CellJob): a SIGTERM during its slow
    start-up (importing torch, building the model) is kept, and the trainer stops before step 1."""
    from ablate.train.signals import StopFlag

    run_dir = make_run(max_iters=20)
    rundir.update_status(run_dir, state="queued", attempt_id="a1")
    with StopFlag() as stop:
        signal.raise_signal(signal.SIGTERM)  # handled: the flag is set, nothing else happens
        with pytest.raises(Preempted) as e:
            train(run_dir, "a1", stop)
    assert e.value.step == 0 and rundir.read_status(run_dir)["state"] == "pending"
    assert rundir.read_jsonl(run_dir / rundir.METRICS) == [] and rundir.read_jsonl(run_dir / rundir.EVALS) == []


def test_a_cancel_whose_signal_was_lost_still_stops_the_trainer(make_run):
    """status.json marked cancelled, no signal at all: the trainer reads it within a few seconds,
    saves a checkpoint and ends cancelled (exit 75), never failed."""
    run_dir = make_run("lost-signal", **{**LONG, "max_iters": 100000})
    proc = train_subprocess(run_dir)
    _wait_for_step(proc, run_dir, 10)
    rundir.update_status(run_dir, state="cancelled", note="cancelled by ablate cancel")
    assert proc.wait(timeout=60) == EXIT_PREEMPTED, log_of(run_dir)
    status = rundir.read_status(run_dir)
    assert status["state"] == "cancelled" and 10 <= status["ckpt_step"] < 100000
    assert torch.load(run_dir / rundir.CKPT, weights_only=True)["step"] == status["ckpt_step"]
