"""Tokenizing a corpus into token files: parallel, streaming, deterministic, resumable.

    reader (this process)       documents.units: ~1 MiB units of text, in the corpus's order
      -> N worker processes     each unit's pieces tokenized (tiktoken / char), EOT per document
      -> writer (this process)  the units' tokens in unit order, into each split's token files

Deterministic: units are cut from the files alone and their tokens are written in unit order, so
the bytes are the same whatever the number of workers (1 runs in this process).

Memory: bounded whatever the corpus size. In flight at any time: at most IN_FLIGHT units per
worker (~1 MiB of text each, and their tokens: 4 bytes per token from tiktoken's buffer), one
unit per worker being tokenized, and the file buffers; tokens go to disk as they arrive. A
document longer than a unit is cut into pieces at safe line breaks (documents.py); one without
any is the only thing that can exceed the bound.

Resumable: after every unit, the open files are flushed and `progress.json` records the unit, where
it starts, and each split's finished files and tokens in its open file. Killed at any moment, a
rerun truncates the open file to the recorded tokens (a file finished after the record goes back
to being the open one), reads on from the recorded unit, and ends with the bytes of an
uninterrupted run. An open file is `<name>.part` and finished files are renamed into place, so a
partial prepare never looks complete (and meta.json, the caller's, comes last).
"""
from __future__ import annotations

import collections
import hashlib
import json
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ablate.core.errors import AblateError
from ablate.data import documents, shardfile
from ablate.data.documents import Position
from ablate.data.tokenizer import CharTokenizer, get_tokenizer

IN_FLIGHT = 2  # units per worker between the reader and the writer
PROGRESS = "progress.json"
PART = ".part"


def default_workers() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


@dataclass(frozen=True)
class Layout:
    """How tokens are laid out on disk. eot: "before" each document (llm.c's fineweb.py),
    "after" (nanoGPT), or None (character data: no separator). names[stream](k) -> file name of the
    k-th file of a split; shard_tokens None: one file per split."""
    names: dict
    header: bool
    eot: str | None
    shard_tokens: int | None


# ---- the split's files

class ShardWriter:
    """One split's token files, each exactly shard_tokens tokens but the last."""

    def __init__(self, out: Path, name: Callable[[int], str], dtype: str, layout: Layout, shards: int = 0,
                 partial: int = 0, done: list | None = None):
        self.out, self.name, self.dtype, self.layout = out, name, dtype, layout
        self.itemsize = shardfile.KINDS[dtype][2]
        self.head = shardfile.HEADER_BYTES if layout.header else 0
        self.shards, self.partial, self.done = shards, partial, list(done or [])
        self.f, self.sha = None, hashlib.sha256()
        self._restore()

    def _part(self, k: int) -> Path:
        return self.out / (self.name(k) + PART)

    def _restore(self) -> None:
        """Back to the recorded state: files finished after it are undone, the open one truncated."""
        k = self.shards + 1
        while self.layout.shard_tokens and ((self.out / self.name(k)).exists() or self._part(k).exists()):
            (self.out / self.name(k)).unlink(missing_ok=True)
            self._part(k).unlink(missing_ok=True)
            k += 1
        final, part = self.out / self.name(self.shards), self._part(self.shards)
        if final.exists():  # finished after the record: it is the open file again
            os.replace(final, part)
        if not self.partial:
            part.unlink(missing_ok=True)
            return
        keep = self.head + self.partial * self.itemsize
        if not part.exists() or part.stat().st_size < keep:
            raise AblateError(f"{part}: holds fewer tokens than {self.out / PROGRESS} records; delete {self.out} "
                              "to prepare from the start")
        self.f = open(part, "r+b")
        self.f.truncate(keep)
        self.f.seek(self.head)
        for block in iter(lambda: self.f.read(1 << 24), b""):
            self.sha.update(block)

    def write(self, tokens: np.ndarray) -> None:
        room = self.layout.shard_tokens
        while len(tokens):
            if self.f is None:
                self.f = open(self._part(self.shards), "wb")
                if self.head:
                    self.f.write(shardfile.header(0, self.dtype))  # the count is written when it is known
            take = tokens if room is None else tokens[:room - self.partial]
            data = take.tobytes()
            self.f.write(data)
            self.sha.update(data)
            self.partial += len(take)
            tokens = tokens[len(take):]
            if room is not None and self.partial == room:
                self._close()

    def _close(self) -> None:
        if self.head:
            self.f.seek(0)
            self.f.write(shardfile.header(self.partial, self.dtype))
        self.f.close()
        os.replace(self._part(self.shards), self.out / self.name(self.shards))
        self.done.append({"file": self.name(self.shards), "tokens": self.partial, "sha256": self.sha.hexdigest()})
        self.shards, self.partial, self.f, self.sha = self.shards + 1, 0, None, hashlib.sha256()

    def state(self) -> dict:
        if self.f is not None:
            self.f.flush()  # on disk (the page cache) before the record that counts it
        return {"shards": self.shards, "partial": self.partial, "done": self.done}

    def finish(self) -> list[dict]:
        if self.partial:
            self._close()
        return self.done


