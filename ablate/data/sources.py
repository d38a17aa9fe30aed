"""The `shards:` and `corpus:` data sets: how a grid names them, which files they are, and content
ids that never read a whole corpus. No numpy: the plan asks this module.

A grid names them with keys of its `data:` section; a cell's config carries the canonical string:

    data: {shards: ~/fineweb10B}
        -> shards:~/fineweb10B
    data: {train: owt/train.bin, val: owt/val.bin, format: uint16, vocab: 50257}
        -> shards:train=owt/train.bin;val=owt/val.bin;format=uint16;vocab=50257
    data: {corpus: [fw/*.parquet, dumps/*.jsonl.zst], val_every: 500}
        -> corpus:fw/*.parquet,dumps/*.jsonl.zst;val_every=500

(the string can also be written as `dataset:`, e.g. as an axis). Paths are files, folders or
globs, relative to the current directory like text:PATH; ',' and ';' separate them in the string.

shards   pre-tokenized token files, read where they are (shardfile.py): a folder or glob is split
         into train and val by the conventional names (train.bin, *_train_*.bin, *_train.bin and
         the same with val), or `train=` / `val=` name each split. format: auto (llm.c header) |
         llmc | uint16 | uint32 (raw nanoGPT files). The vocabulary: `vocab=`, else a meta.json
         (vocab_size, tokenizer) or nanoGPT's meta.pkl beside the train files, else the tokenizer's.
corpus   raw documents that `ablate data prepare` tokenizes (documents.py): parquet (a column),
         jsonl / json / ndjson (a field; .gz and .zst too), a Hugging Face save_to_disk folder,
         and any other file is one text document (a folder: its .txt / .md files and the kinds
         above). Validation: every val_every-th document (default 1000), or `val=` files.

Identity: a manifest of every file's (split, name, size, digest of sampled blocks): 16 blocks of
4 KiB spread over a file (the whole of a file up to 64 KiB), so a plan never reads a corpus. A
changed size or any changed sampled block is a new data set (new data_id, new run ids); an edit
that keeps the size and misses every sampled block goes unnoticed. Moving the files keeps the id.
"""
from __future__ import annotations

import glob
import hashlib
import json
import os
import pickle
from dataclasses import dataclass, field, fields
from fnmatch import fnmatch
from pathlib import Path

from ablate.core.errors import AblateError, closest
from ablate.data import shardfile

KINDS = ("shards", "corpus")
KEYS = {"shards": ("train", "val", "format", "vocab"), "corpus": ("val", "val_every", "text_field", "shard_tokens")}
GRID_KEYS = ("dataset", "tokenizer", "shards", "corpus", "train", "val", "format", "vocab", "val_every", "text_field",
             "shard_tokens")
TRAIN_NAMES = ("train.bin", "*_train_*.bin", "*_train.bin")
VAL_NAMES = ("val.bin", "*_val_*.bin", "*_val.bin")
DOC_SUFFIXES = (".parquet", ".arrow", ".jsonl", ".json", ".ndjson", ".txt", ".md")  # what a folder's scan takes
SAMPLES, SAMPLE_BYTES = 16, 4096
FORMAT_VERSION = {"shards": b"ablate shards v1\0", "corpus": b"ablate corpus v1\0"}  # in every id


class DataKeyError(AblateError):
    """A bad key of a grid's data: section; `key` lets the grid point at its line."""

    def __init__(self, key: str, message: str):
        super().__init__(message)
        self.key = key


