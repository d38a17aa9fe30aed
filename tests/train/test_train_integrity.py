"""What a run dir trusts: one trainer at a time, state written only by the attempt that owns the
run, data keyed by its content (the run id follows the data), files as readable as the umask says."""
import json
import os
import signal
import socket
import time

import pytest

from ablate.core.errors import AblateError
from ablate.core import rundir
from ablate.plan.grid import load_grid
from ablate.data import corpora, prepare
from ablate.train.job import train
from train_helpers import log_of, train_subprocess


def _wait(predicate, timeout, what):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    pytest.fail(f"timed out waiting for {what}")


# ---- one trainer per run dir

def test_a_second_trainer_of_a_live_run_dir_exits_2_naming_the_holder(make_run):
    run_dir = make_run("busy", max_iters=10 ** 7, log_interval=10, eval_interval=10 ** 6, ckpt_interval=10 ** 6)
    first, second = train_subprocess(run_dir, log_name="first"), None
    try:
        _wait(lambda: rundir.read_status(run_dir).get("step", 0) >= 20 or first.poll() is not None, 120, "step 20")
        assert first.poll() is None, log_of(run_dir, "first")
        lines_before = len((run_dir / rundir.METRICS).read_text().splitlines())
        second = train_subprocess(run_dir, log_name="second")
        assert second.wait(timeout=120) == 2
        log = log_of(run_dir, "second")
        assert f"pid {first.pid} on host {socket.gethostname()}" in log and "Traceback" not in log, log
        assert len([l for l in log.splitlines() if "error" in l]) == 1, log
        # the first trainer carries on, alone: its metrics stay one unbroken, increasing sequence
        _wait(lambda: len((run_dir / rundir.METRICS).read_text().splitlines()) > lines_before + 2, 60, "more steps")
        steps = [r["step"] for r in rundir.read_jsonl(run_dir / rundir.METRICS)]
        assert steps == sorted(set(steps)) and rundir.read_status(run_dir)["attempts"] == 1
    finally:
        for proc in (first, second):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(30)
    assert rundir.read_status(run_dir)["pid"] == first.pid  # the second one never wrote status.json


def test_the_lock_dies_with_its_holder(make_run):
    run_dir = make_run("relock", max_iters=10 ** 7, log_interval=10, eval_interval=10 ** 6, ckpt_interval=10 ** 6)
    first = train_subprocess(run_dir, log_name="first")
    _wait(lambda: rundir.read_status(run_dir).get("step", 0) >= 10 or first.poll() is not None, 120, "step 10")
    first.send_signal(signal.SIGKILL)
    first.wait(30)
    with rundir.train_lock(run_dir):  # free again: the kernel released it with the process
        pass


# ---- state writes belong to the attempt that owns the run

def test_a_job_of_a_superseded_attempt_neither_trains_nor_writes(make_run):
    run_dir = make_run("superseded", max_iters=10)
    rundir.update_status(run_dir, state="queued", attempt_id="new-attempt")
    with pytest.raises(rundir.Superseded, match="new-attempt"):
        train(run_dir, attempt="old-attempt")
    status = rundir.read_status(run_dir)
    assert (status["state"], status["attempt_id"]) == ("queued", "new-attempt")
    assert not (run_dir / rundir.METRICS).exists()


def test_a_trainer_stops_writing_once_another_attempt_owns_the_run(make_run, monkeypatch):
    """Someone takes the run over mid-training: the trainer's next write is refused, it stops, and
    status.json keeps the new owner's state (a lost attempt never flips the new one to failed)."""
    from ablate.train import trainer as trainer_mod

    run_dir = make_run("taken", max_iters=40, log_interval=5)
    rundir.update_status(run_dir, state="queued", attempt_id="mine")
    real = trainer_mod.Trainer.train_step

    def step_then_lose_it(self):
        loss = real(self)
        if self.step == 12:
            rundir.update_status(run_dir, state="queued", attempt_id="theirs", note="resubmitted")
        return loss

    monkeypatch.setattr(trainer_mod.Trainer, "train_step", step_then_lose_it)
    with pytest.raises(rundir.Superseded):
        train(run_dir, attempt="mine")
    status = rundir.read_status(run_dir)
    assert (status["state"], status["attempt_id"], status["note"]) == ("queued", "theirs", "resubmitted")
    assert status.get("step", 0) <= 12 and not (run_dir / rundir.SUMMARY).exists()


def test_update_status_is_compare_and_set(tmp_path):
    run = tmp_path / "run"
    rundir.update_status(run, state="running", attempt_id="a")
    assert rundir.update_status(run, expect={"attempt_id": "b"}, state="failed") is None
    assert rundir.update_status(run, expect={"attempt_id": "a", "state": ("queued", "pending")}, state="x") is None
    assert rundir.read_status(run)["state"] == "running"
    assert rundir.update_status(run, expect={"attempt_id": "a", "state": ("running",)}, state="done")["state"] == "done"


