"""Documents from a corpus's files, in a fixed order, cut into units of work (nothing is tokenized here).

    parquet, arrow           one document per row of a string column (text_field); arrow: a Hugging
                             Face save_to_disk file (Arrow IPC stream) or an Arrow IPC file
    jsonl, json, ndjson      one document per line: a JSON object's text_field; empty lines skipped
    any other file           one document: the whole file, UTF-8 (a .txt, one of a folder's files)
    + .gz / .zst             decompressed while they are read

A unit is the next ~UNIT_CHARS of text: whole documents, or pieces of one that is longer. A long
document is cut only after a line break between two printable ASCII characters ("x\\ny"): GPT-2's
pre-tokenizer always splits there (no pre-token holds a newline and a non-space, and a lone
newline after a non-space is a pre-token of its own in both halves), so the pieces' tokens are the
document's tokens (tests check it on random text). A document without such a line break stays
whole: it is the one thing that can exceed the memory bound.

Units are a function of the files alone, never of the number of workers, and each unit starts at
a Position (file, record, offset into it, documents before it) from which `units` can start again:
the pipeline resumes there. Every bad input is one line naming the file and the line or byte.
"""
from __future__ import annotations

import contextlib
import gzip
import io
import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

from ablate.core.errors import AblateError

UNIT_CHARS = 1 << 20  # text per unit of work: ~0.2 s of GPT-2 tokenizing on one core
READ_BYTES = 1 << 20  # a text file is read and decoded this much at a time
RECORD_KINDS = {".parquet": "parquet", ".arrow": "arrow", ".jsonl": "jsonl", ".json": "jsonl", ".ndjson": "jsonl"}
TRAIN, VAL = 0, 1  # streams


class InputError(AblateError):
    """Bad input found while reading a corpus: a prepare that meets one leaves nothing behind (the
    input must change, and with it the data set's id and directory)."""


@dataclass(frozen=True)
class Position:
    """Where a unit starts: file index, record index in it, offset into that record (characters; bytes
    for a whole-file text document), the record's byte offset in its (decompressed) file, and how
    many documents of the training files came before (the val rule counts them)."""
    file: int = 0
    record: int = 0
    offset: int = 0
    seek: int = 0
    doc: int = 0

    def to_json(self) -> dict:
        return self.__dict__.copy()


@dataclass
class Unit:
    index: int
    start: Position
    pieces: list  # (text, stream, first piece of its document, last piece of its document)
    docs: int     # documents that begin in this unit
    chars: int
    read: int     # bytes of the corpus's files read when the unit ended (progress)


# ---- the files

def _decompressing(path: Path):
    """(binary stream of the file's content, the raw file whose tell() is the progress)."""
    raw = open(path, "rb")
    if path.suffix == ".gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if path.suffix == ".zst":
        import zstandard  # only .zst corpora need it

        return io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)), raw
    return raw, raw


def _skip(stream, nbytes: int, path: Path) -> None:
    """Move a (decompressed) stream nbytes forward: seek when it can, else read and drop."""
    if stream.seekable() and not isinstance(stream, gzip.GzipFile):
        stream.seek(nbytes)
        return
    while nbytes > 0:
        got = len(stream.read(min(nbytes, READ_BYTES)))
        if not got:
            raise InputError(f"{path}: ends before byte {nbytes:,} where the prepare stopped: the file changed")
        nbytes -= got


@contextlib.contextmanager
def _reading(path: Path):
    """A damaged compressed file (gzip's OSError / EOFError, zstandard's ZstdError) is one line."""
    try:
        yield
    except AblateError:
        raise
    except (OSError, EOFError) as e:
        raise InputError(f"{path}: cannot be read or decompressed ({type(e).__name__}: {e})") from None
    except Exception as e:
        if type(e).__module__.split(".")[0] != "zstandard":
            raise
        raise InputError(f"{path}: cannot be decompressed ({type(e).__name__}: {e})") from None