@dataclass(frozen=True)
class Spec:
    """A parsed shards: / corpus: data set (fields in the canonical string's order)."""
    kind: str
    paths: tuple = ()
    train: tuple = ()
    val: tuple = ()
    format: str = "auto"
    vocab: int | None = None
    val_every: int = 1000
    text_field: str = "text"
    shard_tokens: int = 100_000_000

    def canonical(self) -> str:
        defaults = Spec(self.kind)
        opts = [f"{f.name}={_text(getattr(self, f.name))}" for f in fields(self)[2:]
                if getattr(self, f.name) != getattr(defaults, f.name)]
        return f"{self.kind}:" + ";".join(([_text(self.paths)] if self.paths else []) + opts)

    @property
    def stem(self) -> str:
        """A readable name for directories: the first path's name without suffixes or glob characters."""
        first = (self.paths or self.train or self.val or ("data",))[0]
        name = Path(first.rstrip("/")).name.split(".")[0]
        return "".join(c for c in name if c.isalnum() or c in "-_") or "data"


def _text(value) -> str:
    return ",".join(value) if isinstance(value, tuple) else str(value)


# ---- the string and the grid's keys

def _paths(key: str, value, where: str) -> tuple:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v.strip() for v in values):
        raise DataKeyError(key, f"{where}'{key}' must be a path or glob, or a list of them, got {value!r}")
    bad = next((v for v in values if "," in v or ";" in v), None)
    if bad:
        raise DataKeyError(key, f"{where}'{key}': {bad!r} has ',' or ';', which separate paths in a data set string; "
                                "rename the file or folder")
    return tuple(v.strip() for v in values)


def _option(kind: str, key: str, value, where: str, text: bool = False):
    """A checked option value: from YAML, or (text=True) the text of the string form, where ','
    separates paths and numbers are written out."""
    if key not in KEYS[kind]:
        other = next(k for k in KINDS if k != kind)
        hint = f" (a {other} key)" if key in KEYS[other] else closest(key, KEYS[kind])
        raise DataKeyError(key, f"{where}unknown key '{key}' for {kind}{hint}; allowed: {', '.join(KEYS[kind])}")
    if key in ("train", "val"):
        return _paths(key, value.split(",") if text else value, where)
    if key == "format":
        if value not in shardfile.FORMATS:
            raise DataKeyError(key, f"{where}'format' {value!r} is not allowed; one of {', '.join(shardfile.FORMATS)}")
        return value
    if key == "text_field":
        if not isinstance(value, str) or not value:
            raise DataKeyError(key, f"{where}'text_field' must be a column or field name, got {value!r}")
        return value
    lo, hi = {"vocab": (1, 2 ** 32), "val_every": (2, 2 ** 62), "shard_tokens": (1, 2 ** 31 - 1)}[key]
    number = value
    if text:
        try:
            number = int(value.replace("_", ""))
        except ValueError:
            number = value
    if type(number) is not int or not lo <= number <= hi:
        raise DataKeyError(key, f"{where}'{key}' must be an integer in [{lo:,}, {hi:,}], got {value!r}")
    return number


def parse(dataset: str) -> Spec:
    """The Spec of a shards:... or corpus:... string; every problem names the key."""
    kind, _, rest = dataset.partition(":")
    where = f"dataset '{dataset}': "
    parts = [p for p in rest.split(";")] if rest else []
    values: dict = {}
    if parts and not ("=" in parts[0] and parts[0].split("=", 1)[0].strip() in KEYS[kind]):
        values["paths"] = _paths(kind, parts.pop(0).split(","), where)
    for part in parts:
        key, eq, value = part.partition("=")
        if not eq:
            raise DataKeyError(key, f"{where}'{part}' is not key=value")
        values[key.strip()] = _option(kind, key.strip(), value.strip(), where, text=True)
    return _complete(Spec(kind, **values), where)


def from_grid(data: dict) -> str | None:
    """The canonical data set string for a grid's data: keys (None when it names a data set with
    `dataset:` alone). DataKeyError names the key at fault."""
    extra = [k for k in data if k not in ("dataset", "tokenizer")]
    if not extra:
        return None
    if "dataset" in data:
        raise DataKeyError(extra[0], f"data: '{extra[0]}' and 'dataset' both name the data set; use one")
    kinds = [k for k in KINDS if k in data]
    if len(kinds) > 1:
        raise DataKeyError("corpus", "data: 'shards' and 'corpus' name two data sets; a grid has one data: section")
    kind = kinds[0] if kinds else "shards" if "train" in data else None
    if kind is None:
        raise DataKeyError(extra[0], f"data: '{extra[0]}' belongs to a data set: name it with shards: PATH, "
                                     "corpus: PATH, or train: and val: token files")
    values: dict = {}
    for key in extra:
        if key == kind:
            values["paths"] = _paths(key, data[key], "data: ")
        else:
            values[key] = _option(kind, key, data[key], "data: ")
    return _complete(Spec(kind, **values), "data: ").canonical()


