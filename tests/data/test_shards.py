"""shards: data sets: token files written here by llm.c's and nanoGPT's rules (data_helpers),
read back by ablate exactly; their names, vocabulary, identity, and every bad shard as one line."""
import pickle
import shutil
import sys

import numpy as np
import pytest
import torch

from ablate.core.errors import AblateError
from ablate.data import corpora, prepare, sources
from ablate.data.batches import Batches, Split
from ablate.plan.grid import load_grid
from conftest import ablate_cli
from data_helpers import write_llmc

RNG = np.random.default_rng(0)


def tokens(n, vocab=50257):
    return RNG.integers(0, vocab, size=n)


def everything(dataset, split, tokenizer="gpt2"):
    """Every token of a split as ablate reads it (one window over the whole split)."""
    files = corpora.splits(dataset, tokenizer)[split]
    s = Split(files)
    return s.windows(np.array([0]), len(s))[0]


@pytest.mark.parametrize("dtype, fmt", [(np.uint16, "auto"), (np.uint32, "auto"), (np.uint16, "llmc"),
                                        (np.uint16, "uint16"), (np.uint32, "uint32")])
def test_each_format_reads_back_exactly_the_tokens_written(tmp_path, dtype, fmt):
    vocab = 50257 if dtype == np.uint16 else 128256
    train = [tokens(n, vocab) for n in (700, 1, 513)]
    val = [tokens(300, vocab)]
    if fmt in ("uint16", "uint32"):  # nanoGPT: the tokens alone
        for i, t in enumerate(train):
            (tmp_path / f"x_train_{i:06d}.bin").write_bytes(t.astype(dtype).tobytes())
        (tmp_path / "x_val_000000.bin").write_bytes(val[0].astype(dtype).tobytes())
    else:
        for i, t in enumerate(train):
            write_llmc(tmp_path / f"x_train_{i:06d}.bin", t, dtype)
        write_llmc(tmp_path / "x_val_000000.bin", val[0], dtype)
    dataset = sources.from_grid({"shards": str(tmp_path), "format": fmt, "vocab": vocab})
    assert np.array_equal(everything(dataset, "train"), np.concatenate(train).astype(np.int64))
    assert np.array_equal(everything(dataset, "val"), val[0].astype(np.int64))
    info = corpora.read_meta(dataset, "gpt2")
    assert (info["train_tokens"], info["val_tokens"], info["vocab_size"]) == (1214, 300, vocab)


def test_conventional_names_and_explicit_globs(tmp_path):
    a = write_llmc(tmp_path / "fw" / "fineweb_train_000001.bin", tokens(600))
    write_llmc(tmp_path / "fw" / "fineweb_train_000002.bin", tokens(600))
    write_llmc(tmp_path / "fw" / "fineweb_val_000000.bin", tokens(400))
    write_llmc(tmp_path / "fw" / "notes.bin", tokens(10))  # neither name: not data
    (tmp_path / "fw" / "README.md").write_text("not a shard")
    found = sources.shard_files(sources.parse(f"shards:{tmp_path}/fw"))
    assert [p.name for p in found["train"]] == ["fineweb_train_000001.bin", "fineweb_train_000002.bin"]
    assert [p.name for p in found["val"]] == ["fineweb_val_000000.bin"]
    # llm.c's tiny_shakespeare_{train,val}.bin and nanoGPT's train.bin / val.bin
    for names in (("tiny_shakespeare_train.bin", "tiny_shakespeare_val.bin"), ("train.bin", "val.bin")):
        d = tmp_path / names[0]
        for name in names:
            write_llmc(d / name, tokens(50))
        assert {s: [p.name for p in ps] for s, ps in sources.shard_files(sources.parse(f"shards:{d}")).items()} == \
            {"train": [names[0]], "val": [names[1]]}
    # explicit globs, and the string a grid's keys make
    val = str(tmp_path / "fw" / "fineweb_val_000000.bin")
    dataset = sources.from_grid({"train": f"{tmp_path}/fw/*_train_*.bin", "val": [val]})
    assert dataset == f"shards:train={tmp_path}/fw/*_train_*.bin;val={tmp_path}/fw/fineweb_val_000000.bin"
    assert sources.parse(dataset).canonical() == dataset
    assert sources.shard_files(sources.parse(dataset))["train"][0] == a