class Source:
    """One file of a corpus: its records (documents) from a Position on; `read` is how many of its
    bytes were read so far (compressed bytes for a compressed file)."""

    def __init__(self, path, role: int, text_field: str = "text", kind: str | None = None):
        """kind: parquet, arrow, jsonl or text; None: from the file's name."""
        self.path, self.role, self.text_field = Path(path), role, text_field
        self.size = self.path.stat().st_size
        suffixes = [s for s in self.path.suffixes if s not in (".gz", ".zst")]
        self.kind = kind or RECORD_KINDS.get(suffixes[-1] if suffixes else "", "text")
        self.read = 0

    def records(self, record: int = 0, seek: int = 0) -> Iterator[tuple[int, int, Callable, bool]]:
        """(record index, its byte offset, text(offset) -> its text in chunks from that offset,
        whether offsets count bytes (a whole-file document) or characters)."""
        if self.kind == "text":
            if record == 0:
                yield 0, 0, self.text_chunks, True
            return
        rows = self._json_lines(record, seek) if self.kind == "jsonl" else self._columns(record)
        for i, start, text in rows:
            yield i, start, (lambda offset, text=text: iter((text[offset:],))), False

    def text_chunks(self, offset: int) -> Iterator[str]:
        """The whole file as one document, decoded READ_BYTES at a time from byte `offset` (a
        character boundary: pieces end after a newline)."""
        stream, raw = _decompressing(self.path)
        with stream, raw, _reading(self.path):
            _skip(stream, offset, self.path)
            pending, pos = b"", offset
            while True:
                block = stream.read(READ_BYTES)
                self.read = raw.tell()
                data = pending + block
                try:
                    text, pending = data.decode("utf-8"), b""
                except UnicodeDecodeError as e:
                    if e.end != len(data) or not block or e.reason != "unexpected end of data":
                        raise InputError(f"{self.path}: byte {pos + e.start:,} is not UTF-8 ({e.reason})") from None
                    text, pending = data[:e.start].decode("utf-8"), data[e.start:]  # a character cut by the block
                pos += len(data) - len(pending)
                if text:
                    yield text
                if not block:
                    return

    def _json_lines(self, record: int, seek: int) -> Iterator[tuple[int, int, str]]:
        stream, raw = _decompressing(self.path)
        field = self.text_field
        with stream, raw, _reading(self.path):
            _skip(stream, seek, self.path)
            pos = seek
            for i, line in enumerate(stream, start=record):
                start, pos = pos, pos + len(line)
                self.read = raw.tell()
                if not line.strip():
                    continue
                where = f"{self.path}:{i + 1}"
                try:
                    obj = json.loads(line.decode("utf-8"))
                except UnicodeDecodeError as e:
                    raise InputError(f"{where}: byte {start + e.start:,} is not UTF-8 ({e.reason})") from None
                except ValueError as e:
                    hint = " (a JSON array? ablate reads one object per line)" if line.lstrip()[:1] == b"[" else ""
                    raise InputError(f"{where}: not JSON ({getattr(e, 'msg', e)} at column "
                                      f"{getattr(e, 'colno', '?')}){hint}") from None
                if not isinstance(obj, dict):
                    raise InputError(f"{where}: a JSON {type(obj).__name__}, not an object with a '{field}' field "
                                     "(ablate reads one object per line)")
                if field not in obj:
                    keys = ", ".join(list(obj)[:8]) or "no keys"
                    raise InputError(f"{where}: no '{field}' field (it has {keys}); set text_field")
                text = obj[field]
                if text is not None and not isinstance(text, str):
                    raise InputError(f"{where}: '{field}' is {type(text).__name__}, not a string")
                yield i, start, text or ""

    def _columns(self, record: int) -> Iterator[tuple[int, int, str]]:
        import pyarrow as pa  # only parquet / arrow corpora need it

        with _reading(self.path):
            try:
                batches, names, row, total = self._batches(pa, record)
            except pa.ArrowInvalid as e:
                raise InputError(f"{self.path}: not a readable {self.kind} file ({e})") from None
            field = self.text_field
            if field not in names:
                raise InputError(f"{self.path}: no column '{field}' (columns: {', '.join(names[:12])}); set text_field")
            for batch in batches:
                col = batch.column(names.index(field))
                if not (pa.types.is_string(col.type) or pa.types.is_large_string(col.type)):
                    raise InputError(f"{self.path}: column '{field}' holds {col.type}, not strings")
                if row + len(batch) > record:
                    for i, text in enumerate(col.to_pylist(), start=row):
                        if i >= record:
                            yield i, 0, text or ""
                row += len(batch)
                self.read = self.size * row // total if total else 0

    def _batches(self, pa, record: int):
        """(record batches from the row group holding `record` on, column names, the first
        batch's row, rows in the file or 0 when unknown)."""
        if self.kind == "parquet":
            import pyarrow.parquet as pq  # as above

            f = pq.ParquetFile(self.path)
            first, groups = 0, []
            for g in range(f.num_row_groups):
                n = f.metadata.row_group(g).num_rows
                if first + n <= record and not groups:
                    first += n
                else:
                    groups.append(g)
            return f.iter_batches(batch_size=1024, row_groups=groups), f.schema_arrow.names, first, f.metadata.num_rows
        source = pa.memory_map(str(self.path))
        try:
            reader = pa.ipc.open_stream(source)  # what Hugging Face's save_to_disk writes
            return reader, reader.schema.names, 0, 0
        except pa.ArrowInvalid:
            reader = pa.ipc.open_file(source)
            return ((reader.get_batch(i) for i in range(reader.num_record_batches)), reader.schema.names, 0,
                    reader.count_rows() if hasattr(reader, "count_rows") else 0)


