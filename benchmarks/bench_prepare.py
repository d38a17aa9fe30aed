"""`ablate data prepare` on a raw corpus: throughput with 1 worker and with all cores, against the
plain single-process loop nanoGPT's prepare uses, and the peak memory of each.

    .venv/bin/python benchmarks/bench_prepare.py [--mb 500] [--dir /tmp/ablate-bench-prepare] [--keep]

Generates (once; --keep leaves it for the next run) a corpus of MB megabytes of document text,
mixed as a researcher's would be: parquet files (40%), .jsonl.zst (25%), .jsonl.gz (15%), plain
.jsonl (10%) and .txt files (10%, a few of them single documents of several MB); documents are
spans of the Shakespeare plays of log-normal length (median ~2 KB). Then, one after the other,
each in a fresh process:

    baseline   nanoGPT's loop: documents read in order (the same readers), tiktoken's
               encode_ordinary_batch on 1,024 at a time, <|endoftext|> after each, uint16 to one file
    1 worker   ablate data prepare 'corpus:DIR' --workers 1
    N workers  ablate data prepare 'corpus:DIR' --workers N (N = this machine's cores)

and prints wall time, text MB/s, tokens/s, CPU seconds and the peak RSS of the process tree
(sampled every 0.1 s: the main process and its workers together). The two prepares must write
the same bytes (checked). The speedup that matters is wall time: N workers against the baseline.
"""
import argparse
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MIX = (("parquet", 0.40), ("jsonl.zst", 0.25), ("jsonl.gz", 0.15), ("jsonl", 0.10), ("txt", 0.10))
FILE_MB = 40  # text per parquet / jsonl file


# ---- the corpus

def documents(text: str, total: int, rng):
    """Spans of `text` of log-normal length until `total` bytes of text are out."""
    out = 0
    while out < total:
        n = int(min(100_000, max(50, rng.lognormal(np.log(2000), 1.0))))
        start = int(rng.integers(0, len(text) - n))
        doc = text[start:start + n]
        out += len(doc.encode("utf-8"))
        yield doc


def generate(raw: Path, mb: int) -> dict:
    import gzip

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    from ablate.data.corpora import shakespeare_plays

    text = "".join(p.read_text(encoding="utf-8") for p in shakespeare_plays())
    rng = np.random.default_rng(0)
    raw.mkdir(parents=True)
    docs_total, text_bytes = 0, 0
    for kind, share in MIX:
        budget = int(mb * 1e6 * share)
        if kind == "txt":
            big = [text[:5_000_000], text[-4_000_000:]]  # two single documents of several MB
            for i, doc in enumerate(big):
                (raw / f"long_{i}.txt").write_text(doc, encoding="utf-8")
                budget -= len(doc.encode("utf-8"))
                text_bytes += len(doc.encode("utf-8"))
            for i, doc in enumerate(documents(text, budget, rng)):
                (raw / f"page_{i:06d}.txt").write_text(doc, encoding="utf-8")
                docs_total += 1
                text_bytes += len(doc.encode("utf-8"))
            docs_total += len(big)
            continue
        left, k = budget, 0
        while left > 0:
            docs = list(documents(text, min(left, FILE_MB * 1_000_000), rng))
            left -= sum(len(d.encode("utf-8")) for d in docs)
            text_bytes += sum(len(d.encode("utf-8")) for d in docs)
            docs_total += len(docs)
            name = raw / f"{kind.split('.')[0]}_{k:04d}.{kind}"
            if kind == "parquet":
                pq.write_table(pa.table({"text": docs}), name, row_group_size=2000)
            else:
                data = "".join(json.dumps({"text": d, "url": "https://example.org"}) + "\n" for d in docs).encode()
                data = gzip.compress(data, 6) if kind.endswith("gz") else \
                    zstandard.ZstdCompressor(level=3).compress(data) if kind.endswith("zst") else data
                name.write_bytes(data)
            k += 1
    files = list(raw.iterdir())
    return {"mb": mb, "text_bytes": text_bytes, "documents": docs_total, "files": len(files),
            "disk_bytes": sum(p.stat().st_size for p in files)}


# ---- the baseline: nanoGPT's single-process loop

def baseline(raw: Path, out: Path) -> None:
    from ablate.data import sources
    from ablate.data.documents import TRAIN, Source
    from ablate.data.tokenizer import gpt2_encoding

    enc = gpt2_encoding()
    eot = enc.eot_token
    with open(out, "wb") as f:
        batch = []

        def flush():
            for ids in enc.encode_ordinary_batch(batch):
                ids.append(eot)
                np.array(ids, dtype=np.uint16).tofile(f)
            batch.clear()

        for path in sources.doc_files(raw):
            src = Source(path, TRAIN)
            for _, _, text, _ in src.records():
                batch.append("".join(text(0)))
                if len(batch) == 1024:
                    flush()
        flush()


