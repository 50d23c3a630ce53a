"""End-to-end gpt-preprocess with an existing tokenizer.json vs the tokenizers library's own
`encode_batch` on the same documents, measured in the same run.

    .venv/bin/python benchmarks/preprocess_throughput.py [--mb 10] [--repeats 3]

Builds a ~10 MB jsonl (this Python's standard library sources and tiny shakespeare, as documents of
a few KB) and a byte-level BPE tokenizer.json in a temporary directory. The baseline gets the
documents already parsed in memory and only encodes them; gpt-preprocess reads the jsonl, encodes,
writes Arrow shards with checksums and metadata. Ratio = baseline seconds / gpt-preprocess seconds
(>= 1 means the whole pipeline is at least as fast as the bare encoder). The runs are interleaved
because the machine may be shared: the ratio of the best times, and the median of the ratios of
each round (a round's runs are seconds apart and see the same load) are printed; CPU seconds (all
threads and worker processes) are printed too.
"""

import argparse
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


def corpus(target_bytes: int) -> list:
    from gpt.data.inputs import stdlib_files

    docs, size = [], 0
    shakespeare = next((p for p in (REPO.parent / "shared/data/tinyshakespeare.txt",
                                    Path("/work/shared/data/tinyshakespeare.txt")) if p.is_file()), None)
    prose = shakespeare.read_text() if shakespeare else ""
    prose_docs = [prose[i:i + 3000] for i in range(0, len(prose), 3000)]
    for i, path in enumerate(stdlib_files()):
        code = Path(path).read_text(encoding="utf-8", errors="replace")
        for j in range(0, len(code), 6000):
            docs.append(code[j:j + 6000])
            size += len(docs[-1])
        if prose_docs and i % 2 == 0:
            docs.append(prose_docs[(i // 2) % len(prose_docs)])
            size += len(docs[-1])
        if size >= target_bytes:
            break
    return docs


def cpu_seconds() -> float:
    """User+system time of this process and of its finished children (the worker processes)."""
    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mb", type=float, default=10)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
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
        with open(jsonl, "w") as f:
            for d in docs:
                f.write(json.dumps({"text": d}) + "\n")
        train_bpe(docs[: len(docs) // 4], 8192).save_files(tmp)
        tokenizer_json = str(tmp / "tokenizer.json")
        mb = jsonl.stat().st_size / 1e6
        print(f"corpus: {len(docs)} documents, {mb:.1f} MB of jsonl; tokenizer: byte-level BPE, 8192 tokens; "
              f"{os.cpu_count()} CPUs")

        baseline_tok = Tokenizer.from_file(tokenizer_json)
        keys = ["encode_batch"] + [f"gpt-preprocess workers={w}" for w in args.workers]
        best = {k: float("inf") for k in keys}
        cpu = {k: float("inf") for k in keys}
        rounds = {k: [] for k in keys}
        encoded = None
        for _ in range(args.repeats):
            encoded = None  # free the previous result outside the timed region
            started, cpu0 = time.perf_counter(), cpu_seconds()
            encoded = baseline_tok.encode_batch(docs, add_special_tokens=False)
            rounds["encode_batch"].append(time.perf_counter() - started)
            best["encode_batch"] = min(best["encode_batch"], rounds["encode_batch"][-1])
            cpu["encode_batch"] = min(cpu["encode_batch"], cpu_seconds() - cpu0)
            n_tokens = sum(len(e.ids) for e in encoded)
            for w in args.workers:
                out = tmp / "shards"
                shutil.rmtree(out, ignore_errors=True)
                cfg = PreprocessConfig(input=str(jsonl), output=str(out), workers=w,
                                       tokenizer=TokenizerConfig(kind="hf", path=tokenizer_json))
                started, cpu0 = time.perf_counter(), cpu_seconds()
                meta = preprocess(cfg)
                key = f"gpt-preprocess workers={w}"
                rounds[key].append(time.perf_counter() - started)
                best[key] = min(best[key], rounds[key][-1])
                cpu[key] = min(cpu[key], cpu_seconds() - cpu0)
                assert meta["num_tokens"] == n_tokens, "the pipeline must produce exactly the baseline's tokens"
        base = best["encode_batch"]
        for key in keys:
            t = best[key]
            label = "encode_batch (baseline, in memory)" if key == "encode_batch" else key + " (end to end)"
            paired = sorted(b / o for b, o in zip(rounds["encode_batch"], rounds[key]))
            print(f"{label:40s} {t:6.2f} s  {mb / t:6.2f} MB/s  {n_tokens / t / 1e6:5.2f} M tokens/s  "
                  f"ratio {base / t:.2f}x, per round median {paired[len(paired) // 2]:.2f}x  "
                  f"(CPU {cpu[key]:.2f} s, ratio {cpu['encode_batch'] / cpu[key]:.2f}x)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
