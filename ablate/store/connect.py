"""Opening the store: DuckDB lets one process write or several read a database file at a time,
and refuses every other open at once; an ablate command waits its turn instead (bounded, and
saying so once). A file that is not a DuckDB database (random bytes, truncated, empty) is moved
aside by a writer, which then builds the store anew from runs/ (it is a cache), and named by a
reader. A reader's connection (`ablate query`) is sandboxed and bounded in memory and threads.

    con = connect("runs/ablate.duckdb", read_only=False)
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import duckdb

from ablate.core.errors import AblateError

WAIT_S = 300.0  # how long an ablate command waits for another one's hold on the store ($ABLATE_STORE_WAIT_S)
# a reader's connection: nothing outside the database file, no extensions, settings locked
SANDBOX = {"enable_external_access": False, "autoinstall_known_extensions": False,
           "autoload_known_extensions": False, "lock_configuration": True}
# what DuckDB says when a file is not a database it can read (checked at open, with one catalog read)
DAMAGED = ("not a valid DuckDB database", "Could not read enough bytes", "Corrupt", "corrupt", "checksum",
           "Serialization Error", "INTERNAL Error")


def wait_s() -> float:
    try:
        value = float(os.environ.get("ABLATE_STORE_WAIT_S", WAIT_S))
    except ValueError:
        return WAIT_S
    return value if value >= 0 else WAIT_S


def reader_limits(memory_gb: float | None = None, threads: int | None = None) -> dict:
    """DuckDB settings that bound a user's query: a quarter of this machine's memory at most 4 GB
    (DuckDB's own default is 80% of it), and up to 4 threads; either can be raised."""
    if memory_gb is None:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9 if hasattr(os, "sysconf") else 16.0
        memory_gb = min(4.0, total / 4)
    return {"memory_limit": f"{memory_gb:.3g}GB", "threads": threads or min(4, os.cpu_count() or 1)}


def _move_aside(path: str) -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = f"{path}.damaged-{stamp}"
    os.replace(path, target)
    wal = Path(f"{path}.wal")
    if wal.exists():
        os.replace(wal, f"{target}.wal")
    return target


def connect(path: str, read_only: bool = False, limits: dict | None = None, echo=None):
    """A DuckDB connection to the store at path (see the module docstring). limits: a reader's
    memory_limit / threads (reader_limits)."""
    echo = echo or (lambda line: print(line, file=sys.stderr, flush=True))
    config = {**SANDBOX, **(limits or reader_limits())} if read_only else {}
    deadline, told, moved = time.monotonic() + wait_s(), False, False
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only, config=config)
            try:
                con.execute("select count(*) from information_schema.tables").fetchall()  # a damaged catalog fails here
            except duckdb.Error:
                con.close()
                raise
            return con
        except duckdb.Error as e:
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "lock" in first.lower():
            if time.monotonic() < deadline:
                if not told:
                    echo(f"waiting for the store {path}: another ablate command is using it (up to {wait_s():.0f} s)")
                    told = True
                time.sleep(0.25)
                continue
            raise AblateError(f"the store {path} is still in use after {wait_s():.0f} s ({first}); wait for the other "
                              "ablate command, or set ABLATE_STORE_WAIT_S to wait longer")
        if "No space left" in first:
            raise AblateError(f"no space left on device at {Path(path).parent} (opening the store {path}): free space, "
                              "then run the command again")
        if any(m in first for m in DAMAGED) and path != ":memory:" and Path(path).exists():
            if read_only:
                raise AblateError(f"the store {path} is damaged ({first}); it is a cache of runs/: `ablate query` "
                                  "without --no-ingest, or `ablate report GRID --rebuild`, moves it aside and builds it again")
            if not moved:
                target = _move_aside(path)
                echo(f"warning: the store {path} was damaged ({first}): moved aside to {target}; building it again "
                     "from runs/")
                moved = True
                continue
        raise AblateError(f"cannot open the store {path}: {first}")


def interruptible(con: duckdb.DuckDBPyConnection, run):
    """run() (a call on con) such that Ctrl-C always stops it, as KeyboardInterrupt. DuckDB's own
    check of Python's signals misses some plans: a hash aggregate waiting in Executor::WaitForTask
    ran on after SIGINT. And a Python handler cannot run while the main thread is inside DuckDB.
    So the call runs in a worker thread; the main thread waits in short joins, where the handler
    runs, and calls con.interrupt() until the call returns (again and again: an interrupt that
    lands before DuckDB has started the query would be lost)."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread gets signals
        return run()
    hit, box = threading.Event(), {}

    def work():
        try:
            box["out"] = run()
        except BaseException as e:  # handed to the caller's thread
            box["err"] = e

    previous = signal.signal(signal.SIGINT, lambda *_: hit.set())
    try:
        worker = threading.Thread(target=work, name="duckdb-query", daemon=True)
        worker.start()
        while worker.is_alive():
            worker.join(0.05)
            if hit.is_set():
                con.interrupt()
    finally:
        signal.signal(signal.SIGINT, previous)
    if hit.is_set():
        raise KeyboardInterrupt
    if "err" in box:
        raise box["err"]
    return box["out"]