# ---- measuring a process tree

def tree_rss_kib(pid: int) -> int:
    """VmRSS of pid and all its descendants."""
    children: dict = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = open(f"/proc/{d}/stat").read()
                children.setdefault(int(stat.rsplit(")", 1)[1].split()[1]), []).append(int(d))
            except OSError:
                pass
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo += children.get(p, [])
        try:
            total += int(next(line for line in open(f"/proc/{p}/status") if line.startswith("VmRSS")).split()[1])
        except (OSError, StopIteration):
            pass
    return total


def measure(cmd: list, env: dict) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    peak = [0]

    def sample():
        while proc.poll() is None:
            peak[0] = max(peak[0], tree_rss_kib(proc.pid))
            time.sleep(0.1)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out = proc.communicate()[0]
    wall = time.perf_counter() - t0
    sampler.join()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode})")
    return {"wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime,
            "peak_mib": peak[0] / 1024, "out": out.decode()}


def _spin(seconds: float, q) -> None:
    t0, c0 = time.perf_counter(), time.process_time()
    while time.perf_counter() - t0 < seconds:
        pass
    q.put(time.process_time() - c0)


def cores_free(n: int, seconds: float = 3.0) -> float:
    """How many cores this machine gives us now: n processes spin for `seconds`; their CPU time
    over the wall time (a shared machine gives less than n while others work)."""
    import multiprocessing as mp

    q = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=_spin, args=(seconds, q)) for _ in range(n)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    return sum(q.get() for _ in procs) / seconds


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.glob("*.bin")):
        h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()[:16]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mb", type=int, default=500)
    p.add_argument("--dir", default="/tmp/ablate-bench-prepare")
    p.add_argument("--keep", action="store_true", help="keep the generated corpus for the next run")
    p.add_argument("--baseline", nargs=2, metavar=("RAW", "OUT"), help=argparse.SUPPRESS)  # the child process
    args = p.parse_args()
    if args.baseline:
        baseline(Path(args.baseline[0]), Path(args.baseline[1]))
        return
    work = Path(args.dir)
    raw = work / "raw"
    info_path = work / "corpus.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else None
    if not info or info["mb"] != args.mb:
        shutil.rmtree(work, ignore_errors=True)
        t0 = time.perf_counter()
        info = generate(raw, args.mb)
        info_path.write_text(json.dumps(info))
        print(f"generated {info['files']} files in {time.perf_counter() - t0:.0f} s", flush=True)
    from ablate.data.pipeline import default_workers

    n = default_workers()
    text_mb = info["text_bytes"] / 1e6
    print(f"corpus: {text_mb:.0f} MB of text in {info['documents']:,} documents, {info['files']} files "
          f"({info['disk_bytes'] / 1e6:.0f} MB on disk: parquet, .jsonl.zst, .jsonl.gz, .jsonl, .txt); {n} cores",
          flush=True)
    print(f"cores free now: {cores_free(n):.2f} of {n} (CPU time of {n} spinning processes / wall time)", flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    runs = {}
    base_out = work / "baseline.bin"
    runs["baseline (nanoGPT loop)"] = measure([sys.executable, __file__, "--baseline", str(raw), str(base_out)], env)
    runs["baseline (nanoGPT loop)"]["tokens"] = base_out.stat().st_size // 2
    base_out.unlink()
    digests = {}
    for workers in (1, n):
        data = work / f"data{workers}"
        shutil.rmtree(data, ignore_errors=True)
        r = measure([sys.executable, "-m", "ablate.cli", "data", "prepare", f"corpus:{raw}", "--workers", str(workers)],
                    {**env, "ABLATE_DATA_DIR": str(data)})
        out = next(data.glob("corpus-*"))
        meta = json.loads((out / "meta.json").read_text())
        r["tokens"] = meta["train_tokens"] + meta["val_tokens"]
        digests[workers] = digest(out)
        runs[f"ablate, {workers} worker{'s' if workers > 1 else ''}"] = r
        shutil.rmtree(data)
    same = digests[1] == digests[n]
    base = runs["baseline (nanoGPT loop)"]
    print("\n| run | wall (s) | text MB/s | tokens/s | CPU (s) | peak RSS (MiB) | wall speedup vs baseline |")
    print("|---|---|---|---|---|---|---|")
    for name, r in runs.items():
        print(f"| {name} | {r['wall']:.1f} | {text_mb / r['wall']:.2f} | {r['tokens'] / r['wall'] / 1e6:.2f}M | "
              f"{r['cpu']:.1f} | {r['peak_mib']:.0f} | {base['wall'] / r['wall']:.2f}x |")
    print(f"\ntokens: {base['tokens']:,} (baseline) {runs['ablate, 1 worker']['tokens']:,} (ablate); "
          f"1 worker and {n} workers wrote the same bytes: {same}")
    print(f"cores free after: {cores_free(n):.2f} of {n}")
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