class RecordSource:
    """Records that are not files (a Hugging Face Dataset, any re-iterable of {field: text}):
    one Source-like reader, resumed by skipping records."""
    kind, size, read = "records", 0, 0

    def __init__(self, records: Iterable[dict], role: int, text_field: str = "text", name: str = "records"):
        self.rows, self.role, self.text_field, self.path = records, role, text_field, Path(name)

    def records(self, record: int = 0, seek: int = 0):
        for i, r in enumerate(itertools.islice(iter(self.rows), record, None), start=record):
            text = r[self.text_field]
            yield i, 0, (lambda offset, text=text: iter(((text or "")[offset:],))), False


# ---- cutting documents into pieces and units

def _printable(c: str) -> bool:
    return "!" <= c <= "~"


def _safe_cut(text: str, start: int) -> tuple[int | None, int]:
    """(first p >= start where text splits into text[:p] | text[p:] without changing its tokens, or
    None; where to search next time once more text has arrived)."""
    j = text.find("\n", max(start - 1, 1))
    while j != -1:
        p = j + 1
        if p >= len(text):
            return None, j
        if _printable(text[j - 1]) and _printable(text[p]):
            return p, p
        j = text.find("\n", p)
    return None, max(start, len(text))


def cut(chunks: Iterable[str], limit: int) -> Iterator[tuple[str, bool]]:
    """A document's text in pieces of at least `limit` characters (but the last), each ending at a
    safe cut; (piece, is last). An empty document is one empty piece."""
    buf, search = "", limit
    for chunk in chunks:
        buf += chunk
        while len(buf) > limit:
            p, search = _safe_cut(buf, search)
            if p is None:
                break
            yield buf[:p], False
            buf, search = buf[p:], limit
    yield buf, True


def units(sources: list, stream_of: Callable[[int, int], int], start: Position = Position(), first_unit: int = 0,
          unit_chars: int | None = None) -> Iterator[Unit]:
    """The corpus's units from `start` on (the first numbered first_unit). stream_of(role, document
    number) -> TRAIN or VAL, where documents are numbered over the training files."""
    unit_chars = unit_chars or UNIT_CHARS
    pieces, chars, docs, index = [], 0, 0, first_unit
    first_pos = start
    doc = start.doc
    done_bytes = sum(s.size for s in sources[:start.file])
    for f in range(start.file, len(sources)):
        src = sources[f]
        resume = f == start.file
        for rec, seek, text, in_bytes in src.records(start.record if resume else 0, start.seek if resume else 0):
            offset = start.offset if resume and rec == start.record else 0
            number = doc
            if src.role == TRAIN:
                doc += 1
            stream = stream_of(src.role, number)
            for piece, last in cut(text(offset), unit_chars):
                if not pieces:
                    first_pos = Position(f, rec, offset, seek, number)
                pieces.append((piece, stream, offset == 0, last))
                docs += offset == 0
                chars += len(piece)
                offset += len(piece.encode("utf-8")) if in_bytes else len(piece)
                if chars >= unit_chars:
                    yield Unit(index, first_pos, pieces, docs, chars, done_bytes + src.read)
                    pieces, chars, docs, index = [], 0, 0, index + 1
        done_bytes += src.size
        src.read = 0
    if pieces:
        yield Unit(index, first_pos, pieces, docs, chars, done_bytes)
