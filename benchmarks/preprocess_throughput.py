"""gpt-preprocess end to end against the `tokenizers` library's own batch encoding, and how workers scale.

    .venv/bin/python benchmarks/preprocess_throughput.py [--mb 10] [--scale-mb 80] [--byte-scale-mb 400] [--repeats 3]

1. A ~10 MB jsonl (this Python's standard library sources and tiny shakespeare, as documents of a few
   KB) and a byte-level BPE tokenizer.json. The baseline gets the documents already parsed in memory
   and only encodes them (`Tokenizer.encode_batch`); gpt-preprocess (tokenizer.kind=hf) reads the
   jsonl, encodes, writes Arrow shards with checksums, the index and metadata. Ratio = baseline
   seconds / gpt-preprocess seconds (>= 1: the whole pipeline is at least as fast as the bare encoder).
2. A ~80 MB jsonl (byte: --byte-scale-mb if given) and the single-threaded encoders, byte and tiktoken (cl100k_base from
   TIKTOKEN_CACHE_DIR if it is there, else a stand-in vocabulary in cl100k's format): gpt-preprocess
   workers=1 against workers=2. Ratio = workers=1 seconds / workers=2 seconds (target >= 1.6).

Runs are interleaved because the machine may be shared: the ratio of the best times, and the median
of the ratios of each round (a round's runs are seconds apart and see the same load) are printed;
CPU seconds (all threads and worker processes) too. Everything lives in a temporary directory.
"""

import argparse
import base64
import hashlib
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"


