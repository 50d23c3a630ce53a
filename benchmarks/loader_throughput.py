"""Training data loader vs the demo model, and loader start-up on a 1 GB shard set.

    .venv/bin/python benchmarks/loader_throughput.py [--gb 1.0] [--skip-startup]

1. Shards of this Python's standard library (byte tokenizer, as `make demo`); the demo's batch
   (seq_len 128, micro/global batch 16). Measures global batches/s of the loader and the
   forward+backward+AdamW step of an equivalent plain-PyTorch tiny GPT (4 layers, 4 heads, 128
   wide) in the same run; ratio = model step time / loader batch time (target >= 100).
2. A synthetic 1 GB shard set (random uint16 tokens, documents of ~1000 tokens) written to a
   temporary directory: time from nothing to the first global batch (open + checks + index +
   epoch shuffle), then deleted.
"""

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


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


def model_step_seconds(batch, steps: int = 20) -> float:
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
    for _ in range(steps):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return float(np.median(times))


def loader_batch_seconds(loader, n: int = 3000) -> float:
    loader.global_batch(0)
    started = time.perf_counter()
    for i in range(n):
        loader.global_batch((i * 16) % (50 * loader.samples_per_epoch))
    return (time.perf_counter() - started) / n


def synthetic_shards(directory: Path, gb: float) -> dict:
    from gpt.data import ByteTokenizer
    from gpt.data.writer import write_token_shards

    total = int(gb * 1e9 / 2)                       # uint16 tokens
    rng = np.random.default_rng(0)
    chunk = 1 << 25

    def chunks():
        done = 0
        while done < total:
            n = min(chunk, total - done)
            lengths = rng.geometric(1 / 1000, size=n // 500 + 10)
            lengths = lengths[np.cumsum(lengths) <= n]
            lengths = np.append(lengths, n - lengths.sum()) if lengths.sum() < n else lengths
            yield rng.integers(0, 256, size=n, dtype=np.uint16), lengths, None
            done += n

    return write_token_shards(directory, ByteTokenizer(), chunks(), source={"synthetic": True})


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gb", type=float, default=1.0)
    ap.add_argument("--skip-startup", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(2)

    from gpt import log
    from gpt.config.commands import PreprocessConfig
    from gpt.config.training import DataConfig
    from gpt.data import build_loaders
    from gpt.data.preprocess import preprocess

    log.setup(level=40)
    tmp = Path(tempfile.mkdtemp(prefix="gpt-bench-loader-"))
    try:
        preprocess(PreprocessConfig(input="stdlib", output=str(tmp / "stdlib")))
        demo = dict(seq_len=128, global_batch_size=16, micro_batch_size=16, dp_rank=0, dp_size=1, seed=1234)
        train, _ = build_loaders(DataConfig(path=str(tmp / "stdlib")), **demo)
        batch_s = loader_batch_seconds(train)
        step_s = model_step_seconds(train.global_batch(0)[0])
        print(f"loader: {1 / batch_s:,.0f} global batches/s ({batch_s * 1e3:.3f} ms each; seq_len 128, batch 16)")
        print(f"tiny GPT forward+backward+AdamW step: {step_s * 1e3:.1f} ms (4 layers, 4 heads, 128 wide, "
              f"{torch.get_num_threads()} threads)")
        print(f"ratio (model step / loader batch): {step_s / batch_s:,.0f}x")

        if not args.skip_startup:
            started = time.perf_counter()
            meta = synthetic_shards(tmp / "big", args.gb)
            written = time.perf_counter() - started
            size = sum(s["bytes"] for s in meta["shards"])
            started = time.perf_counter()
            big, val = build_loaders(DataConfig(path=str(tmp / "big")), **demo)
            opened = time.perf_counter() - started
            big.global_batch(0)
            val.global_batch(0)
            first = time.perf_counter() - started
            print(f"synthetic set: {size / 1e9:.2f} GB, {meta['num_documents']:,} documents, {len(meta['shards'])} shards "
                  f"(written in {written:.1f} s)")
            print(f"start-up: build_loaders {opened:.2f} s, first train+val batch at {first:.2f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
