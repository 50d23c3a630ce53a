"""Peak memory of gpt-preprocess on a generated corpus of more than 2 GB: one 1.2 GB jsonl file holding
a 200 MB document, a 600 MB .jsonl.zst (decompressed), 400 MB of text files and 300 MB of Parquet.

    flock /tmp/gpt-heavy.lock .venv/bin/python benchmarks/preprocess_memory.py [--workers 2] [--tokenizer byte]

Documents are random slices (1-20 kB) of tiny shakespeare; the 200 MB document is one jsonl line. The
corpus and the shards (about 2 bytes per input byte with the byte tokenizer) are written in a
temporary directory and deleted at the end (about 8 GB at the peak). gpt-preprocess runs as a child
process (`python -m gpt.preprocess`, shard_tokens=64M as by default); the resident memory of it and
its worker processes is sampled every 20 ms. Printed: the peak of their sum (target: under 1.5 GB
with workers=2), the peak of each process, wall time and throughput, and the largest shard.
The byte tokenizer is the worst case for memory: 2 bytes of ids per byte of text (200M ids for the
200 MB document, held by the writer as one record batch).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]


def shakespeare() -> str:
    p = next(p for p in (REPO.parent / "shared/data/tinyshakespeare.txt", Path("/work/shared/data/tinyshakespeare.txt"))
             if p.is_file())
    return p.read_text()


def docs(text: str, total: int, rng):
    """Random slices of `text`, 1-20 kB each, about `total` bytes in all."""
    made = 0
    while made < total:
        n = int(rng.integers(1000, 20_000))
        a = int(rng.integers(0, len(text) - n))
        made += n
        yield text[a:a + n]


def generate(d: Path, text: str, fraction: float = 1.0) -> dict:
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    rng = np.random.default_rng(0)
    d.mkdir()
    sizes = {}
    with open(d / "big.jsonl", "w") as f:
        for i, doc in enumerate(docs(text, int(1_000_000_000 * fraction), rng)):
            f.write(json.dumps({"text": doc}) + "\n")
            if i == int(30_000 * fraction):   # the 200 MB document, a third of the way in
                huge = (text * (int(200_000_000 * fraction) // len(text) + 1))[:int(200_000_000 * fraction)]
                f.write(json.dumps({"text": huge}) + "\n")
                del huge
    sizes["big.jsonl (with a 200 MB document)"] = (d / "big.jsonl").stat().st_size
    with open(d / "web.jsonl.zst", "wb") as raw, zstandard.ZstdCompressor(level=1).stream_writer(raw) as z:
        for doc in docs(text, int(600_000_000 * fraction), rng):
            z.write((json.dumps({"text": doc}) + "\n").encode())
    sizes["web.jsonl.zst (600 MB decompressed)"] = (d / "web.jsonl.zst").stat().st_size
    (d / "books").mkdir()
    for k in range(4):
        with open(d / "books" / f"book{k}.txt", "w") as f:
            for doc in docs(text, int(100_000_000 * fraction), rng):
                f.write(doc.replace("\n\n", "\n") + "\n\n")
    sizes["books/*.txt"] = sum(p.stat().st_size for p in (d / "books").iterdir())
    rows = list(docs(text, int(300_000_000 * fraction), rng))
    pq.write_table(pa.table({"text": rows}), d / "pages.parquet", row_group_size=2000, compression="none")
    sizes["pages.parquet"] = (d / "pages.parquet").stat().st_size
    return sizes


def tree_rss(pid: int) -> dict:
    import psutil

    out = {}
    try:
        root = psutil.Process(pid)
        for p in [root] + root.children(recursive=True):
            try:
                out[p.pid] = p.memory_info().rss
            except psutil.NoSuchProcess:
                pass
    except psutil.NoSuchProcess:
        pass
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--tokenizer", default="byte")
    ap.add_argument("--keep", help="generate the corpus here and keep it (default: a temporary directory)")
    ap.add_argument("--fraction", type=float, default=1.0, help="every size times this (a quick check: 0.05)")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="gpt-bench-memory-"))
    try:
        corpus = Path(args.keep) if args.keep else tmp / "corpus"
        started = time.perf_counter()
        sizes = generate(corpus, shakespeare(), args.fraction) if not corpus.exists() else \
            {p.name: p.stat().st_size for p in corpus.iterdir()}
        print(f"corpus: {sum(sizes.values()) / 1e9:.2f} GB on disk in {time.perf_counter() - started:.0f} s: "
              + ", ".join(f"{k} {v / 1e6:.0f} MB" for k, v in sizes.items()))
        out = tmp / "shards"
        env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
        cmd = [sys.executable, "-m", "gpt.preprocess", f"input={corpus}", f"output={out}", f"workers={args.workers}",
               f"tokenizer.kind={args.tokenizer}"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        peak_total, peak_each = 0, {}
        while proc.poll() is None:
            rss = tree_rss(proc.pid)
            peak_total = max(peak_total, sum(rss.values()))
            for pid, r in rss.items():
                peak_each[pid] = max(peak_each.get(pid, 0), r)
            time.sleep(0.02)
        wall = time.perf_counter() - started
        err = proc.stderr.read()
        if proc.returncode != 0:
            raise SystemExit(f"gpt-preprocess failed ({proc.returncode}):\n{err[-3000:]}")
        meta = json.loads((out / "metadata.json").read_text())
        text_bytes = meta["source"]["bytes"]
        biggest = max(meta["shards"], key=lambda s: s["tokens"])
        print(f"gpt-preprocess workers={args.workers} tokenizer.kind={args.tokenizer}: {wall:.0f} s, "
              f"{text_bytes / wall / 1e6:.1f} MB/s of input, {meta['num_documents']:,} documents, "
              f"{meta['num_tokens'] / 1e9:.2f}G tokens in {len(meta['shards'])} shards")
        print(f"peak resident memory, all processes together: {peak_total / 2**30:.2f} GiB (target < 1.5 GB = 1.40 GiB)")
        print("peak of each process: " + ", ".join(f"{r / 2**20:.0f} MiB" for r in
                                                     sorted(peak_each.values(), reverse=True)[:args.workers + 1]))
        print(f"largest shard: {biggest['tokens']:,} tokens ({biggest['file']}; shard_tokens=64,000,000: a shard "
              f"closes after the document that reaches it, so the one holding the 200M-token document is that large)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
