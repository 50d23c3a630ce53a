"""Training data loader: batch rate against the demo model, and per-rank memory and start-up at scale.

    .venv/bin/python benchmarks/loader_throughput.py                                  # 1 only, ~1 min
    flock /tmp/gpt-heavy.lock .venv/bin/python benchmarks/loader_throughput.py --scale 10e9

1. Shards of this Python's standard library (byte tokenizer, as `make demo`); the demo's batch
   (seq_len 128, micro/global batch 16). Measures global batches/s of the loader and the
   forward+backward+AdamW step of an equivalent plain-PyTorch tiny GPT (4 layers, 4 heads, 128
   wide) in the same run; ratio = model step time / loader batch time (target >= 100).
2. `--scale N`: synthetic shard sets of N/100, N/10 and N tokens written with gpt.data.writer (uint16
   ids of a 50304-id vocabulary, documents of 1000 tokens on average (geometric lengths), 64M-token
   shards; N=10e9 writes 20 GB, one set at a time, each deleted after its measurement), then a set of
   10 and 100 times N and 15T tokens made of hard links to 4 real 64M-token shards of the largest: their
   metadata.json, index.arrow and shard files (234,375 at 15T) are real, only the token bytes repeat
   (0.6 GB on disk). For each set, a fresh
   process opens it as data-parallel rank 0 of 8 (seq_len 2048, global batch 512: 64 samples per
   rank, val_fraction 0.01) and reports the time from build_loaders to its first train batch and to
   its first validation batch, resident memory before build_loaders (the imports) and after, the peak,
   and the time of the next 20 global batches. Then RSS and time to first batch are fitted as
   a + b * chunks + c * shards (the only things they may grow with) and extrapolated to 15T tokens,
   next to the 15T measurement (targets at 15T: under 2 GB per rank, under 60 s to the first batch).
   Page cache warm (the sets were just written); the 15T set's first batch reads shards of 4 inodes.
"""

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
VOCAB = 50304
SHARD_TOKENS = 64_000_000
MEAN_DOC = 1000
PROBE = dict(seq_len=2048, global_batch_size=512, micro_batch_size=8, dp_rank=0, dp_size=8, seed=1234)
T15 = 15e12


# ---- 1. batch rate against the demo model ------------------------------------------------------

def demo_rate() -> None:
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    from gpt import log
    from gpt.config.commands import PreprocessConfig
    from gpt.config.training import DataConfig
    from gpt.data import build_loaders
    from gpt.data.preprocess import preprocess

    class Block(nn.Module):
        def __init__(self, d: int, heads: int):
            super().__init__()
            self.heads = heads
            self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
            self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
            self.mlp = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

        def forward(self, x):                                              # x: (B, T, C)
            B, T, C = x.shape
            q, k, v = self.qkv(self.ln1(x)).split(C, dim=2)
            q, k, v = (t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in (q, k, v))  # (B, nh, T, hs)
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(B, T, C)
            x = x + self.proj(y)
            return x + self.mlp(self.ln2(x))

    class TinyGPT(nn.Module):
        """The demo model's shape (model=tiny): 4 layers, 4 heads, 128 wide, learned positions, tied head."""

        def __init__(self, vocab: int = 384, d: int = 128, layers: int = 4, heads: int = 4, seq: int = 128):
            super().__init__()
            self.wte, self.wpe = nn.Embedding(vocab, d), nn.Embedding(seq, d)
            self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
            self.ln = nn.LayerNorm(d)

        def forward(self, idx):                                            # idx: (B, T)
            x = self.wte(idx) + self.wpe(torch.arange(idx.shape[1]))
            for b in self.blocks:
                x = b(x)
            return self.ln(x) @ self.wte.weight.T                          # (B, T, vocab)

    torch.set_num_threads(2)
    log.setup(level=40)
    tmp = Path(tempfile.mkdtemp(prefix="gpt-bench-loader-"))
    try:
        preprocess(PreprocessConfig(input="stdlib", output=str(tmp / "stdlib")))
        demo = dict(seq_len=128, global_batch_size=16, micro_batch_size=16, dp_rank=0, dp_size=1, seed=1234)
        train, _ = build_loaders(DataConfig(path=str(tmp / "stdlib")), **demo)
        train.global_batch(0)
        n = 3000
        started = time.perf_counter()
        for i in range(n):
            train.global_batch((i * 16) % (50 * train.samples_per_epoch))
        batch_s = (time.perf_counter() - started) / n
        batch = train.global_batch(0)[0]
        torch.manual_seed(0)
        model = TinyGPT()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3)

        def step():
            logits = model(batch.tokens)
            loss = (F.cross_entropy(logits.flatten(0, 1), batch.labels.flatten(), reduction="none")
                    * batch.weights.flatten()).sum()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        for _ in range(3):
            step()
        times = []
        for _ in range(20):
            started = time.perf_counter()
            step()
            times.append(time.perf_counter() - started)
        step_s = float(np.median(times))
        print(f"1. loader: {1 / batch_s:,.0f} global batches/s ({batch_s * 1e3:.3f} ms each; seq_len 128, batch 16); "
              f"tiny GPT step {step_s * 1e3:.1f} ms ({torch.get_num_threads()} threads); "
              f"ratio (model step / loader batch): {step_s / batch_s:,.0f}x (target >= 100)")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ---- 2. memory and start-up at scale -----------------------------------------------------------

