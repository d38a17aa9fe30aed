"""The run-dir file helpers: atomic replacement and torn-line tolerant reading."""
import json

import pytest

from ablate.core import rundir


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    path = tmp_path / "status.json"
    rundir.write_json_atomic(path, {"state": "running"})
    with pytest.raises(TypeError):
        rundir.write_json_atomic(path, {"state": "done", ("tuple", "key"): 1})  # not JSON: fails mid-write
    assert json.loads(path.read_text()) == {"state": "running"}
    assert [p.name for p in tmp_path.iterdir()] == ["status.json"]


def test_atomic_file_replaces_binary_content_whole(tmp_path):
    path = tmp_path / "sub" / "train.bin"
    with rundir.atomic_file(path, "wb") as f:
        f.write(b"\x01\x02")
        assert not path.exists()  # nothing visible until the rename
    assert path.read_bytes() == b"\x01\x02"


def test_torn_last_line_is_skipped_and_truncation_drops_replayed_steps(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps({"step": s, "loss": 1.0 / (s + 1)}) + "\n" for s in range(5)) + '{"step": 5, "lo')
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2, 3, 4]
    rundir.truncate_jsonl_after(path, "step", 2)
    assert [r["step"] for r in rundir.read_jsonl(path)] == [0, 1, 2]
    assert path.read_text().endswith("\n") and len(list(tmp_path.iterdir())) == 1


def test_a_heartbeat_never_writes_back_a_state_that_cancel_replaced(tmp_path, monkeypatch):
    """The heartbeat reads status.json, is slow, and writes it back; a cancel lands in between.
    The lock makes the cancel wait, so it is applied to the heartbeat's result, not lost."""
    import threading
    import time

    run = tmp_path / "run"
    rundir.update_status(run, state="running")
    real_read = rundir.read_status
    inside, release = threading.Event(), threading.Event()

    def slow_read(run_dir):
        status = real_read(run_dir)
        if threading.current_thread().name == "heartbeat":
            inside.set()
            release.wait(5)
        return status

    monkeypatch.setattr(rundir, "read_status", slow_read)
    beat = threading.Thread(target=rundir.update_status, args=(run,), kwargs={"heartbeat": 1.0}, name="heartbeat")
    beat.start()
    assert inside.wait(5)
    cancel = threading.Thread(target=rundir.update_status, args=(run,), kwargs={"state": "cancelled"})
    cancel.start()
    time.sleep(0.2)  # without the lock the cancel would be written now, then overwritten
    release.set()
    beat.join(5), cancel.join(5)
    status = real_read(run)
    assert (status["state"], status["heartbeat"]) == ("cancelled", 1.0)


def test_a_run_id_in_several_grid_folders_resolves_to_its_best_copy(tmp_path):
    """runs/ trees from before one-run-dir-per-run-id may hold a run id twice: done wins, then a
    live state, then the newest; a link is a view, never a copy; a name that is no run id is not a run."""
    from ablate.core import rundir

    def run(grid, rid, state, updated):
        d = tmp_path / grid / rid
        d.mkdir(parents=True)
        rundir.write_json_atomic(d / rundir.STATUS, {"state": state, "updated": updated})
        return d

    failed = run("a", "0123456789", "failed", 3.0)
    done = run("b", "0123456789", "done", 1.0)
    old, new = run("a", "aaaaaaaaaa", "failed", 1.0), run("c", "aaaaaaaaaa", "cancelled", 2.0)
    live = run("c", "bbbbbbbbbb", "running", 1.0)
    (tmp_path / "a" / ".submitit").mkdir()
    (tmp_path / "a" / "not-a-run").mkdir()
    rundir.link_run(live, tmp_path / "d" / "bbbbbbbbbb")
    found = rundir.locate_runs(tmp_path)
    assert found == {"0123456789": done, "aaaaaaaaaa": new, "bbbbbbbbbb": live}
    assert (tmp_path / "d" / "bbbbbbbbbb").resolve() == live.resolve() and failed.exists() and old.exists()
