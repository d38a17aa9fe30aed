"""The run directory: the only contract between a job and the rest of ablate.

    runs/<grid>/<run_id>/
        config.json    resolved RunConfig + grid, run_id, ablate version, git sha
        status.json    state, attempts, executor + job id, host, device, times, heartbeat, error
        metrics.jsonl  one line per logged train step (appended, flushed)
        evals.jsonl    one line per eval (appended, flushed)
        summary.json   params, bytes, memory, throughput, final loss (written at the end)
        ckpt.pt        model + optimizer + RNG + data position + step (replaced atomically)
        ckpt.shards/   fsdp: each rank's shards of model + optimizer, one dir per save, named by ckpt.pt

JSON files are written to a temp file and renamed, so a reader never sees half a file; a
torn last line of a .jsonl (a job killed mid-write) is skipped by `read_jsonl`, and so is any
line that is not UTF-8 JSON, and any record whose fields are not what the trainer writes
(EVAL_FIELDS, METRIC_FIELDS: a step that is not a step skips the line; a bad value of another
field reads as null): counted, `read_jsonl_counted`. Only regular files are read (a FIFO would
block a reader, a device never end). Files get the user's umask.

Who may write status.json: every writer of a run's state names the attempt it acts for
(`attempt_id`, minted by `ablate submit` per dispatch, or by a trainer started by hand), and
`update_status(..., expect={"attempt_id": ...})` writes only while the file still says so
(compare-and-set under the status lock). A stale runner or job can never overwrite a newer
attempt. One trainer per run dir: `train_lock` holds .train.lock for the whole attempt.

A run dir is trusted only when config.json's run_id matches both its directory name and the
hash of its config (`identity_problem`); anything else is "broken", never data.

One run dir per run id: a run id names a model and its training, whichever grid planned it. The
run dir lives in the folder of the grid that first ran it; another grid whose cell has that run
id sees it through a link in its own folder (`runs/<grid>/<run_id>` -> `../<first grid>/<run_id>`,
made by `link_run` when the grid is submitted or reported), so two grids that share a baseline
train it once, and every reader of a grid's folder (status, ingest, the report) finds it there.
runs/ trees from before this are read as they are; a run id that several folders hold as real
dirs resolves to its best copy (`locate_runs`: done, then live, then the newest).
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import socket
import stat
import tempfile
import time
import uuid
from pathlib import Path

from ablate.core.config import RunConfig, make_config
from ablate.core.errors import AblateError

STATES = ("pending", "queued", "running", "done", "failed", "diverged", "oom", "cancelled")
TERMINAL = ("done", "failed", "diverged", "oom", "cancelled")
RETRYABLE = ("failed", "diverged", "oom", "cancelled")

CONFIG, STATUS, METRICS, EVALS, SUMMARY, CKPT = (
    "config.json", "status.json", "metrics.jsonl", "evals.jsonl", "summary.json", "ckpt.pt")
CKPT_SHARDS = "ckpt.shards"  # strategy fsdp: the DCP shards ckpt.pt names (ablate/train/checkpoint.py)
STATUS_LOCK, TRAIN_LOCK = ".status.lock", ".train.lock"
BROKEN = "broken"  # not a state a job writes: a run dir whose config.json is not its own

# what each line of a run's .jsonl files holds, field by field: "step" (the key of a line: an int
# in [0, MAX_COUNT]), "count" (the same range), "float" (a finite number); as the trainer writes them
MAX_COUNT = 2 ** 53  # exact in a double, and far inside DuckDB's BIGINT
EVAL_FIELDS = {"step": "step", "tokens": "count", "elapsed": "float", "val_loss": "float", "val_loss_se": "float",
               "train_loss": "float"}
METRIC_FIELDS = {"step": "step", "tokens": "count", "loss": "float", "lr": "float", "step_time": "float",
                 "tokens_per_s": "float", "mem_alloc": "count", "mem_peak": "count", "mem_reserved": "count",
                 "mem_peak_reserved": "count"}
RECORD_FIELDS = {EVALS: EVAL_FIELDS, METRICS: METRIC_FIELDS}


def _umask() -> int:
    """The process umask, read without changing it (os.umask can only be read by setting it)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def no_space(e: BaseException, path) -> AblateError | None:
    """One line naming a full disk (or quota) when `e`, or the error it was raised from (torch's
    "unexpected pos" of a short write), is one; else None."""
    while e is not None:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            return AblateError(f"no space left on device at {Path(path).parent} (writing {Path(path).name}): "
                               "free space, then run it again; the previous file is kept")
        e = e.__cause__ or e.__context__
    return None


