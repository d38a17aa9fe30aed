"""corpus: data sets: raw documents of every kind tokenized into llm.c shards that an independent
reader (data_helpers.read_llmc) reads back as llm.c's fineweb.py would have written them; the
same bytes for any number of workers; bad input as one line, leaving nothing behind."""
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ablate.core.errors import AblateError
from ablate.data import corpora, pipeline, prepare
from conftest import ablate_cli
from data_helpers import documents, gpt2_ids, llmc_stream, read_llmc, write_corpus

ROOT = Path(__file__).resolve().parents[2]


def shards_of(out: Path, split: str) -> list[np.ndarray]:
    return [read_llmc(p) for p in sorted(out.glob(f"*_{split}_*.bin"))]


def all_bytes(out: Path) -> dict:
    return {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "meta.json"}


def test_every_kind_of_file_tokenizes_to_llmc_shards(tmp_path):
    docs = documents(60)
    files = write_corpus(tmp_path / "raw", docs)
    assert [p.suffix for p in files[:4]] == [".parquet", ".jsonl", ".gz", ".zst"]
    dataset = f"corpus:{tmp_path / 'raw'};val_every=7;shard_tokens=500"
    out = prepare.prepare(dataset, "gpt2", workers=1)
    val_docs = [d for i, d in enumerate(docs) if i % 7 == 0]  # every 7th document, counted from the first
    train_docs = [d for i, d in enumerate(docs) if i % 7]
    train, val = shards_of(out, "train"), shards_of(out, "val")
    assert [len(t) for t in train[:-1]] == [500] * (len(train) - 1) and 0 < len(train[-1]) <= 500
    assert np.concatenate(train).tolist() == llmc_stream(train_docs)
    assert np.concatenate(val).tolist() == llmc_stream(val_docs)
    meta = json.loads((out / "meta.json").read_text())
    assert (meta["train_tokens"], meta["val_tokens"]) == (sum(map(len, train)), sum(map(len, val)))
    assert meta["documents"] == 60
    assert [f["file"] for f in meta["train"]] == sorted(p.name for p in out.glob("raw_train_*.bin"))
    assert not list(out.glob("*.part")) and not (out / "progress.json").exists()
    # what the trainer reads is what is on disk
    files = corpora.split_files(dataset, "gpt2", out, meta)
    assert [Path(f.path).name for f in files["val"]] == [p.name for p in sorted(out.glob("*_val_*.bin"))]
    assert corpora.read_meta(dataset, "gpt2") == meta and prepare.prepare(dataset, "gpt2") == out


