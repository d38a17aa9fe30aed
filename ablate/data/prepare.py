"""Preparing a data set, nanoGPT format: tokenize a corpus once into train.bin / val.bin.

    $ABLATE_DATA_DIR (default ./data)/<name>-<tokenizer>/   (corpora.data_dir)
        train.bin  val.bin   flat uint16 token ids (np.memmap-able), 90/10 split
        meta.json            tokenizer, vocab_size, train_tokens, val_tokens, source, data_id (+ itos for char)

meta.json is written last, so "meta.json exists" means "complete": `prepare` returns at once
then, and a file lock makes concurrent cells wait for the one that prepares instead of racing.
Every file is written to a temp name and renamed.

Every corpus goes through the same tokenize-and-write code (`tokenize_documents`, `write_bin`),
so the OpenWebText path is exercised by tests on a small local file.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import time
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from ablate.core.errors import AblateError
from ablate.core.rundir import atomic_file, write_json_atomic
from ablate.data import corpora
from ablate.data.tokenizer import CharTokenizer, get_tokenizer

TRAIN_FRACTION = 0.9
OWT_VAL_EVERY = 2000  # OpenWebText: every 2000th document (0.05%, as nanoGPT's split) is validation
ENCODE_CHUNK = 1024  # documents per tiktoken batch


# ---- tokenize and write (shared by every corpus)

def tokenize_documents(docs: Iterable[str], tok) -> Iterator[np.ndarray]:
    """uint16 token arrays, one per chunk of documents; GPT-2 ends each document with <|endoftext|>."""
    if tok.vocab_size > 2 ** 16:
        raise AblateError(f"vocabulary of {tok.vocab_size} does not fit uint16 token files")
    chunk: list[str] = []

    def flush():
        ids = tok.encode_batch(chunk)
        if tok.eot is not None:
            ids = [d + [tok.eot] for d in ids]
        chunk.clear()
        return np.fromiter((t for d in ids for t in d), dtype=np.uint16)

    for doc in docs:
        chunk.append(doc)
        if len(chunk) >= ENCODE_CHUNK:
            yield flush()
    if chunk:
        yield flush()


def write_bin(path: Path, arrays: Iterable[np.ndarray]) -> int:
    """Stream uint16 arrays into path (temp file + rename); returns the number of tokens."""
    n = 0
    with atomic_file(path, "wb") as f:
        for a in arrays:
            f.write(np.ascontiguousarray(a, dtype=np.uint16).tobytes())
            n += len(a)
    return n


def _write_meta(out: Path, tok, n_train: int, n_val: int, source: str, dataset: str,
                content_id: str | None = None) -> None:
    meta = {"dataset": dataset, "tokenizer": tok.name, "vocab_size": tok.vocab_size, "train_tokens": n_train,
            "val_tokens": n_val, "source": source, "data_id": content_id, "dtype": "uint16", "eot": tok.eot,
            "created": time.time()}
    if tok.name == "char":
        meta["itos"] = tok.itos
    write_json_atomic(out / "meta.json", meta)


def _make_tokenizer(tokenizer: str, docs_factory: Callable[[], Iterable[str]]):
    if tokenizer == "char":  # nanoGPT shakespeare_char: the sorted set of the whole corpus's characters
        chars: set[str] = set()
        for d in docs_factory():
            chars.update(d)
        return CharTokenizer(sorted(chars))
    return get_tokenizer(tokenizer)


def prepare_documents(out: Path, docs: list[str], tokenizer: str, source: str, dataset: str,
                      content_id: str | None = None) -> None:
    """A local corpus: tokenize every document, split the token stream 90/10, write."""
    tok = _make_tokenizer(tokenizer, lambda: docs)
    ids = np.concatenate(list(tokenize_documents(docs, tok)) or [np.zeros(0, np.uint16)])
    if len(ids) < 10:
        raise AblateError(f"dataset '{dataset}': only {len(ids)} tokens, too small to split into train/val")
    n = int(TRAIN_FRACTION * len(ids))
    n_train = write_bin(out / "train.bin", [ids[:n]])
    n_val = write_bin(out / "val.bin", [ids[n:]])
    _write_meta(out, tok, n_train, n_val, source, dataset, content_id)


def _hf_openwebtext():
    try:
        from datasets import load_dataset  # the optional extra ablate[openwebtext]: absent on most machines
    except ImportError:
        raise AblateError("dataset 'openwebtext' needs Hugging Face datasets: pip install 'ablate[openwebtext]'") from None
    return load_dataset("openwebtext", split="train", num_proc=max(1, (os.cpu_count() or 2) // 2))


def prepare_openwebtext(out: Path, tokenizer: str, load: Callable[[], Iterable[dict]] = _hf_openwebtext) -> None:
    """Stream {"text": ...} records into train.bin / val.bin: every OWT_VAL_EVERY-th document is val.
    `load` returns the records (a Hugging Face Dataset, or any re-iterable of dicts in tests)."""
    records = load()

    def docs(split: str):
        for i, r in enumerate(records):
            if (i % OWT_VAL_EVERY == 0) == (split == "val"):
                yield r["text"]

    tok = _make_tokenizer(tokenizer, lambda: (r["text"] for r in records))
    n_train = write_bin(out / "train.bin", tokenize_documents(docs("train"), tok))
    n_val = write_bin(out / "val.bin", tokenize_documents(docs("val"), tok))
    _write_meta(out, tok, n_train, n_val, f"openwebtext (every {OWT_VAL_EVERY}th document is val)", "openwebtext")


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process prepares the same data set
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(dataset: str, tokenizer: str) -> Path:
    """Tokenize the data set once; returns its directory. Idempotent and safe to call concurrently."""
    out = corpora.data_dir(dataset, tokenizer)
    if (out / "meta.json").exists():
        return out
    docs = source = content_id = None
    if dataset != "openwebtext":
        docs, source, content_id = corpora.local_documents(dataset)  # the bytes read are the bytes keyed
        out = corpora.data_dir(dataset, tokenizer, content_id)
    with _lock(out.parent / f".{out.name}.lock"):
        if (out / "meta.json").exists():  # another process finished it while we waited
            return out
        out.mkdir(parents=True, exist_ok=True)
        if dataset == "openwebtext":
            prepare_openwebtext(out, tokenizer)
        else:
            prepare_documents(out, docs, tokenizer, source, dataset, content_id)
    return out