@contextlib.contextmanager
def atomic_file(path, mode: str = "w"):
    """Open a temp file beside `path`; on success fsync and rename it over `path`, on any error
    delete it. Readers see the old file or the whole new one, never half of one; a full disk is
    one line naming it (no_space)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; results are as readable as any file
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        full = no_space(e, path)
        if full is not None:
            raise full from None
        raise


def write_json_atomic(path, obj) -> None:
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=True, default=str)
        f.write("\n")


def open_regular(path):
    """open(path, "rb") when path is a regular file; None when it is missing or anything else (a
    FIFO would block its reader until a writer came, a link to a device would never end)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # a FIFO opens at once, to be refused below
    except (FileNotFoundError, NotADirectoryError):
        return None
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return None
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def read_json(path, default=None):
    """The file's JSON, or default when it is missing, not a regular file or not UTF-8 JSON
    (never a traceback)."""
    f = open_regular(path)
    if f is None:
        return default
    with f:
        try:
            return json.loads(f.read())
        except ValueError:  # JSONDecodeError, UnicodeDecodeError
            return default


def is_count(value) -> bool:
    """An int in [0, MAX_COUNT] (a JSON step, token or byte count; bool is not one)."""
    return type(value) is int and 0 <= value <= MAX_COUNT


def valid_record(record, fields: dict) -> dict | None:
    """The record with each field of `fields` checked as the trainer writes it: None when its step
    is not a step (the line is skipped), else a copy in which a bad value of another field (a
    string, a bool, NaN, out of range) reads as null. Fields not in `fields` pass as they are."""
    if not isinstance(record, dict) or not is_count(record.get("step")):
        return None
    out = dict(record)
    for name, kind in fields.items():
        value = out.get(name)
        if value is None or name == "step":
            continue
        if kind == "count":
            ok = is_count(value)
        else:
            ok = type(value) in (int, float) and math.isfinite(value) and abs(value) < 1e300
        if not ok:
            out[name] = None
    return out


def append_jsonl(path, record: dict) -> None:
    try:
        with open(path, "a") as f:
            f.write(json.dumps(record, default=float) + "\n")
            f.flush()
    except OSError as e:
        raise (no_space(e, path) or e) from None


def read_jsonl(path) -> list[dict]:
    """All complete records; a torn or garbled line (a job killed mid-write) is skipped."""
    return read_jsonl_counted(path)[0]


def read_jsonl_counted(path) -> tuple[list[dict], int]:
    """(records, lines skipped): a torn last line (the writer was interrupted), a line that is not
    UTF-8, not JSON or not a JSON object, and (in a run's evals.jsonl / metrics.jsonl) a record
    whose step is not a step is skipped and counted, never an exception; a file that is there
    but is not a regular file counts as one skipped line."""
    fields = RECORD_FIELDS.get(Path(path).name)
    out, skipped = [], 0
    f = open_regular(path)
    if f is None:
        return [], int(os.path.lexists(path))
    with f:
        for line in f:
            if not line.endswith(b"\n"):
                skipped += 1  # torn last line
                break
            try:
                record = json.loads(line)
            except ValueError:  # JSONDecodeError, UnicodeDecodeError
                record = None
            if fields is not None:
                record = valid_record(record, fields)
            if isinstance(record, dict):
                out.append(record)
            elif line.strip():
                skipped += 1
    return out, skipped


def truncate_jsonl_after(path, key: str, last: int) -> None:
    """Drop records with record[key] > last (and any torn tail): used on resume so that the
    steps replayed after a checkpoint are not logged twice."""
    keep = [r for r in read_jsonl(path) if is_count(r.get(key)) and r[key] <= last]
    if not Path(path).exists():
        return
    with atomic_file(path) as f:
        for r in keep:
            f.write(json.dumps(r, default=float) + "\n")


RUN_ID_CHARS = frozenset("0123456789abcdef")
_BEST = {"done": 0, "running": 1, "queued": 2, "pending": 3}  # which copy of a run id a grid uses


def locate_runs(root) -> dict:
    """{run_id: its run dir} over every grid folder under root (`runs/<grid>/<run_id>/`, names
    that look like run ids); a run id found in several folders resolves to its best copy: done,
    then running / queued / pending, then the most recently updated."""
    found: dict = {}
    try:
        grids = [e for e in os.scandir(root) if e.is_dir() and not e.name.startswith(".")]
    except (FileNotFoundError, NotADirectoryError):
        return {}
    for g in sorted(grids, key=lambda e: e.name):
        with os.scandir(g.path) as it:
            for e in it:  # real dirs only: a link is a view of a run that lives elsewhere
                if len(e.name) == 10 and set(e.name) <= RUN_ID_CHARS and e.is_dir(follow_symlinks=False):
                    found.setdefault(e.name, []).append(Path(e.path))
    out = {}
    for rid, dirs in found.items():
        if len(dirs) == 1:
            out[rid] = dirs[0]
        else:
            status = {d: read_status(d) for d in dirs}
            out[rid] = min(dirs, key=lambda d: (_BEST.get(status[d].get("state"), 9),
                                                -float(status[d].get("updated") or 0)))
    return out