class VocabTokenizer:
    """The shards' tokenizer entry: a 50304-id vocabulary (GPT-2's, padded), ids stored as uint16."""

    kind = "synthetic"
    vocab_size = VOCAB
    eod_id = VOCAB - 1

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eod_id": self.eod_id}

    def save_files(self, directory) -> None:
        pass


def write_set(directory: Path, tokens: int) -> dict:
    from gpt.data.writer import write_token_shards

    rng = np.random.default_rng(0)
    block = rng.integers(0, VOCAB - 1, size=1 << 24, dtype=np.uint16)   # 16M random ids, repeated

    def chunks():
        done = 0
        while done < tokens:
            n = min(len(block), tokens - done)
            lengths = rng.geometric(1 / MEAN_DOC, size=2 * n // MEAN_DOC + 16)
            lengths = lengths[np.cumsum(lengths) <= n]
            lengths = np.append(lengths, n - lengths.sum()) if lengths.sum() < n else lengths
            yield block[:n], lengths, None
            done += n

    return write_token_shards(directory, VocabTokenizer(), chunks(), source={"synthetic": True},
                              shard_tokens=SHARD_TOKENS)


def hard_linked_set(directory: Path, source: Path, total: float) -> dict:
    """A set of `total` tokens whose shards are hard links to the first 4 shards of `source` (a real set;
    fewer if it has fewer)."""
    from gpt.data.format import INDEX_FILE, METADATA_FILE, coarsen, documents_per_chunk, read_index, write_index
    from gpt.checksums import file_checksum
    from gpt.data.format import checksum_key

    meta = json.loads((source / METADATA_FILE).read_text())
    real = meta["shards"][:4]
    r = len(real)
    index = read_index(source, meta)
    g0 = meta["index"]["documents_per_chunk"]
    bounds = np.concatenate([[0], np.cumsum([-(-s["documents"] // g0) for s in meta["shards"]])])
    n = int(total // np.mean([s["tokens"] for s in real]))
    docs = sum(real[i % r]["documents"] for i in range(n))
    g = documents_per_chunk(docs)
    per_shard = [coarsen(index[bounds[i]:bounds[i + 1]], g // g0) for i in range(r)]
    directory.mkdir()
    shards = []
    for i in range(n):
        name = f"shard-{i:06d}.arrow"
        os.link(source / real[i % r]["file"], directory / name)
        shards.append({**real[i % r], "file": name})
    chunks = np.concatenate([per_shard[i % r] for i in range(n)])
    write_index(directory / INDEX_FILE, chunks)
    meta.update(num_documents=sum(s["documents"] for s in shards), num_tokens=sum(s["tokens"] for s in shards),
                shards=shards, index={"file": INDEX_FILE, "documents_per_chunk": g, "chunks": len(chunks),
                                      "bytes": (directory / INDEX_FILE).stat().st_size,
                                      checksum_key(meta["version"]): file_checksum(directory / INDEX_FILE)})
    (directory / METADATA_FILE).write_text(json.dumps(meta))
    return meta


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def probe(path: str) -> None:
    """One rank's start-up on `path`; prints one JSON line."""
    import torch  # noqa: F401  (imported by every rank before its data; part of the baseline)

    from gpt.config.training import DataConfig
    from gpt.data import build_loaders

    before = rss()
    started = time.perf_counter()
    train, val = build_loaders(DataConfig(path=path, val_fraction=0.01), **PROBE)
    opened = time.perf_counter() - started
    train.global_batch(0)
    first = time.perf_counter() - started
    val.global_batch(0)
    first_val = time.perf_counter() - started
    after = rss()
    t0 = time.perf_counter()
    for k in range(1, 21):
        train.global_batch(k * PROBE["global_batch_size"])
    per_batch = (time.perf_counter() - t0) / 20
    s = train.sources[0].shards
    print(json.dumps({"open_s": opened, "first_s": first, "first_val_s": first_val, "rss_before": before,
                      "rss_after": after, "rss_peak": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
                      "batch_ms": per_batch * 1e3, "chunks": s.num_chunks, "shards": len(s.shard_files),
                      "documents": s.num_documents, "tokens": int(s.shard_tokens.sum()),
                      "granularity": s.granularity}))


def measure(path: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, __file__, "--probe", str(path)], env=env, capture_output=True, text=True,
                         timeout=1800)
    if out.returncode:
        raise SystemExit(f"probe of {path} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def row(name: str, m: dict) -> str:
    gb = 1 << 30
    return (f"{name:>16} {m['tokens'] / 1e9:>9.2f}B {m['documents']:>14,} {m['shards']:>8,} {m['chunks']:>10,} "
            f"{m['open_s']:>8.2f} {m['first_s']:>8.2f} {m['first_val_s']:>8.2f} {m['rss_before'] / gb:>7.2f} "
            f"{m['rss_after'] / gb:>7.2f} {m['rss_peak'] / gb:>7.2f} {m['batch_ms']:>8.1f}")


def nonnegative_fit(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares y ~ x @ coef with the per-chunk and per-shard slopes held >= 0 (costs do not shrink)."""
    keep = [0, 1, 2]
    while True:
        coef = np.zeros(x.shape[1])
        coef[keep], *_ = np.linalg.lstsq(x[:, keep], y, rcond=None)
        negative = [k for k in keep[1:] if coef[k] < 0]
        if not negative:
            return coef
        keep.remove(min(negative, key=lambda k: coef[k]))


def scale(n: float, workdir: Path, keep: bool, total: float = T15) -> None:
    from gpt.data.format import MAX_CHUNKS, documents_per_chunk

    print(f"2. rank 0 of 8, seq_len {PROBE['seq_len']}, global batch {PROBE['global_batch_size']} "
          f"({PROBE['global_batch_size'] // PROBE['dp_size']} samples per rank), val_fraction 0.01; sizes in GiB")
    print(f"{'set':>16} {'tokens':>10} {'documents':>14} {'shards':>8} {'chunks':>10} {'open s':>8} {'batch1 s':>8} "
          f"{'val1 s':>8} {'rss0':>7} {'rss1':>7} {'peak':>7} {'ms/batch':>8}")
    results = []
    largest = None
    for k, tokens in enumerate((n / 100, n / 10, n)):
        d = workdir / f"set{k}"
        started = time.perf_counter()
        write_set(d, int(tokens))
        written = time.perf_counter() - started
        m = measure(d)
        results.append(m)
        print(row(f"{tokens / 1e9:g}B", m) + f"   (written in {written:.0f} s)", flush=True)
        if largest is not None and not keep:
            shutil.rmtree(largest)
        largest = d
    # Larger sets made of hard links to 4 real shards of the largest one: real metadata, index, directory.
    linked = [t for t in (n * 10, n * 100) if t < total] + [total]
    for k, tokens in enumerate(linked):
        d = workdir / f"linked{k}"
        started = time.perf_counter()
        hard_linked_set(d, largest, tokens)
        made = time.perf_counter() - started
        m = measure(d)
        results.append(m)
        print(row(f"{tokens / 1e12:g}T (links)", m) + f"   (made in {made:.0f} s)", flush=True)
        if not keep:
            shutil.rmtree(d, ignore_errors=True)
    # The curve through every set but the last, extrapolated to it: a + b * chunks + c * shards.
    docs = total / MEAN_DOC
    chunks, shards = docs / documents_per_chunk(int(docs)) + total / SHARD_TOKENS, total / SHARD_TOKENS
    x = np.array([[1.0, r["chunks"], r["shards"]] for r in results[:-1]])
    last = results[-1]
    print(f"   extrapolated to {total / 1e12:g}T tokens ({chunks:,.0f} chunks, {shards:,.0f} shards; at most "
          f"{MAX_CHUNKS:,} chunks plus one per shard) from the sets above it, next to the measurement:")
    for key, unit, div, target in (("rss_peak", "GiB", 1 << 30, 2e9 / (1 << 30)), ("first_s", "s", 1, 60.0),
                                   ("first_val_s", "s", 1, 60.0)):
        y = np.array([r[key] for r in results[:-1]]) / div
        coef = nonnegative_fit(x, y)
        predicted = coef @ [1.0, chunks, shards]
        print(f"   {key:12s} {coef[0]:.3g} + {coef[1]:.3g} x chunks + {coef[2]:.3g} x shards = {predicted:.2f} {unit}; "
              f"measured {last[key] / div:.2f} {unit} (target < {target:.3g} {unit})")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--scale", type=float, help="largest synthetic set in tokens (e.g. 10e9: 20 GB on disk)")
    ap.add_argument("--dir", help="where to write the sets (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep every set (default: only one at a time)")
    ap.add_argument("--skip-rate", action="store_true")
    ap.add_argument("--linked", type=float, default=T15, help="tokens of the hard-linked set (default 15T)")
    ap.add_argument("--probe", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.probe:
        return probe(args.probe)
    if not args.skip_rate:
        demo_rate()
    if args.scale:
        workdir = Path(tempfile.mkdtemp(prefix="gpt-bench-loader-scale-", dir=args.dir))
        try:
            scale(args.scale, workdir, args.keep, args.linked)
        finally:
            if not args.keep:
                shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