def test_windows_across_many_shards_are_the_windows_of_one_file(tmp_path):
    """A split cut into 100 shards gives the same training and eval batches as the same tokens in
    one file: the eval set stays one fixed set per (data, context), and a window crosses files."""
    stream = tokens(100 * 97 + 13)
    cuts = np.linspace(0, len(stream), 101).astype(int)
    for i in range(100):
        write_llmc(tmp_path / "many" / f"d_train_{i:06d}.bin", stream[cuts[i]:cuts[i + 1]])
    write_llmc(tmp_path / "one" / "d_train_000000.bin", stream)
    for d in ("many", "one"):
        write_llmc(tmp_path / d / "d_val_000000.bin", stream[:3000])
    many, one = (Batches(corpora.splits(f"shards:{tmp_path / d}", "gpt2"), 64, 8, 3,
                         torch.device("cpu")) for d in ("many", "one"))
    for step in range(20):
        assert torch.equal(many.train(step, 0)[0], one.train(step, 0)[0])
        assert torch.equal(many.train(step, 1)[1], one.train(step, 1)[1])
    for i in range(4):
        assert torch.equal(many.eval("train", i)[0], one.eval("train", i)[0])
        assert torch.equal(many.eval("val", i)[1], one.eval("val", i)[1])
    # a window that starts 10 tokens before a file's end holds both files' tokens, in order
    start = np.array([cuts[5] - 10])
    assert np.array_equal(many.splits["train"].windows(start, 65)[0], stream[start[0]:start[0] + 65])


def test_vocabulary_declared_from_meta_json_or_nanogpt_meta_pkl(tmp_path):
    for i, d in enumerate(("a", "b", "c")):
        write_llmc(tmp_path / d / "train.bin", tokens(100, 65))
        write_llmc(tmp_path / d / "val.bin", tokens(100, 65))
    (tmp_path / "a" / "meta.json").write_text('{"vocab_size": 65, "tokenizer": "char"}')
    with open(tmp_path / "b" / "meta.pkl", "wb") as f:  # nanoGPT's shakespeare_char meta
        pickle.dump({"vocab_size": 65, "itos": {0: "\n"}, "stoi": {"\n": 0}}, f)
    assert corpora.vocab_size(f"shards:{tmp_path / 'a'}", "char") == 65
    assert corpora.vocab_size(f"shards:{tmp_path / 'b'}", "char") == 65
    assert corpora.vocab_size(f"shards:{tmp_path / 'c'};vocab=65", "char") == 65
    assert corpora.vocab_size(f"shards:{tmp_path / 'c'}", "gpt2") == 50257  # the tokenizer's
    with pytest.raises(AblateError, match="vocabulary is unknown for tokenizer 'char'"):
        corpora.vocab_size(f"shards:{tmp_path / 'c'}", "char")
    with pytest.raises(AblateError, match="says the shards were made with tokenizer 'char', but the grid's .* 'gpt2'"):
        corpora.vocab_size(f"shards:{tmp_path / 'a'}", "gpt2")
    with open(tmp_path / "c" / "meta.pkl", "wb") as f:  # a pickle that would run code is refused, not run
        pickle.dump({"vocab_size": 65, "x": shutil.rmtree}, f)
    with pytest.raises(AblateError, match="meta.pkl: not a readable meta.pkl .*shutil"):
        corpora.vocab_size(f"shards:{tmp_path / 'c'}", "gpt2")


GRID = """name: g
data: {{shards: '{where}'{extra}}}
base: {{n_layer: 2, n_head: 2, n_embd: 32, context: 64, batch_size: 4, max_iters: 3, device: cpu, eval_iters: 2}}
grid: {{arch: [gpt]}}
"""


def _grid(tmp_path, where, extra=""):
    path = tmp_path / "g.yaml"
    path.write_text(GRID.format(where=where, extra=extra))
    return path