# ---- the workers

_TOKENIZERS: dict = {}


def _tokenizer(spec: tuple):
    if spec not in _TOKENIZERS:
        _TOKENIZERS[spec] = CharTokenizer(list(spec[1])) if spec[0] == "char" else get_tokenizer(spec[0])
    return _TOKENIZERS[spec]


def _encode(task: tuple) -> dict:
    """A unit's tokens per stream: each piece encoded, EOT before or after each whole document."""
    spec, dtype, eot_at, pieces = task
    tok = _tokenizer(spec)
    eot = None if eot_at is None else np.array([tok.eot], dtype=np.uint32)
    out = collections.defaultdict(list)
    for text, stream, first, last in pieces:
        parts = out[stream]
        if eot is not None and first and eot_at == "before":
            parts.append(eot)
        parts.append(tok.encode_array(text))
        if eot is not None and last and eot_at == "after":
            parts.append(eot)
    return {s: np.concatenate(p).astype(dtype) for s, p in out.items()}


def _charset(task: tuple) -> str:
    return "".join(set().union(*(text for text, *_ in task[3])))


class Workers:
    """An ordered map over N processes, at most IN_FLIGHT tasks per worker ahead of the consumer;
    N = 1 maps in this process. Workers are forked where the OS can (as torch's DataLoader does:
    no re-import, and a caller's script needs no `if __name__ == "__main__"` guard, which spawn
    would demand); they run tiktoken and numpy only, never torch."""

    def __init__(self, n: int):
        self.n = n
        self.pool = None

    def __enter__(self):
        if self.n > 1:
            method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
            self.pool = ProcessPoolExecutor(self.n, mp_context=multiprocessing.get_context(method))
        return self

    def __exit__(self, *exc):
        if self.pool is not None:
            self.pool.shutdown(wait=True, cancel_futures=True)

    def map(self, fn, items):
        """(item, fn(task)) for each (item, task) of items, in order."""
        if self.pool is None:
            for item, task in items:
                yield item, fn(task)
            return
        pending = collections.deque()
        for item, task in items:
            pending.append((item, self.pool.submit(fn, task)))
            if len(pending) >= IN_FLIGHT * self.n:
                item0, future = pending.popleft()
                yield item0, future.result()
        while pending:
            item0, future = pending.popleft()
            yield item0, future.result()


# ---- progress (resume state) and the bar

def read_progress(out: Path, key: str) -> dict | None:
    try:
        state = json.loads((out / PROGRESS).read_text())
    except (FileNotFoundError, ValueError):
        return None
    return state if state.get("key") == key else None


def write_progress(out: Path, state: dict) -> None:
    # temp + rename without fsync: the record must survive this process being killed, which the
    # page cache does; an fsync per unit would cost more than it protects
    tmp = out / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps(state))
    os.replace(tmp, out / PROGRESS)


def _bar(total: int, initial: int, label: str):
    """Bytes of the corpus's files read (MB/s and an ETA), or documents when the size is unknown."""
    from tqdm import tqdm  # the bar: only a prepare shows one

    return tqdm(total=total or None, initial=initial, unit="B" if total else " docs", unit_scale=True, desc=label,
                file=sys.stderr, dynamic_ncols=True, disable=None, smoothing=0.05, mininterval=0.5)