def corpus(target_bytes: int) -> list:
    from gpt.data.inputs import stdlib_files

    docs, size = [], 0
    shakespeare = next((p for p in (REPO.parent / "shared/data/tinyshakespeare.txt",
                                    Path("/work/shared/data/tinyshakespeare.txt")) if p.is_file()), None)
    prose = shakespeare.read_text() if shakespeare else ""
    prose_docs = [prose[i:i + 3000] for i in range(0, len(prose), 3000)]
    files = stdlib_files()
    i = 0
    while size < target_bytes:
        code = Path(files[i % len(files)]).read_text(encoding="utf-8", errors="replace")
        for j in range(0, len(code), 6000):
            docs.append(code[j:j + 6000])
            size += len(docs[-1])
        if prose_docs and i % 2 == 0:
            docs.append(prose_docs[(i // 2) % len(prose_docs)])
            size += len(docs[-1])
        i += 1
    return docs


def cpu_seconds() -> float:
    """User+system time of this process and of its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def write_jsonl(path: Path, docs: list) -> float:
    with open(path, "w") as f:
        for d in docs:
            f.write(json.dumps({"text": d}) + "\n")
    return path.stat().st_size / 1e6


def tiktoken_cache(tmp: Path) -> str:
    """TIKTOKEN_CACHE_DIR with cl100k_base: the user's if it has the file, else every byte plus merges of
    the most frequent pairs of the corpus, in the same file format (same code path, smaller vocabulary)."""
    own = os.environ.get("TIKTOKEN_CACHE_DIR")
    if own and (Path(own) / hashlib.sha1(CL100K_URL.encode()).hexdigest()).is_file():
        return "cl100k_base from TIKTOKEN_CACHE_DIR"
    d = tmp / "tiktoken"
    d.mkdir()
    tokens = [bytes([b]) for b in range(256)] + [w.encode() for w in (
        "th", "he", "the", " t", " the", "in", "ing", "er", "an", "ou", "  ", "    ", "se", "re", "on", " a", "nd",
        " s", "st", "en", "at", "or", "es", "def", " def", "self", " self", "return", " return", "\n\n")]
    (d / hashlib.sha1(CL100K_URL.encode()).hexdigest()).write_bytes(
        b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    os.environ["TIKTOKEN_CACHE_DIR"] = str(d)
    return f"a {len(tokens)}-token stand-in in cl100k_base's format (no cached cl100k_base)"


def timed(fn):
    started, cpu0 = time.perf_counter(), cpu_seconds()
    out = fn()
    return time.perf_counter() - started, cpu_seconds() - cpu0, out


def summary(label: str, times: list, cpu: list, base_times: list, base_cpu: list, mb: float, tokens: int) -> str:
    t, c = min(times), min(cpu)
    paired = sorted(b / o for b, o in zip(base_times, times))
    return (f"{label:44s} {t:6.2f} s  {mb / t:6.2f} MB/s  {tokens / t / 1e6:5.2f} M tokens/s  "
            f"ratio {min(base_times) / t:.2f}x, per round median {paired[len(paired) // 2]:.2f}x  "
            f"(CPU {c:.2f} s, ratio {min(base_cpu) / c:.2f}x)")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=10, help="corpus of part 1 (hf BPE against encode_batch)")
    ap.add_argument("--scale-mb", type=float, default=80, help="corpus of part 2 (workers=1 against workers=2)")
    ap.add_argument("--byte-scale-mb", type=float, default=None,
                    help="part 2's corpus for byte alone (default: --scale-mb); byte is ~10x cheaper per MB than tiktoken")
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    from tokenizers import Tokenizer

    from gpt import log
    from gpt.config.commands import PreprocessConfig, TokenizerConfig
    from gpt.data.hf_tokenizer import train_bpe
    from gpt.data.preprocess import preprocess

    log.setup(level=40)  # errors only: the benchmark prints its own lines
    tmp = Path(tempfile.mkdtemp(prefix="gpt-bench-preprocess-"))
    try:
        docs = corpus(int(args.mb * 1e6))
        jsonl = tmp / "docs.jsonl"
        mb = write_jsonl(jsonl, docs)
        train_bpe(docs[: len(docs) // 4], 8192).save_files(tmp)
        tokenizer_json = str(tmp / "tokenizer.json")
        print(f"1. corpus: {len(docs)} documents, {mb:.1f} MB of jsonl; tokenizer: byte-level BPE, 8192 tokens; "
              f"{os.cpu_count()} CPUs")

        def run(path, workers, tokenizer):
            out = tmp / "shards"
            shutil.rmtree(out, ignore_errors=True)
            return preprocess(PreprocessConfig(input=str(path), output=str(out), workers=workers, tokenizer=tokenizer))

        baseline_tok = Tokenizer.from_file(tokenizer_json)
        hf = TokenizerConfig(kind="hf", path=tokenizer_json)
        times = {k: [] for k in ("base", 1, 2)}
        cpu = {k: [] for k in ("base", 1, 2)}
        n_tokens = 0
        for _ in range(args.repeats):
            t, c, encoded = timed(lambda: baseline_tok.encode_batch(docs, add_special_tokens=False))
            times["base"].append(t)
            cpu["base"].append(c)
            n_tokens = sum(len(e.ids) for e in encoded)
            del encoded
            for w in (1, 2):
                t, c, meta = timed(lambda: run(jsonl, w, hf))
                times[w].append(t)
                cpu[w].append(c)
                assert meta["num_tokens"] == n_tokens, "the pipeline must produce exactly the baseline's tokens"
        print(summary("encode_batch (baseline, in memory)", times["base"], cpu["base"], times["base"], cpu["base"],
                      mb, n_tokens))
        for w in (1, 2):
            print(summary(f"gpt-preprocess workers={w} (end to end)", times[w], cpu[w], times["base"], cpu["base"],
                          mb, n_tokens))

        big_docs = corpus(int(args.scale_mb * 1e6))
        big = tmp / "big.jsonl"
        big_mb = write_jsonl(big, big_docs)
        del big_docs
        byte_input, byte_mb = big, big_mb
        if args.byte_scale_mb and args.byte_scale_mb != args.scale_mb:
            byte_input = tmp / "big-byte.jsonl"
            byte_mb = write_jsonl(byte_input, corpus(int(args.byte_scale_mb * 1e6)))
        which = tiktoken_cache(tmp)
        print(f"2. corpus: {big_mb:.1f} MB of jsonl ({byte_mb:.1f} MB for byte); tiktoken: {which}")
        for name, tok, path, mb2 in (("byte", TokenizerConfig(kind="byte"), byte_input, byte_mb),
                                     ("tiktoken", TokenizerConfig(kind="tiktoken", name="cl100k_base"), big, big_mb)):
            times = {1: [], 2: []}
            cpu = {1: [], 2: []}
            tokens = 0
            for r in range(args.repeats):
                for w in ((1, 2) if r % 2 == 0 else (2, 1)):  # alternate who goes first
                    t, c, meta = timed(lambda: run(path, w, tok))
                    times[w].append(t)
                    cpu[w].append(c)
                    tokens = meta["num_tokens"]
            print(summary(f"{name} workers=1", times[1], cpu[1], times[1], cpu[1], mb2, tokens))
            print(summary(f"{name} workers=2 (ratio: workers=1 s / workers=2 s)", times[2], cpu[2], times[1], cpu[1],
                          mb2, tokens))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