def test_identity_follows_the_content_and_the_trainer_refuses_changed_shards(tmp_path):
    from ablate.core import rundir
    from ablate.train.job import train

    write_llmc(tmp_path / "d" / "x_train_000000.bin", tokens(5000))
    write_llmc(tmp_path / "d" / "x_val_000000.bin", tokens(2000))
    cell = load_grid(_grid(tmp_path, tmp_path / "d")).cells[0]
    assert cell.config.data_id == corpora.data_id(cell.config.dataset) and cell.config.tokenizer == "gpt2"
    shutil.copytree(tmp_path / "d", tmp_path / "moved")  # moved files keep their id
    assert corpora.data_id(f"shards:{tmp_path / 'moved'}") == cell.config.data_id

    val = tmp_path / "d" / "x_val_000000.bin"
    data = bytearray(val.read_bytes())
    data[-1] ^= 1  # one changed token, same size, in a sampled block (the last one)
    val.write_bytes(bytes(data))
    changed = load_grid(_grid(tmp_path, tmp_path / "d")).cells[0]
    assert changed.config.data_id != cell.config.data_id and changed.run_id != cell.run_id

    cell.run_dir.mkdir(parents=True)
    rundir.write_json_atomic(cell.run_dir / rundir.CONFIG, {"config": cell.config.to_dict(), "run_id": cell.run_id})
    with pytest.raises(AblateError, match="changed since this cell was planned"):
        train(cell.run_dir)
    assert not (cell.run_dir / rundir.METRICS).exists()


def test_plan_checks_vocabulary_and_context_and_prepare_checks_every_token(tmp_path):
    write_llmc(tmp_path / "d" / "train.bin", tokens(5000, 1000))
    write_llmc(tmp_path / "d" / "val.bin", np.r_[tokens(500, 1000), 4000, tokens(10, 1000)])
    grid = GRID.format(where=tmp_path / "d", extra=", vocab: 1000")
    small = grid.replace("device: cpu", "device: cpu, vocab_size: 512")
    with pytest.raises(AblateError, match="g2.yaml:3: key 'vocab_size': 512 is smaller than the data's vocabulary "
                                          "\\(1000\\)"):
        load_grid(_write(tmp_path, small))
    long = grid.replace("context: 64", "context: 598")
    with pytest.raises(AblateError, match="g2.yaml:3: key 'context': 598 needs context\\+2 = 600 tokens in each "
                                          "split, but the prepared val split .* has 511"):
        load_grid(_write(tmp_path, long))
    dataset = f"shards:{tmp_path / 'd'};vocab=1000"
    with pytest.raises(AblateError, match=r"val.bin: token 4000 \(first out of range at byte 2,024\) is >= the "
                                          r"vocabulary 1,000"):
        prepare.prepare(dataset, "gpt2")
    assert not corpora.data_dir(dataset, "gpt2").exists()  # nothing half-written
    ok = f"shards:{tmp_path / 'd'};vocab=4001"
    meta = corpora.read_meta(ok, "gpt2")
    out = prepare.prepare(ok, "gpt2")
    assert (out / "meta.json").exists() and meta["val_tokens"] == 511


def _write(tmp_path, text):
    path = tmp_path / "g2.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("make, match", [
    (lambda d: write_llmc(d / "train.bin", tokens(100), magic=12345, version=1),
     r"train.bin: magic 12345 at byte 0 is not llm.c's \(20240520 for uint16 tokens, 20240801 for uint32\); a raw "
     r"nanoGPT token file needs format: uint16"),
    (lambda d: write_llmc(d / "train.bin", tokens(100), magic=20240520, version=3),
     r"train.bin: version 3 at byte 4, but an llm.c uint16 shard has version 1"),
    (lambda d: (d / "train.bin").write_bytes(write_llmc(d / "x", tokens(100)).read_bytes()[:1100]),
     r"train.bin: the header \(byte 8\) counts 100 uint16 tokens, 1,224 bytes with the header, but the file has "
     r"1,100 bytes \(truncated\?\)"),
    (lambda d: write_llmc(d / "train.bin", tokens(100), count=90),
     r"train.bin: the header \(byte 8\) counts 90 uint16 tokens, 1,204 bytes .* has 1,224 bytes \(the header's count "
     r"is wrong, or bytes were appended\)"),
    (lambda d: (d / "train.bin").write_bytes(write_llmc(d / "x", tokens(100)).read_bytes()[:300]),
     r"train.bin: 300 bytes, shorter than llm.c's 1024-byte header"),
])
def test_a_bad_shard_is_one_line_naming_the_file_and_byte(tmp_path, make, match):
    d = tmp_path / "d"
    d.mkdir()
    make(d)
    write_llmc(d / "val.bin", tokens(100))
    with pytest.raises(AblateError, match=match):
        corpora.read_meta(f"shards:{d}", "gpt2")
    r = ablate_cli("plan", _grid(tmp_path, d))
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "train.bin" in lines[0] and "Traceback" not in r.stderr, r.stderr