@dataclass
class Result:
    files: dict  # stream -> [{"file", "tokens", "sha256"}]
    docs: int
    itos: list | None


def tokenize(out: Path, sources: list, stream_of, tokenizer: str, layout: Layout, *, key: str, workers: int,
             label: str = "prepare", unit_chars: int | None = None) -> Result:
    """Tokenize `sources` into `out` (resuming a prepare of the same `key` there); returns the files
    written per stream. The caller writes meta.json, then removes progress.json (`finish`)."""
    unit_chars = unit_chars or documents.UNIT_CHARS
    key = f"{key}|{tokenizer}|{layout.eot}|{layout.header}|{layout.shard_tokens}|{unit_chars}"
    state = read_progress(out, key) or {"key": key, "unit": -1, "position": None, "streams": {}, "docs": 0,
                                         "tokens": 0, "itos": None}
    total = sum(s.size for s in sources)
    done = (lambda unit, docs: unit.read) if total else (lambda unit, docs: docs)
    with Workers(workers) as pool:
        if tokenizer == "char" and state["itos"] is None:  # nanoGPT's vocabulary: the corpus's sorted characters
            chars, docs = set(), 0
            with _bar(total, 0, f"{label}: characters") as bar:
                for unit, found in pool.map(_charset, _tasks(sources, stream_of, Position(), 0, None, unit_chars)):
                    chars.update(found)
                    docs += unit.docs
                    bar.update(done(unit, docs) - bar.n)
            state["itos"] = sorted(chars)
        tok = CharTokenizer(state["itos"]) if tokenizer == "char" else get_tokenizer(tokenizer)
        spec = ("char", "".join(state["itos"])) if tokenizer == "char" else (tokenizer,)
        dtype = shardfile.dtype_for(tok.vocab_size) if layout.header else "uint16"
        if dtype == "uint16" and tok.vocab_size > shardfile.UINT16_VOCAB:
            raise AblateError(f"a vocabulary of {tok.vocab_size:,} does not fit uint16 token files")
        writers = {s: ShardWriter(out, layout.names[s], dtype, layout, **state["streams"].get(str(s), {}))
                   for s in layout.names}
        eot_at = layout.eot if tok.eot is not None else None
        start = Position(**state["position"]) if state["position"] else Position()
        units = _tasks(sources, stream_of, start, max(state["unit"], 0), (spec, dtype, eot_at), unit_chars)
        initial = 0
        if state["unit"] >= 0:  # the recorded unit's tokens are written: read past it
            recorded = next(units, None)
            if recorded is None:
                raise documents.InputError(f"{out}: the corpus ends before the unit where this prepare stopped: its "
                                           "files changed; delete the folder to prepare from the start")
            initial = done(recorded[0], state["docs"])
        first_tokens = state["tokens"]
        with _bar(total, initial, label) as bar:
            for unit, tokens in pool.map(_encode, units):
                for s, arr in tokens.items():
                    writers[s].write(arr)
                state.update(unit=unit.index, position=unit.start.to_json(), docs=state["docs"] + unit.docs,
                             tokens=state["tokens"] + sum(len(a) for a in tokens.values()),
                             streams={str(s): w.state() for s, w in writers.items()})
                write_progress(out, state)
                bar.update(done(unit, state["docs"]) - bar.n)
                rate = (state["tokens"] - first_tokens) / max(bar.format_dict["elapsed"], 1e-9)
                bar.set_postfix_str(f"{state['docs']:,} docs, {state['tokens']:,} tokens, {rate:,.0f} tokens/s",
                                    refresh=False)
    return Result({s: w.finish() for s, w in writers.items()}, state["docs"], state["itos"])


def _tasks(sources, stream_of, start: Position, first_unit: int, head, unit_chars: int):
    """(unit, task) pairs: a task is what a worker needs, the unit stays here."""
    for unit in documents.units(sources, stream_of, start, first_unit, unit_chars):
        yield unit, (*(head or (None, None, None)), unit.pieces)


def finish(out: Path) -> None:
    """The prepare is complete (meta.json written): its resume record goes."""
    (out / PROGRESS).unlink(missing_ok=True)
