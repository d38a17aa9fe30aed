"""Write character-level Shakespeare as llm.c shards, the way a researcher's own preprocessing
would (llm.c's dev/data/data_common.py write_datafile: a header of 256 int32, then uint16
tokens), for grids/shards.yaml:

    python scripts/make_shards.py [OUT]      # default data/shakespeare_char_shards

OUT/shakespeare_val_000000.bin   the first 10% of the characters (as llm.c's tinyshakespeare.py
                                 holds out the start of the text)
OUT/shakespeare_train_00000k.bin the rest, in 8 shards
OUT/meta.json                    {"vocab_size": ..., "tokenizer": "char", "itos": [...]}

Independent of ablate's own writer on purpose: the grid reads shards that ablate did not write.
"""
import json
import sys
from pathlib import Path

import numpy as np

from ablate.data.corpora import shakespeare_plays  # the 38 plays, as `dataset: shakespeare` reads them

SHARDS = 8


def write_datafile(path: Path, tokens: np.ndarray) -> None:
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, len(tokens))  # llm.c's magic, version, token count
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.astype(np.uint16).tobytes())


def main(out: Path) -> None:
    text = "".join(p.read_text(encoding="utf-8") for p in shakespeare_plays())
    itos = sorted(set(text))
    points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)  # code points; itos is sorted by them
    ids = np.searchsorted(np.array([ord(c) for c in itos], dtype=np.uint32), points).astype(np.uint16)
    n_val = len(ids) // 10
    out.mkdir(parents=True, exist_ok=True)
    write_datafile(out / "shakespeare_val_000000.bin", ids[:n_val])
    for k, part in enumerate(np.array_split(ids[n_val:], SHARDS)):
        write_datafile(out / f"shakespeare_train_{k:06d}.bin", part)
    (out / "meta.json").write_text(json.dumps({"vocab_size": len(itos), "tokenizer": "char", "itos": itos}))
    print(f"{out}: {len(ids) - n_val:,} train tokens in {SHARDS} shards, {n_val:,} val tokens, vocab {len(itos)}")


if __name__ == "__main__":
    main(Path(sys.argv[1] if len(sys.argv) > 1 else "data/shakespeare_char_shards"))