def link_run(real: Path, link: Path) -> None:
    """Make `link` (a grid's `<folder>/<run_id>`) a relative link to the run dir `real` that
    another grid's folder holds; nothing when `link` already exists."""
    link = Path(link)
    if link.exists() or link.is_symlink():
        return
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(Path(real).resolve(), link.parent.resolve()), target_is_directory=True)


def read_status(run_dir) -> dict:
    return read_json(Path(run_dir) / STATUS, default={}) or {}


def new_attempt() -> str:
    """A fresh attempt id: who owns a run's state from now on."""
    return uuid.uuid4().hex[:12]


def update_status(run_dir, expect: dict | None = None, **fields) -> dict | None:
    """Merge fields into status.json (atomic). Returns the new status, or None (nothing written)
    when `expect` names values the file no longer holds (a tuple: one of them): compare-and-set,
    so a writer acting for an attempt (expect={"attempt_id": ...}) never overwrites a newer one. The read-modify-write
    holds an advisory lock: the trainer's heartbeat and `ablate cancel` / submit write the same
    file, and neither may write back a state the other has just replaced."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    with open(run_dir / STATUS_LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        status = read_status(run_dir)
        if expect and not all(status.get(k) in v if isinstance(v, tuple) else status.get(k) == v
                              for k, v in expect.items()):
            return None
        status.update(fields)
        status.setdefault("host", socket.gethostname())
        status["updated"] = time.time()
        write_json_atomic(run_dir / STATUS, status)
    return status


def state_of(run_dir) -> str:
    """'new' when there is no run dir / status, else the recorded state."""
    status = read_status(run_dir)
    return status.get("state", "new") if status else "new"


_IDENTITY: dict = {}  # (path, mtime_ns, size) of a config.json -> its problem: watch() asks every 2 s


def checked_state(run_dir) -> str:
    """state_of, or 'broken' when run_dir holds a config.json that is not its own."""
    return BROKEN if identity_problem(run_dir, missing_ok=True) else state_of(run_dir)


def identity_problem(run_dir, missing_ok: bool = False) -> str | None:
    """Why run_dir cannot be trusted as the run its name says, or None when it can: config.json's
    run_id and the hash of its config must both equal the directory name. missing_ok: a run dir
    without config.json (not written yet) is not a problem."""
    path = Path(run_dir) / CONFIG
    try:
        st = path.stat()
    except (FileNotFoundError, NotADirectoryError):
        return None if missing_ok else "no config.json"
    key = (str(path), st.st_mtime_ns, st.st_size)
    if key not in _IDENTITY:
        doc, name = read_json(path), Path(run_dir).name
        if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
            problem = "config.json is not a JSON object with a 'config' mapping"
        elif doc.get("run_id") != name:
            problem = f"config.json belongs to run {doc.get('run_id')!r}, not to the directory {name}"
        else:
            try:
                rid = make_config(doc["config"]).run_id()
                problem = None if rid == name else (f"config.json's config hashes to {rid}, not to the directory "
                                                     f"name {name} (edited, or written by another ablate version)")
            except AblateError as e:
                problem = f"config.json's config is not valid here: {e}"
        _IDENTITY[key] = problem
    return _IDENTITY[key]


def read_config(run_dir) -> tuple[RunConfig, dict]:
    """The run's RunConfig, as planned (resolved against its data when the grid was read), and the
    whole config.json document (grid, run_id, varied keys, versions, resources)."""
    path = Path(run_dir) / CONFIG
    doc = read_json(path)
    if not isinstance(doc, dict) or not isinstance(doc.get("config"), dict):
        raise AblateError(f"{path} is missing, unreadable or has no 'config' mapping")
    return make_config(doc["config"]), doc


class Busy(AblateError):
    """Another process holds a run dir's train lock."""


class Superseded(AblateError):
    """The run's status.json names another attempt: this writer no longer owns the run."""


@contextlib.contextmanager
def train_lock(run_dir):
    """Hold run_dir/.train.lock for the whole attempt: one trainer per run dir. The holder writes
    its pid and host into the file, so a second trainer can say who has it (Busy). The kernel
    drops the lock when the process dies, however it dies."""
    path = Path(run_dir) / TRAIN_LOCK
    f = open(path, "a+")
    try:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            raise Busy(f"run dir {run_dir} is being trained by {holder}: one trainer per run dir "
                       f"(wait for it, or `ablate cancel` it)") from None
        f.seek(0)
        f.truncate()
        f.write(f"pid {os.getpid()} on host {socket.gethostname()} (since {time.strftime('%Y-%m-%d %H:%M:%S')})\n")
        f.flush()
        yield
    finally:
        f.close()