# ---- prepared data is keyed by content; the run id follows the data

GRID = """\
name: g
data: {{dataset: 'text:{corpus}', tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 10, device: cpu}}
grid: {{arch: [gpt]}}
"""


def test_an_edited_corpus_is_a_new_data_set_and_a_new_cell(tmp_path, corpus):
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(GRID.format(corpus=corpus))
    before = load_grid(grid_path).cells[0]
    first = prepare.prepare(f"text:{corpus}", "char")
    old_train = (first / "train.bin").read_bytes()

    text = corpus.read_text()
    corpus.write_text(text.replace("king", "kngi"))  # same characters, same vocab, other text
    assert corpora.vocab_size(f"text:{corpus}", "char") == json.loads((first / "meta.json").read_text())["vocab_size"]
    second = prepare.prepare(f"text:{corpus}", "char")
    assert second != first and (second / "train.bin").read_bytes() != old_train
    assert json.loads((second / "meta.json").read_text())["data_id"] == corpora.data_id(f"text:{corpus}")

    after = load_grid(grid_path).cells[0]
    assert after.config.data_id != before.config.data_id and after.run_id != before.run_id

    corpus.write_text(text)  # the original bytes again: the original data set and cell
    assert prepare.prepare(f"text:{corpus}", "char") == first
    assert load_grid(grid_path).cells[0].run_id == before.run_id


def test_a_trainer_refuses_data_that_changed_since_the_cell_was_planned(tmp_path, corpus):
    grid_path = tmp_path / "g.yaml"
    grid_path.write_text(GRID.format(corpus=corpus))
    cell = load_grid(grid_path).cells[0]
    cell.run_dir.mkdir(parents=True)
    rundir.write_json_atomic(cell.run_dir / rundir.CONFIG, {"config": cell.config.to_dict(), "run_id": cell.run_id})
    corpus.write_text(corpus.read_text() + "a new last line\n")
    with pytest.raises(AblateError, match="changed since this cell was planned"):
        train(cell.run_dir)
    assert rundir.read_status(cell.run_dir)["state"] == "failed"
    assert not (cell.run_dir / rundir.METRICS).exists()


def test_named_corpora_keep_their_run_ids():
    """data_id is hashed only when set: adding it left every shakespeare / openwebtext run id as it was."""
    from ablate.core.config import make_config

    cfg = make_config({"dataset": "shakespeare"})
    assert cfg.data_id is None and "data_id" not in cfg.hashed_dict()


# ---- files respect the umask

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_files_from_the_atomic_helper_respect_the_umask(tmp_path, corpus, umask):
    old = os.umask(umask)
    try:
        rundir.write_json_atomic(tmp_path / "status.json", {"state": "done"})
        with rundir.atomic_file(tmp_path / "ckpt.pt", "wb") as f:
            f.write(b"x")
        path = prepare.prepare(f"text:{corpus}", "char")
    finally:
        os.umask(old)
    for p in (tmp_path / "status.json", tmp_path / "ckpt.pt", path / "train.bin", path / "meta.json"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask, (p, oct(p.stat().st_mode))


# ---- a full disk

class _FullDisk:
    """A file whose writes fail with ENOSPC past `room` bytes, as a full disk's do."""

    def __init__(self, f, room: int):
        self.f, self.room = f, room

    def write(self, data):
        if len(data) > self.room:
            raise OSError(28, "No space left on device")
        self.room -= len(data)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def test_a_full_disk_is_named_and_the_previous_checkpoint_kept(make_run, monkeypatch):
    """torch.save into a full disk says "enforce fail at inline_container.cc ... unexpected pos":
    the run fails with one line naming the full disk, and the last good checkpoint is intact."""
    import torch

    run_dir = make_run(max_iters=20, ckpt_interval=5)
    real_fdopen, saves = os.fdopen, []

    def fdopen(fd, mode="r", *args, **kwargs):
        f = real_fdopen(fd, mode, *args, **kwargs)
        if ".ckpt.pt." in os.readlink(f"/proc/self/fd/{fd}"):
            saves.append(fd)
            if len(saves) >= 2:  # the first checkpoint (step 5) fits; the disk is full from the next one on
                return _FullDisk(f, room=1000)
        return f
    monkeypatch.setattr(os, "fdopen", fdopen)
    with pytest.raises(AblateError, match=rf"no space left on device at {run_dir} \(writing ckpt.pt\)"):
        train(run_dir)
    monkeypatch.undo()
    status = rundir.read_status(run_dir)
    assert status["state"] == "failed" and status["error"].splitlines()[-1].endswith(
        "free space, then run it again; the previous file is kept"), status["error"]
    assert torch.load(run_dir / rundir.CKPT, weights_only=True)["step"] == 5
    assert not list(run_dir.glob(".ckpt.pt.*.tmp"))
    assert train(run_dir) == "done"  # space again: it resumes from step 5