def _complete(spec: Spec, where: str) -> Spec:
    if spec.kind == "shards" and not spec.paths and not (spec.train and spec.val):
        missing = "val" if spec.train else "train"
        raise DataKeyError(missing, f"{where}shards need a folder or glob (shards: PATH) or both train and val files "
                                    f"('{missing}' is missing)")
    if spec.kind == "corpus" and not spec.paths:
        raise DataKeyError("corpus", f"{where}a corpus needs its document files (corpus: PATH or GLOB)")
    return spec


# ---- files

def _expand(pattern: str, what: str, folder_files) -> list[Path]:
    """The regular files a path, folder or glob names, sorted; an empty glob is an error."""
    path = Path(os.path.expanduser(pattern))
    if glob.has_magic(pattern):
        found = []
        for m in sorted(glob.glob(str(path), recursive=True)):
            found += folder_files(Path(m)) if Path(m).is_dir() else [Path(m)] if Path(m).is_file() else []
        if not found:
            raise AblateError(f"{what}: '{pattern}' matches no file")
        return found
    if path.is_dir():
        found = folder_files(path)
        if not found:
            raise AblateError(f"{what}: the folder {path} holds no file it can read")
        return found
    if not path.exists():
        raise AblateError(f"{what}: {path} does not exist")
    if not path.is_file():
        raise AblateError(f"{what}: {path} is not a regular file (a device, a FIFO...)")
    return [path]


def expand_all(patterns, what: str, folder_files) -> list[Path]:
    out: dict = {}
    for p in patterns:
        for f in _expand(p, what, folder_files):
            out.setdefault(f.resolve(), f)
    return list(out.values())


def _bin_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.suffix == ".bin" and p.is_file())


def doc_files(folder: Path) -> list[Path]:
    """A corpus folder's files: a Hugging Face save_to_disk folder's arrow files in their order, or
    the files of the kinds documents.py reads (compressed too), not hidden ones."""
    state = folder / "state.json"
    if state.is_file():
        try:
            names = [d["filename"] for d in json.loads(state.read_text())["_data_files"]]
        except (ValueError, KeyError, TypeError):
            raise AblateError(f"{state}: not a Hugging Face save_to_disk state (no _data_files list)") from None
        return [folder / n for n in names]
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
                  and any(s in DOC_SUFFIXES for s in p.suffixes))


def shard_files(spec: Spec) -> dict[str, list[Path]]:
    """{'train': [...], 'val': [...]}: the named files, or the conventional names among the paths."""
    where = f"dataset '{spec.canonical()}'"
    found = expand_all(spec.paths, where, _bin_files) if spec.paths else []
    out = {}
    for split, names, given in (("train", TRAIN_NAMES, spec.train), ("val", VAL_NAMES, spec.val)):
        out[split] = expand_all(given, f"{where}: {split}", _bin_files) if given else \
            [p for p in found if any(fnmatch(p.name, n) for n in names)]
        if not out[split]:
            raise AblateError(f"{where}: no {split} shards among {', '.join(spec.paths)} (names {', '.join(names)}); "
                              f"name them with {split}: GLOB")
    return out


def corpus_files(spec: Spec) -> dict[str, list[Path]]:
    where = f"dataset '{spec.canonical()}'"
    out = {"train": expand_all(spec.paths, where, doc_files)}
    out["val"] = expand_all(spec.val, f"{where}: val", doc_files) if spec.val else []
    return out


