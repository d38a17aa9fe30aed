"""Token files on disk: llm.c's shard format and nanoGPT's raw token files. No numpy: the plan
reads headers to learn split sizes.

    llm.c / modded-nanogpt  a header of 256 little-endian int32 (magic, version, token count, then
                            zeros), then the tokens:
                              magic 20240520, version 1: uint16 tokens (GPT-2; what llm.c's
                                                          dev/data/data_common.py writes as "gpt-2")
                              magic 20240801, version 7: uint32 tokens (its "llama-3" kind, for
                                                          vocabularies over 65,536)
    nanoGPT                 the tokens alone (train.bin / val.bin), uint16 or uint32: nothing in the
                            file says which, so the grid declares it (format: uint16 | uint32)

What ablate writes is llm.c's format (uint16 when the vocabulary fits, else uint32), so llm.c and
modded-nanogpt read our shards too. Every problem is one line naming the file and the byte.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

from ablate.core.errors import AblateError

HEADER_INTS = 256
HEADER_BYTES = HEADER_INTS * 4
KINDS = {"uint16": (20240520, 1, 2), "uint32": (20240801, 7, 4)}  # dtype -> (magic, version, bytes per token)
FORMATS = ("auto", "llmc", "uint16", "uint32")  # auto/llmc: read the header; uint16/uint32: raw, declared
UINT16_VOCAB = 2 ** 16  # ids 0 .. 65,535


@dataclass(frozen=True)
class TokenFile:
    """Where a file's tokens are: `tokens` items of `dtype` from byte `offset` of `path`."""
    path: str
    offset: int
    tokens: int
    dtype: str

    @property
    def itemsize(self) -> int:
        return KINDS[self.dtype][2]

    def to_json(self) -> dict:
        return {"path": self.path, "offset": self.offset, "tokens": self.tokens, "dtype": self.dtype}


def dtype_for(vocab: int) -> str:
    """The token dtype a vocabulary needs: uint16 while every id fits, else uint32."""
    return "uint16" if vocab <= UINT16_VOCAB else "uint32"


def header(count: int, dtype: str) -> bytes:
    """llm.c's 1,024-byte header for `count` tokens of `dtype`."""
    if not 0 <= count < 2 ** 31:
        raise AblateError(f"a shard holds at most 2^31 - 1 tokens (llm.c's int32 count), not {count:,}")
    magic, version, _ = KINDS[dtype]
    return struct.pack(f"<3i{HEADER_INTS - 3}i", magic, version, count, *([0] * (HEADER_INTS - 3)))


def read_token_file(path, fmt: str = "auto") -> TokenFile:
    """Describe one token file, checking that it is what it says: the magic and version of an
    llm.c header (auto and llmc), the header's count against the file size, a raw file's size a
    whole number of tokens, at least one token."""
    path = Path(path)
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(HEADER_BYTES)
    except OSError as e:
        raise AblateError(f"{path}: cannot be read ({e.strerror})") from None
    if fmt in ("uint16", "uint32"):
        itemsize = KINDS[fmt][2]
        if size % itemsize:
            raise AblateError(f"{path}: {size:,} bytes is not a whole number of {fmt} tokens (the last token is cut "
                              f"at byte {size - size % itemsize:,}: truncated?)")
        if size == 0:
            raise AblateError(f"{path}: no tokens (an empty file)")
        return TokenFile(str(path), 0, size // itemsize, fmt)
    if len(head) < 12:
        raise AblateError(f"{path}: {size} bytes, shorter than llm.c's {HEADER_BYTES}-byte header (truncated?)")
    magic, version, count = struct.unpack("<3i", head[:12])
    kind = next((d for d, (m, _, _) in KINDS.items() if m == magic), None)
    if kind is None:
        raise AblateError(f"{path}: magic {magic} at byte 0 is not llm.c's ({KINDS['uint16'][0]} for uint16 "
                          f"tokens, {KINDS['uint32'][0]} for uint32); a raw nanoGPT token file needs format: uint16 "
                          "(or uint32)")
    if version != KINDS[kind][1]:
        raise AblateError(f"{path}: version {version} at byte 4, but an llm.c {kind} shard has version "
                          f"{KINDS[kind][1]}")
    if size < HEADER_BYTES:
        raise AblateError(f"{path}: {size} bytes, shorter than llm.c's {HEADER_BYTES}-byte header (truncated?)")
    itemsize = KINDS[kind][2]
    if count <= 0:
        raise AblateError(f"{path}: the header (byte 8) counts {count:,} tokens: an llm.c shard holds at least one")
    expected = HEADER_BYTES + count * itemsize
    if size != expected:
        why = "truncated?" if size < expected else "the header's count is wrong, or bytes were appended"
        raise AblateError(f"{path}: the header (byte 8) counts {count:,} {kind} tokens, {expected:,} bytes with the "
                          f"header, but the file has {size:,} bytes ({why})")
    return TokenFile(str(path), HEADER_BYTES, count, kind)