def test_val_files_char_tokenizer_and_uint32_vocabulary(tmp_path):
    docs = documents(20, seed=1)
    (tmp_path / "train.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[:15]))
    (tmp_path / "val.jsonl").write_text("".join(json.dumps({"body": d}) + "\n" for d in docs[15:]))
    out = prepare.prepare(f"corpus:{tmp_path}/train.jsonl;val={tmp_path}/val.jsonl;text_field=body", "char")
    meta = json.loads((out / "meta.json").read_text())
    itos = sorted(set("".join(docs)))
    assert meta["itos"] == itos and meta["vocab_size"] == len(itos) and meta["eot"] is None
    decode = lambda shards: "".join(itos[t] for t in np.concatenate(shards))  # noqa: E731
    assert decode(shards_of(out, "train")) == "".join(docs[:15]) and decode(shards_of(out, "val")) == "".join(docs[15:])
    # a vocabulary past 65,536 ids (here: 75k distinct characters): uint32 shards, llm.c's other kind
    chars = "".join(map(chr, [*range(0x4E00, 0xA000), *range(0xAC00, 0xD7A4), *range(0x20000, 0x2A6E0)]))
    wide = [chars[i::3] for i in range(3)]
    (tmp_path / "wide.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in wide))
    big = prepare.prepare(f"corpus:{tmp_path}/wide.jsonl;val_every=3", "char")
    meta = json.loads((big / "meta.json").read_text())
    assert meta["dtype"] == "uint32" and meta["vocab_size"] == len(chars) > 65536
    train = np.concatenate(shards_of(big, "train"))
    assert train.dtype == np.uint32 and "".join(meta["itos"][t] for t in train) == wide[1] + wide[2]


def test_any_number_of_workers_writes_the_same_bytes(tmp_path, monkeypatch):
    write_corpus(tmp_path / "raw", documents(150, seed=2, hi=200))
    monkeypatch.setattr("ablate.data.documents.UNIT_CHARS", 2000)  # ~80 units: 3 workers finish them out of order
    outs = []
    for workers in (1, 3):
        os.environ["ABLATE_DATA_DIR"] = str(tmp_path / f"data{workers}")
        outs.append(prepare.prepare(f"corpus:{tmp_path / 'raw'};val_every=10;shard_tokens=3000", "gpt2",
                                    workers=workers))
    one, three = (all_bytes(o) for o in outs)
    assert len(one) > 4 and one == three


def test_a_long_document_is_cut_where_its_tokens_do_not_change(tmp_path):
    """A document longer than a unit is tokenized in pieces; the pieces' tokens are the whole's."""
    from hypothesis import given, settings
    from hypothesis import strategies as st

    from ablate.data.documents import cut

    alphabet = st.sampled_from(list("ab Z.,'\n\n  \t\r1é🙂-") + ["ll", "'s", " \n", "\n\n"])

    @settings(max_examples=300, deadline=None)
    @given(st.lists(alphabet, min_size=1, max_size=400), st.integers(1, 40))
    def check(parts, limit):
        text = "".join(parts)
        pieces = [p for p, _ in cut(iter([text[:len(text) // 2], text[len(text) // 2:]]), limit)]
        assert "".join(pieces) == text
        assert [t for p in pieces for t in gpt2_ids(p)] == gpt2_ids(text)

    check()
    lines = "\n".join(documents(400, seed=3, hi=30)) + "\n"  # a realistic long document: cut many times
    pieces = [p for p, _ in cut(iter([lines]), 200)]
    assert len(pieces) > 50 and [t for p in pieces for t in gpt2_ids(p)] == gpt2_ids(lines)


def test_a_single_huge_text_file_streams_in_pieces_with_the_same_tokens(tmp_path):
    """text:PATH, one document of many units: nanoGPT's bytes, tokenized piece by piece."""
    text = "\n".join(documents(3000, seed=4)) + "\n"
    (tmp_path / "big.txt").write_text(text, encoding="utf-8")
    out = tmp_path / "out"
    out.mkdir()
    from ablate.data.documents import TRAIN, Source

    layout = pipeline.Layout({TRAIN: lambda k: "tokens.bin"}, header=False, eot="after", shard_tokens=None)
    done = pipeline.tokenize(out, [Source(tmp_path / "big.txt", TRAIN)], lambda r, d: TRAIN, "gpt2", layout,
                             key="k", workers=2, unit_chars=4096)
    assert np.fromfile(out / "tokens.bin", dtype=np.uint16).tolist() == gpt2_ids(text) + [50256]
    assert done.docs == 1


def _prepare_cmd(dataset, workers=1, unit_chars=None):
    code = ("import sys; from ablate.data import prepare, documents; "
            + (f"documents.UNIT_CHARS = {unit_chars}; " if unit_chars else "")
            + f"prepare.prepare({dataset!r}, 'gpt2', workers={workers})")
    return [sys.executable, "-c", code]


def test_killed_at_any_moment_it_resumes_to_the_same_bytes(tmp_path):
    """SIGKILL while a shard is open (some finished, tokens in the open one); the rerun ends with
    the bytes of an uninterrupted prepare."""
    write_corpus(tmp_path / "raw", documents(400, seed=5, hi=300))
    dataset = f"corpus:{tmp_path / 'raw'};val_every=9;shard_tokens=2000"
    env = {**os.environ, "ABLATE_DATA_DIR": str(tmp_path / "killed"), "PYTHONPATH": str(ROOT)}
    out = None
    for attempt in range(3):  # a slow start may finish before the kill: kill later steps of it then
        p = subprocess.Popen(_prepare_cmd(dataset, unit_chars=2000), env=env, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            found = list((tmp_path / "killed").glob("corpus-*/progress.json"))
            state = json.loads(found[0].read_text()) if found else {}
            train = state.get("streams", {}).get("0", {})
            if train.get("shards", 0) >= 2 + attempt and train.get("partial", 0) > 0:
                p.send_signal(signal.SIGKILL)
                break
            time.sleep(0.005)
        p.wait()
        out = next((tmp_path / "killed").glob("corpus-*"))
        if p.returncode == -signal.SIGKILL:
            break
        shutil.rmtree(out)  # it finished before the kill: again
    assert p.returncode == -signal.SIGKILL and not (out / "meta.json").exists()  # it never looks complete
    assert list(out.glob("*.part"))
    env2 = {**env, "ABLATE_DATA_DIR": str(tmp_path / "killed")}
    subprocess.run(_prepare_cmd(dataset, unit_chars=2000), env=env2, check=True, stderr=subprocess.DEVNULL)
    whole = {**env, "ABLATE_DATA_DIR": str(tmp_path / "whole")}
    subprocess.run(_prepare_cmd(dataset, unit_chars=2000), env=whole, check=True, stderr=subprocess.DEVNULL)
    assert all_bytes(out) == all_bytes(next((tmp_path / "whole").glob("corpus-*")))


def test_a_crash_after_a_shard_is_finished_but_before_its_record(tmp_path, monkeypatch):
    """The finished shard goes back to being the open one, truncated to what the record counts."""
    write_corpus(tmp_path / "raw", documents(200, seed=6, hi=200))
    dataset = f"corpus:{tmp_path / 'raw'};val_every=5;shard_tokens=1500"
    monkeypatch.setattr("ablate.data.documents.UNIT_CHARS", 3000)
    calls = {"n": 0}
    real = pipeline.write_progress

    def crash_on_the_fifth_record(out, state):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt  # after unit 5's tokens were written, before their record
        real(out, state)

    monkeypatch.setattr(pipeline, "write_progress", crash_on_the_fifth_record)
    with pytest.raises(KeyboardInterrupt):
        prepare.prepare(dataset, "gpt2", workers=1)
    out = corpora.data_dir(dataset, "gpt2")
    assert not (out / "meta.json").exists() and json.loads((out / "progress.json").read_text())["unit"] == 3
    monkeypatch.setattr(pipeline, "write_progress", real)
    assert prepare.prepare(dataset, "gpt2", workers=1) == out
    resumed = all_bytes(out)
    os.environ["ABLATE_DATA_DIR"] = str(tmp_path / "whole")
    assert resumed == all_bytes(prepare.prepare(dataset, "gpt2", workers=1))


def test_memory_stays_within_its_bound_for_a_corpus_many_times_larger(tmp_path):
    """Peak RSS while preparing 28 MB of text (jsonl and 3.5 MB text documents) with 64 KiB units
    grows by less than a quarter of the corpus: the corpus never sits in memory. (The allocator's
    own noise is 0.6-2.7 MB here, whatever the corpus size: the corpus is large beside it.)"""
    docs = documents(8000, seed=7, hi=300)
    (tmp_path / "raw").mkdir()
    for copy in "abc":  # three copies: 3x the text for one draw of documents
        (tmp_path / "raw" / f"{copy}.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
        (tmp_path / "raw" / f"{copy}.txt").write_text("\n".join(docs[:3000]) + "\n")
    size = sum(p.stat().st_size for p in (tmp_path / "raw").iterdir())
    assert size > 24e6, size
    (tmp_path / "warm").mkdir()
    (tmp_path / "warm" / "a.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs[:50]))
    code = f"""
import re, sys
import tqdm  # the program's own imports are not data
from ablate.data import documents, prepare
from ablate.data.tokenizer import gpt2_encoding
gpt2_encoding().encode_ordinary("warm up " * 1000)
documents.UNIT_CHARS = documents.READ_BYTES = 1 << 16
# a tiny corpus first: every module prepare imports on the way (compiled when no .pyc is kept) is loaded
prepare.prepare("corpus:{tmp_path / 'warm'}", "gpt2", workers=1)
def kib(field):
    return int(re.search(field + r":\\s+(\\d+)", open("/proc/self/status").read()).group(1))
base = kib("VmRSS")
open("/proc/self/clear_refs", "w").write("5")  # peak RSS counts from here
prepare.prepare("corpus:{tmp_path / 'raw'};shard_tokens=200000", "gpt2", workers=1)
print(kib("VmHWM") - base)
"""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    grew_kib = int(subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                                  check=True).stdout.split()[-1])
    print(f"peak RSS grew {grew_kib} KiB for {size / 1e6:.1f} MB of text")
    assert grew_kib * 1024 < size / 4, (grew_kib, size)


@pytest.mark.parametrize("make, match", [
    (lambda d: (d / "a.jsonl").write_text('{"text": "ok"}\n{"text": "ok"}\n{"text": broken}\n'),
     r"a.jsonl:3: not JSON \(Expecting value at column 10\)"),
    (lambda d: (d / "a.jsonl").write_text('{"text": "ok"}\n{"body": "x"}\n'),
     r"a.jsonl:2: no 'text' field \(it has body\); set text_field"),
    (lambda d: (d / "a.jsonl").write_bytes(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'),
     r"a.jsonl:2: byte 28 is not UTF-8 \(invalid continuation byte\)"),
    (lambda d: (d / "a.jsonl").write_text('[{"text": "ok"}]\n'),
     r"a.jsonl:1: a JSON list, not an object with a 'text' field \(ablate reads one object per line\)"),
    (lambda d: (d / "a.json").write_text('[\n  {"text": "ok"}\n]\n'),
     r"a.json:1: not JSON .*\(a JSON array\? ablate reads one object per line\)"),
    (lambda d: (d / "a.txt").write_bytes(b"fine text\n" * 200_000 + b"\xff tail"),
     r"a.txt: byte 2,000,000 is not UTF-8 \(invalid start byte\)"),
    (lambda d: (d / "a.jsonl.gz").write_bytes(gzip.compress(
        "".join(json.dumps({"text": t}) + "\n" for t in documents(200)).encode())[:2000]),
     r"a.jsonl.gz: cannot be read or decompressed \(EOFError"),
    (lambda d: (d / "a.jsonl.zst").write_bytes(b"\x28\xb5\x2f\xfd garbage"),
     r"a.jsonl.zst: cannot be decompressed \(ZstdError"),
    (lambda d: __import__("pyarrow.parquet").parquet.write_table(
        __import__("pyarrow").table({"content": ["a", "b"]}), d / "a.parquet"),
     r"a.parquet: no column 'text' \(columns: content\); set text_field"),
    (lambda d: (d / "a.parquet").write_bytes(b"PAR1 not really"),
     r"a.parquet: not a readable parquet file"),
])
def test_bad_input_is_one_line_and_leaves_nothing_behind(tmp_path, make, match):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "0_first.txt").write_text("a document before the bad one\n" * 50)
    make(d)
    dataset = f"corpus:{d}"
    out = corpora.data_dir(dataset, "gpt2")
    with pytest.raises(AblateError, match=match):
        prepare.prepare(dataset, "gpt2", workers=1)
    assert not out.exists()


def test_bad_corpus_names_through_the_cli(tmp_path):

    r = ablate_cli("data", "prepare", f"corpus:{tmp_path}/nothing/*.parquet")
    assert r.returncode == 2 and r.stderr.strip() == (f"ablate: error: dataset 'corpus:{tmp_path}/nothing/*.parquet': "
                                                      f"'{tmp_path}/nothing/*.parquet' matches no file"), r.stderr
    (tmp_path / "a.jsonl").write_text('{"text": "ok"}\nnot json\n')
    r = ablate_cli("data", "prepare", f"corpus:{tmp_path}/a.jsonl", "--workers", "2")
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1] == (
        f"ablate: error: {tmp_path}/a.jsonl:2: not JSON (Expecting value at column 1)"), r.stderr
    assert not list((tmp_path / "data").glob("corpus-*")) if (tmp_path / "data").exists() else True


def test_arrow_files_stream_and_file_format_and_a_changed_prepared_shard(tmp_path):
    import pyarrow as pa

    docs = documents(30, seed=8)
    table = pa.table({"text": docs[:15]})
    (tmp_path / "raw").mkdir()
    with pa.ipc.new_stream(str(tmp_path / "raw" / "a.arrow"), table.schema) as w:  # save_to_disk's format
        w.write_table(table, max_chunksize=4)
    with pa.ipc.new_file(str(tmp_path / "raw" / "b.arrow"), table.schema) as w:  # Arrow's file format
        w.write_table(pa.table({"text": docs[15:]}), max_chunksize=4)
    dataset = f"corpus:{tmp_path / 'raw'};val_every=4"
    out = prepare.prepare(dataset, "gpt2", workers=1)
    assert np.concatenate(shards_of(out, "train")).tolist() == llmc_stream([d for i, d in enumerate(docs) if i % 4])
    meta = json.loads((out / "meta.json").read_text())
    shard = next(out.glob("*_train_*.bin"))
    shard.write_bytes(shard.read_bytes()[:-2])  # a prepared shard cut short: the trainer is told, not misled
    with pytest.raises(AblateError, match=r"_train_000000.bin: [\d,]+ bytes, but .*meta.json says [\d,]+ tokens: the "
                                          r"prepared data changed; delete"):
        corpora.split_files(dataset, "gpt2", out, meta)