def test_raw_files_and_other_bad_names(tmp_path):
    d = tmp_path / "raw"
    d.mkdir()
    (d / "train.bin").write_bytes(np.arange(101, dtype=np.uint16).tobytes()[:-1])  # 201 bytes
    (d / "val.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    with pytest.raises(AblateError, match=r"train.bin: 201 bytes is not a whole number of uint16 tokens \(the last "
                                          r"token is cut at byte 200: truncated\?\)"):
        corpora.read_meta(f"shards:{d};format=uint16", "gpt2")
    with pytest.raises(AblateError, match=r"'\S*/nothing_\*.bin' matches no file"):
        corpora.read_meta(f"shards:train={tmp_path}/nothing_*.bin;val={d}/val.bin", "gpt2")
    with pytest.raises(AblateError, match="no val shards among .* name them with val: GLOB"):
        corpora.read_meta(f"shards:{tmp_path}/raw/train.bin", "gpt2")
    (d / "train.bin").write_bytes(np.arange(100, dtype=np.uint16).tobytes())
    with pytest.raises(AblateError, match="does not fit the shards' uint16 tokens"):
        corpora.read_meta(f"shards:{d};format=uint16;vocab=70000", "gpt2")
    with pytest.raises(AblateError, match="unknown key 'text_field' for shards \\(a corpus key\\)"):
        sources.parse(f"shards:{d};text_field=x")


@pytest.mark.parametrize("data, match", [
    ("{shards: d, corpus: e}", "g.yaml:2: data: 'shards' and 'corpus' name two data sets"),
    ("{shards: d, dataset: shakespeare}", "g.yaml:2: data: 'shards' and 'dataset' both name the data set"),
    ("{shards: d, format: uint8}", "g.yaml:2: data: 'format' 'uint8' is not allowed; one of auto, llmc, uint16, "
                                   "uint32"),
    ("{shards: d, vocab: -3}", "g.yaml:2: data: 'vocab' must be an integer in \\[1, "),
    ("{train: d}", "g.yaml:2: data: shards need a folder or glob .* \\('val' is missing\\)"),
    ("{shards: d, val_every: 3}", "g.yaml:2: data: unknown key 'val_every' for shards \\(a corpus key\\)"),
    ("{vocab: 3}", "g.yaml:2: data: 'vocab' belongs to a data set: name it with shards: PATH"),
    ("{shards: 'a,b'}", "data: 'shards': 'a,b' has ',' or ';'"),
])
def test_grid_data_keys_are_checked_with_their_line(tmp_path, data, match):
    path = tmp_path / "g.yaml"
    path.write_text(f"name: g\ndata: {data}\ngrid: {{arch: [gpt]}}\n")
    with pytest.raises(AblateError, match=match):
        load_grid(path)


def test_plan_of_a_shards_grid_stays_free_of_numpy(tmp_path):
    write_llmc(tmp_path / "d" / "train.bin", tokens(5000))
    write_llmc(tmp_path / "d" / "val.bin", tokens(2000))
    code = ("import sys; from ablate.plan.grid import load_grid; g = load_grid(sys.argv[1]); "
            "print(g.cells[0].config.dataset, 'numpy' in sys.modules)")
    import subprocess
    out = subprocess.run([sys.executable, "-c", code, _grid(tmp_path, tmp_path / "d")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [f"shards:{tmp_path / 'd'}", "False"]
