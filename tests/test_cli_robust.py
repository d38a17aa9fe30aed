"""The command line under misuse: closed pipes, unwritable directories, `report --where`, a status
table without a grid, and help for every argument."""
import contextlib
import io
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from ablate.cli import parse_args
from ablate.core import rundir
from synthetic import write_run
from conftest import ROOT, ablate_cli, write_text_grid

GRID = """\
name: quickstart
data: {{dataset: 'text:{text}', tokenizer: char}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 16, batch_size: 4, max_iters: 5, device: cpu}}
grid: {{arch: [gpt, ngpt], lr: [0.001, 0.002, 0.003]}}
"""


@pytest.fixture
def grid(tmp_path):
    return write_text_grid(tmp_path, GRID, "quickstart.yaml", repeat=200)


@pytest.mark.parametrize("args", [("plan", "{grid}", "--json"), ("plan", "{grid}"), ("status",)])
def test_a_closed_pipe_ends_quietly(grid, args):
    """`ablate plan G --json | head`: the reader is gone before ablate writes."""
    proc = subprocess.Popen([sys.executable, "-m", "ablate.cli", *(a.format(grid=grid) for a in args)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()  # like `head` exiting
    err = proc.stderr.read()
    assert proc.wait(timeout=120) in (0, 141), err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def _not_writable_dir() -> Path | None:
    """A directory where even root cannot create anything (sysfs), or a 0555 one for other users."""
    if os.geteuid() != 0:
        d = Path(tempfile.mkdtemp())
        d.chmod(0o555)
        return d
    return Path("/sys") if Path("/sys/kernel").is_dir() else None


@pytest.mark.parametrize("what", ["runs", "data", "store"])
def test_an_unwritable_directory_is_one_line_naming_the_path(grid, tmp_path, what):
    base = _not_writable_dir()
    if base is None:
        pytest.skip("no directory here that the current user cannot write to")
    target = base / "ablate-test-not-writable"
    if what == "runs":
        r = ablate_cli("submit", grid, "--executor", "debug", env={"ABLATE_RUNS_DIR": str(target)})
    elif what == "data":
        r = ablate_cli("data", "prepare", "text", tmp_path / "corpus.txt", "--tokenizer", "char",
                       env={"ABLATE_DATA_DIR": str(target)})
    else:
        r = ablate_cli("report", grid, "--db", base / "ablate.duckdb")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ablate: error: ") and str(base) in lines[0], r.stderr
    assert "not permitted" in lines[0].lower() or "permission" in lines[0].lower(), r.stderr
    assert "writing process" not in lines[0]  # not blamed on a concurrent writer


def test_report_where_is_refused_not_ignored(grid):
    r = ablate_cli("report", grid, "--where", "arch=gpt")
    assert r.returncode == 2 and "report --where" in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_status_without_a_grid_keeps_its_columns_aligned(tmp_path):
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    for grid_name, arch in (("quickstart", "gpt"), ("g", "ngpt")):
        write_run(runs, grid_name, {"arch": arch}, state="failed", steps=200, error="boom")
    r = ablate_cli("status")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    head = next(l for l in lines if l.startswith("run_id"))
    rows = [l for l in lines if "/" in l.split(" ")[0]]
    assert len(rows) == 2, r.stdout
    for row in rows:
        assert row.index(" failed ") + 1 == head.index("state"), r.stdout
        assert row[head.index("job") - 1:].startswith(" 1 "), r.stdout
        assert row[head.index("note"):] == "boom", r.stdout


def _help(*argv) -> str:
    """What `ablate ARGV --help` prints."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit):
        parse_args([*argv, "--help"])
    return out.getvalue()


def _arguments(text: str) -> list[tuple[str, str]]:
    """(argument, its help) for every entry of a help text's argument sections: an entry is a
    line indented by two spaces, its help the text after the gap and the deeper lines below it."""
    entries = []
    for line in text.split("\n\n", 1)[1].splitlines():  # after the usage
        if re.match(r"^  \S", line):
            name, _, help_ = line.strip().partition("  ")
            entries.append([name, help_.strip()])
        elif re.match(r"^   +\S", line) and entries:
            entries[-1][1] += " " + line.strip()
    return [tuple(e) for e in entries]


def _subcommands(text: str) -> list[str]:
    """The verbs a help text lists (four-space entries under a {a,b} or a metavar)."""
    return re.findall(r"^    ([a-z]+)  +\S", text, flags=re.M)


def test_every_argument_has_help_and_data_prepare_reads_as_one_command():
    def walk(*path):
        text = _help(*path)
        yield path, text
        for verb in _subcommands(text):
            yield from walk(*path, verb)

    helps = dict(walk())
    assert {p[0] for p in helps if p} >= {"plan", "submit", "status", "report", "run", "train", "data", "query",
                                           "cancel"} and ("data", "prepare") in helps
    missing = [f"ablate {' '.join(path)}: {name}" for path, text in helps.items() for name, help_ in _arguments(text)
               if not help_]
    assert missing == [], missing
    usage = " ".join(helps[("data", "prepare")].split("\n\n")[0].split())  # argparse wraps it to the terminal
    assert usage.startswith("usage: ablate data prepare ") and usage.endswith(" DATASET [FILE]"), usage
    assert "shakespeare" in helps[("data", "prepare")] and "corpus:" in helps[("data", "prepare")]


@pytest.mark.parametrize("args, message", [
    (("cancel", "--grace", "nan"), "--grace nan: expected seconds, a finite number >= 0"),
    (("cancel", "--grace", "-1"), "--grace -1.0: expected seconds, a finite number >= 0"),
    (("cancel", "--grace", "inf"), "--grace inf: expected seconds, a finite number >= 0"),
    (("plan", "--memory", "--gpu-mem", "inf"), "--gpu-mem inf: expected GiB of GPU memory, a finite number > 0"),
    (("plan", "--memory", "--gpu-mem", "nan"), "--gpu-mem nan: expected GiB of GPU memory, a finite number > 0"),
])
def test_numeric_options_are_finite_and_in_range(tmp_path, args, message):
    """nan compares false with everything: `--grace nan` passed a `< 0` check and killed jobs at
    once, without a checkpoint."""
    grid = write_text_grid(tmp_path, GRID, "g.yaml")
    r = ablate_cli(args[0], grid, *args[1:])
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [f"ablate: error: {message}"], r.stderr


@pytest.mark.parametrize("var", ["ABLATE_RUNS_DIR", "ABLATE_REPORTS_DIR", "ABLATE_DATA_DIR"])
def test_a_root_that_is_a_file_is_named(grid, tmp_path, var):
    a_file = tmp_path / "not-a-dir"
    a_file.write_text("")
    r = ablate_cli("run", grid, "--executor", "debug", env={var: str(a_file)})
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"ablate: error: {a_file} is a file, where ablate needs a directory (runs/, data/, reports/ or the "
        "ABLATE_RUNS_DIR / ABLATE_DATA_DIR / ABLATE_REPORTS_DIR they point at)"), r.stderr


@pytest.mark.parametrize("argv", [["submit", "--retry", "failed,bogus", "{grid}"], ["submit", "{grid}", "--retry",
                                                                                  "failed,bogus"]])
def test_a_wrong_retry_state_is_named_not_taken_for_the_grid(grid, argv):
    r = ablate_cli(*[a.format(grid=grid) for a in argv], "--executor", "debug")
    assert r.returncode == 2 and r.stderr.strip() == (
        "ablate: error: --retry bogus: not a retryable state; allowed: all, failed, diverged, oom, cancelled"), r.stderr


@pytest.mark.parametrize("dataset, match", [
    ("{tmp}/empty.txt", "is empty; text:PATH names a UTF-8 text file with text in it"),
    ("{tmp}", "is a directory; text:PATH names one UTF-8 text file"),
    ("/dev/null", "is not a regular file (a device, a FIFO...)"),
])
def test_a_text_data_set_that_is_not_a_text_file_is_named(tmp_path, dataset, match):
    (tmp_path / "empty.txt").write_text("")
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\ndata: {{dataset: 'text:{dataset.format(tmp=tmp_path)}', tokenizer: char}}\n"
                    "grid: {seed: [0]}\n")
    r = ablate_cli("plan", path)
    assert r.returncode == 2 and match in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr


def test_status_shows_where_a_cancelled_cell_stopped_before_its_first_log_line(tmp_path):
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    d = write_run(runs, "g", {"arch": "gpt", "log_interval": 50}, state="cancelled", steps=30, metrics=False)
    rundir.update_status(d, ckpt_step=30, step=30)
    r = ablate_cli("status")
    row = next(l for l in r.stdout.splitlines() if l.startswith(f"g/{d.name}"))
    assert " cancelled " in row and " 30/1000 " in row, r.stdout


def test_submit_refuses_a_context_longer_than_the_data_it_just_prepared(tmp_path):
    """The plan checks context against the prepared data only once it is prepared; submit
    prepares it and checks then, before writing any run dir (the cell used to fail)."""
    text = tmp_path / "small.txt"
    text.write_text("a short corpus of few characters. " * 30)
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\ndata: {{dataset: 'text:{text}', tokenizer: char}}\n"
                    "base: {n_layer: 2, n_head: 2, n_embd: 32, max_iters: 3, device: cpu}\ngrid: {context: [16, 512]}\n")
    assert ablate_cli("plan", path).returncode == 0  # not prepared yet: nothing to check against
    r = ablate_cli("submit", path, "--executor", "debug")
    assert r.returncode == 2 and "key 'context': 512 needs context+2 = 514 tokens in each split" in r.stderr, r.stderr
    assert not list((Path(os.environ["ABLATE_RUNS_DIR"]) / "g").glob("*/config.json"))


def test_status_tells_the_truth_at_a_glance(tmp_path):
    """Finished cells with their final loss, elapsed over every attempt, the checkpoint's step."""
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    done = write_run(runs, "g", {"arch": "gpt"}, summary={"final_val_loss": 2.3456})
    rundir.update_status(done, wall_s=3725.0)  # two attempts' wall time, as the trainer records it
    stopped = write_run(runs, "g", {"arch": "ngpt"}, state="cancelled", steps=40)
    rundir.update_status(stopped, ckpt_step=40, wall_s=61.0)
    r = ablate_cli("status")
    lines = r.stdout.splitlines()
    head = next(l for l in lines if l.startswith("run_id"))
    row = {l.split()[0].split("/")[1]: l for l in lines if l.startswith("g/")}
    assert row[done.name][head.index("val loss"):].split()[0] == "2.3456", r.stdout
    assert " 1:02:05 " in row[done.name], r.stdout
    assert row[stopped.name][head.index("ckpt"):].split()[0] == "40" and " 0:01:01 " in row[stopped.name], r.stdout


def test_plan_splits_what_it_would_run(tmp_path):
    from ablate.plan.grid import load_grid
    from ablate.plan.plan import format_table, plan_rows

    path = tmp_path / "g.yaml"
    path.write_text("name: g\ndata: {dataset: shakespeare, tokenizer: char}\n"
                    "base: {n_layer: 2, n_head: 2, n_embd: 32, context: 16, max_iters: 10}\n"
                    "grid: {seed: [0, 1, 2, 3, 4]}\n")
    grid = load_grid(path)
    rows = plan_rows(grid)
    for r, (state, ckpt) in zip(rows, [("new", 0), ("pending", 1), ("pending", 0), ("failed", 1), ("running", 1)]):
        r["state"] = state
        Path(r["run_dir"]).mkdir(parents=True)
        if ckpt:
            (Path(r["run_dir"]) / rundir.CKPT).write_bytes(b"")
    last = format_table(grid, rows).splitlines()[-1]
    assert last.startswith("5 cells, 5 to run (1 new, 1 resume from a checkpoint, 1 start over, 1 need --retry, "
                           "1 queued or running)"), last


def test_gc_removes_what_finished_runs_no_longer_keep_and_nothing_else(tmp_path):
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    done = write_run(runs, "g", {"arch": "gpt"})
    kept = write_run(runs, "g", {"arch": "ngpt", "keep_ckpt": True})
    running = write_run(runs, "g", {"arch": "gpt", "seed": 1}, state="running", steps=300)
    failed = write_run(runs, "g", {"arch": "gpt", "seed": 2}, state="failed", steps=300)
    for d in (done, kept, running, failed):
        (d / rundir.CKPT).write_bytes(b"x" * 3_000_000)
        (d / "model.pt").write_bytes(b"x" * 1_000_000)
        (d / ".ckpt.pt.abc.tmp").write_bytes(b"x" * 10)
    r = ablate_cli("gc", "--dry-run")
    assert r.returncode == 0 and r.stdout.count("would remove") == 3, r.stdout  # done's ckpt and temp, kept's temp
    assert "would free 3.0 MB in 2 finished run(s)" in r.stdout and (done / rundir.CKPT).exists()
    r = ablate_cli("gc")
    assert r.returncode == 0 and "freed 3.0 MB in 2 finished run(s)" in r.stdout, r.stdout
    assert not (done / rundir.CKPT).exists() and (done / "model.pt").exists() and not (done / ".ckpt.pt.abc.tmp").exists()
    assert (kept / rundir.CKPT).exists() and not (kept / ".ckpt.pt.abc.tmp").exists()
    for d in (running, failed):  # not finished: every file stays
        assert (d / rundir.CKPT).exists() and (d / ".ckpt.pt.abc.tmp").exists()
    assert "freed 0.0 MB in 0 finished run(s)" in ablate_cli("gc").stdout


def test_gc_removes_a_finished_fsdp_runs_shards_with_its_ckpt(tmp_path):
    """strategy fsdp: ckpt.pt names a directory of DCP shards; both go (or both stay, keep_ckpt)."""
    runs = Path(os.environ["ABLATE_RUNS_DIR"])
    done = write_run(runs, "g", {"arch": "gpt", "strategy": "fsdp"})
    kept = write_run(runs, "g", {"arch": "ngpt", "strategy": "fsdp", "keep_ckpt": True})
    for d in (done, kept):
        (d / rundir.CKPT).write_bytes(b"x" * 1_000)
        (d / "model.pt").write_bytes(b"x" * 1_000)
        shards = d / rundir.CKPT_SHARDS / "step000000300-attempt1"
        shards.mkdir(parents=True)
        for rank in range(2):
            (shards / f"__{rank}_0.distcp").write_bytes(b"x" * 2_000_000)
    r = ablate_cli("gc", "--dry-run")
    assert r.returncode == 0 and f"would remove {done / rundir.CKPT_SHARDS} (4.0 MB)" in r.stdout, r.stdout
    assert "would free 4.0 MB in 1 finished run(s)" in r.stdout and (done / rundir.CKPT_SHARDS).is_dir()
    r = ablate_cli("gc")
    assert r.returncode == 0 and "freed 4.0 MB in 1 finished run(s)" in r.stdout, r.stdout
    assert not (done / rundir.CKPT).exists() and not (done / rundir.CKPT_SHARDS).exists()
    assert (done / "model.pt").exists() and (kept / rundir.CKPT_SHARDS / "step000000300-attempt1").is_dir()
