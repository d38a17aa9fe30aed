"""shakespeare, text:PATH and openwebtext go through the new pipeline and keep their bytes: the
sha256 of train.bin / val.bin below were computed with the code before it (commit 70c243e, one
tokenizing process, whole files in memory), on the same inputs."""
import hashlib
import json
import os
import sys
from pathlib import Path

import pytest

from ablate.core.errors import AblateError
from ablate.data import corpora, prepare

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "train"))
from train_helpers import make_corpus  # noqa: E402

BEFORE = {  # (data set, tokenizer) -> (train.bin, val.bin) sha256[:16] as 70c243e wrote them
    ("shakespeare", "char"): ("a62023ea9d99b84c", "01d838b37f278b66"),
    ("shakespeare", "gpt2"): ("92968b52845980d2", "6b33067b4313ff64"),
    ("text", "char"): ("ead6ed9987e63374", "044cb60a9325291a"),
    ("text", "gpt2"): ("bfe205f0b71e6295", "c3106c704357b8bc"),
    ("owt", "char"): ("8702585b855a00ca", "b1e1118139871319"),
    ("owt", "gpt2"): ("11f40401ac077e8b", "2a7bd24bd1bc494d"),
}


def hashes(out: Path) -> tuple:
    return tuple(hashlib.sha256((out / f"{s}.bin").read_bytes()).hexdigest()[:16] for s in ("train", "val"))


@pytest.mark.parametrize("name, tokenizer, workers", [("shakespeare", "char", 2), ("shakespeare", "gpt2", 2),
                                                      ("text", "char", 1), ("text", "gpt2", 3)])
def test_shakespeare_and_text_keep_their_bytes(tmp_path, name, tokenizer, workers):
    corpus = make_corpus(tmp_path / "corpus.txt", n_lines=3000, seed=0)
    dataset = "shakespeare" if name == "shakespeare" else f"text:{corpus}"
    out = prepare.prepare(dataset, tokenizer, workers=workers)
    assert hashes(out) == BEFORE[(name, tokenizer)]
    assert sorted(p.name for p in out.iterdir()) == ["meta.json", "train.bin", "val.bin"]
    if name == "text":  # its id: sha256 of the format tag and the file's bytes, as before
        assert corpora.data_id(dataset) == hashlib.sha256(corpora.TEXT_FORMAT + corpus.read_bytes()).hexdigest()[:16]


def _saved_to_disk(folder: Path, docs: list[str]) -> Path:
    """What Hugging Face's Dataset.save_to_disk writes: Arrow IPC stream files and a state.json
    naming them in order (written here with pyarrow; `datasets` is not needed to read it)."""
    import pyarrow as pa

    folder.mkdir(parents=True)
    half = len(docs) // 2
    names = []
    for i, part in enumerate((docs[:half], docs[half:])):
        names.append(f"data-{i:05d}-of-00002.arrow")
        table = pa.table({"text": part})
        with pa.ipc.new_stream(str(folder / names[-1]), table.schema) as w:
            for batch in table.to_batches(max_chunksize=5):
                w.write_batch(batch)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": n} for n in names]}))
    (folder / "dataset_info.json").write_text("{}")
    return folder


@pytest.mark.parametrize("tokenizer", ["char", "gpt2"])
def test_openwebtext_keeps_its_bytes_from_records_and_from_a_copy_on_disk(tmp_path, tokenizer):
    lines = make_corpus(tmp_path / "corpus.txt", n_lines=3000, seed=0).read_text().splitlines()
    docs = [{"text": "\n".join(lines[i:i + 7])} for i in range(0, len(lines), 7)]
    out = tmp_path / "owt"
    out.mkdir()
    prepare.prepare_openwebtext(out, tokenizer, load=lambda: docs)  # Hugging Face's records, stood in for
    assert hashes(out) == BEFORE[("owt", tokenizer)]
    # a cluster without internet: a save_to_disk copy, through `ablate data prepare openwebtext --from`
    saved = _saved_to_disk(tmp_path / "owt_saved", [d["text"] for d in docs])
    found = prepare.prepare("openwebtext", tokenizer, workers=2, hf_dir=str(saved))
    assert found == corpora.data_dir("openwebtext", tokenizer) and hashes(found) == BEFORE[("owt", tokenizer)]
    assert json.loads((found / "meta.json").read_text())["dataset"] == "openwebtext"


def test_openwebtext_from_a_parquet_copy_named_by_the_environment(tmp_path, monkeypatch):
    import pyarrow as pa
    import pyarrow.parquet as pq

    lines = make_corpus(tmp_path / "corpus.txt", n_lines=3000, seed=0).read_text().splitlines()
    docs = ["\n".join(lines[i:i + 7]) for i in range(0, len(lines), 7)]
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"text": docs[:200]}), tmp_path / "pq" / "train-00000-of-00002.parquet")
    pq.write_table(pa.table({"text": docs[200:]}), tmp_path / "pq" / "train-00001-of-00002.parquet")
    monkeypatch.setenv("ABLATE_OPENWEBTEXT_DIR", str(tmp_path / "pq"))
    assert hashes(prepare.prepare("openwebtext", "gpt2", workers=1)) == BEFORE[("owt", "gpt2")]
    monkeypatch.setenv("ABLATE_OPENWEBTEXT_DIR", str(tmp_path / "nothing"))
    os.environ["ABLATE_DATA_DIR"] = str(tmp_path / "other")
    with pytest.raises(AblateError, match="openwebtext on disk: .*nothing is not a folder"):
        prepare.prepare("openwebtext", "gpt2")


def test_a_text_file_is_one_document_whatever_its_name(tmp_path):
    path = tmp_path / "notes.jsonl"  # named like a corpus file, but text:PATH is one UTF-8 document
    path.write_text("not json {\n" * 50)
    out = prepare.prepare(f"text:{path}", "char", workers=1)
    meta = json.loads((out / "meta.json").read_text())
    assert meta["train_tokens"] + meta["val_tokens"] == len("not json {\n" * 50)