# ---- content ids

_DIGESTS: dict = {}  # (path, size, mtime_ns, inode) -> digest: a plan reads each file version once


def sampled_digest(path: Path) -> str:
    """sha256 of a file's size and SAMPLES blocks of SAMPLE_BYTES spread from its first to its last
    byte (the whole file when it is that small)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _DIGESTS:
        h = hashlib.sha256(str(st.st_size).encode())
        with open(path, "rb") as f:
            if st.st_size <= SAMPLES * SAMPLE_BYTES:
                h.update(f.read())
            else:
                for i in range(SAMPLES):
                    f.seek((st.st_size - SAMPLE_BYTES) * i // (SAMPLES - 1))
                    h.update(f.read(SAMPLE_BYTES))
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def content_id(kind: str, options: dict, files: dict[str, list]) -> str:
    """The data_id: format version, the options that change the tokens, and every file's
    (split, name, size, sampled digest). Paths are not in it: moved files keep their id."""
    entries = [[split, Path(f).name, Path(f).stat().st_size, sampled_digest(Path(f))]
               for split, fs in files.items() for f in fs]
    blob = json.dumps({"options": options, "files": entries}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(FORMAT_VERSION[kind] + blob.encode()).hexdigest()[:16]


@dataclass
class Shards:
    """A shards: data set as it is now: its token files per split, id and vocabulary (None: the
    tokenizer's), and the tokenizer its meta file names (None: not said)."""
    splits: dict
    data_id: str
    vocab: int | None
    tokenizer: str | None = None
    meta_file: str | None = None
    sizes: dict = field(default_factory=dict)


def shards(spec: Spec) -> Shards:
    """Read every shard's header (format, count against size) and sample it for the id."""
    files = shard_files(spec)
    splits = {split: [shardfile.read_token_file(p, "auto" if spec.format == "llmc" else spec.format)
                      for p in paths] for split, paths in files.items()}
    data_id = content_id("shards", {"dtypes": sorted({t.dtype for ts in splits.values() for t in ts})}, files)
    vocab, tokenizer, meta_file = spec.vocab, None, None
    meta = _meta_beside(files["train"][0])
    if meta:
        meta_file, info = meta
        vocab = vocab if vocab is not None else info.get("vocab_size")
        tokenizer = info.get("tokenizer")
    widest = max((t.dtype for ts in splits.values() for t in ts), key=lambda d: shardfile.KINDS[d][2])
    if vocab is not None and widest == "uint16" and vocab > shardfile.UINT16_VOCAB:
        raise AblateError(f"dataset '{spec.canonical()}': vocabulary {vocab:,} does not fit the shards' uint16 tokens")
    return Shards(splits, data_id, vocab, tokenizer, meta_file,
                  {s: sum(t.tokens for t in ts) for s, ts in splits.items()})


class _NoGlobals(pickle.Unpickler):
    def find_class(self, module, name):  # a meta.pkl is plain data: nothing may be imported or run
        raise pickle.UnpicklingError(f"{module}.{name} is not plain data")


def _meta_beside(first: Path) -> tuple[str, dict] | None:
    """(file, {vocab_size, tokenizer}) from a meta.json or nanoGPT's meta.pkl beside the shards."""
    for name in ("meta.json", "meta.pkl"):
        path = first.parent / name
        if not path.is_file():
            continue
        try:
            info = json.loads(path.read_text()) if name == "meta.json" else _NoGlobals(open(path, "rb")).load()
        except (ValueError, OSError, pickle.UnpicklingError, EOFError) as e:
            raise AblateError(f"{path}: not a readable {name} ({e})") from None
        vocab = info.get("vocab_size") if isinstance(info, dict) else None
        if type(vocab) is not int or vocab < 1:
            raise AblateError(f"{path}: needs an integer vocab_size, got {vocab!r}")
        tok = info.get("tokenizer")
        return str(path), {"vocab_size": vocab, "tokenizer": tok if isinstance(tok, str) else None}
    return None

