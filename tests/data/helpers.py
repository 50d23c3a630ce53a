"""Helpers of the data tests: the real corpus, preprocessing calls, synthetic shard sets."""

from pathlib import Path

import numpy as np
import pytest

from gpt.config.commands import PreprocessConfig, TokenizerConfig
from gpt.data.tokenizer import Tokenizer
from gpt.data.writer import write_token_shards

REPO = Path(__file__).resolve().parents[2]


def shakespeare_path() -> Path:
    for p in (REPO.parent / "shared" / "data" / "tinyshakespeare.txt", Path("/work/shared/data/tinyshakespeare.txt")):
        if p.is_file():
            return p
    pytest.skip("tinyshakespeare.txt (the shared test corpus) is not at ../shared/data/ beside the repository")


def preprocess(input, output, tokenizer: TokenizerConfig | None = None, **kw) -> dict:
    from gpt.data.preprocess import preprocess as run

    cfg = PreprocessConfig(input=input if isinstance(input, list) else str(input), output=str(output),
                           tokenizer=tokenizer or TokenizerConfig(), **kw)
    return run(cfg)


def read_rows(shard_dir) -> list:
    """Every document's token ids, read with plain pyarrow as an outside user would."""
    import pyarrow as pa

    rows = []
    for f in sorted(Path(shard_dir).glob("shard-*.arrow")):
        table = pa.ipc.open_file(pa.memory_map(str(f))).read_all()
        rows.extend(table.column("tokens").to_pylist())
    return rows


class AddressTokenizer(Tokenizer):
    """A stand-in whose ids are plain integers, so each token can carry its own global address."""

    kind = "test-addresses"

    def __init__(self, vocab_size: int = 1 << 24):
        self.vocab_size = vocab_size
        self.eod_id = vocab_size - 1


def write_address_shards(directory, lengths, *, shard_tokens=1 << 30, offset=0, mask_fn=None) -> dict:
    """Documents whose tokens are their global addresses (+offset): doc d = [start_d, ..., start_d + len_d).

    mask_fn(addresses) -> uint8 mask writes a loss_mask column."""
    lengths = np.asarray(lengths, dtype=np.int64)
    tokens = np.arange(int(lengths.sum()), dtype=np.int64) + offset
    mask = None if mask_fn is None else mask_fn(tokens - offset).astype(np.uint8)
    return write_token_shards(directory, AddressTokenizer(), [(tokens.astype(np.uint32), lengths, mask)],
                              source={"test": True}, shard_tokens=shard_tokens, loss_mask=mask_fn is not None)


CL100K_URL = "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken"
FAKE_MERGES = [b"th", b"he", b"the", b" t", b" the", b"in", b"ing", b"er", b"an", b"ou", b"\n\n"]


def fake_tiktoken_cache(directory) -> Path:
    """A small cl100k_base-format vocabulary (every byte + a few merges) where tiktoken looks for the
    real one: tests need no download, and tiktoken parses it exactly as it would the real file."""
    import base64
    import hashlib

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    tokens = [bytes([b]) for b in range(256)] + FAKE_MERGES
    path = directory / hashlib.sha1(CL100K_URL.encode()).hexdigest()
    path.write_bytes(b"".join(base64.b64encode(t) + b" %d\n" % i for i, t in enumerate(tokens)))
    return path


def mixed_corpus(directory, text: str) -> Path:
    """`text` spread over every input kind: plain .txt (large enough to be cut into units), .txt.gz,
    .jsonl.gz, .jsonl.zst, a bare .zst, Parquet with several row groups, and a dataset saved with
    the `datasets` library's save_to_disk."""
    import gzip
    import json

    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    d = Path(directory)
    d.mkdir(parents=True)
    n = len(text)
    part = [text[i * n // 7:(i + 1) * n // 7] for i in range(7)]

    def records(t):
        return [p for p in t.split("\n\n") if p.strip()]

    (d / "a.txt").write_text(part[0])
    with gzip.open(d / "b.txt.gz", "wt") as f:
        f.write(part[1])
    with gzip.open(d / "c.jsonl.gz", "wt") as f:
        f.writelines(json.dumps({"text": r}) + "\n" for r in records(part[2]))
    (d / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": r}) + "\n" for r in records(part[3])).encode()))
    (d / "e.zst").write_bytes(zstandard.ZstdCompressor().compress(part[4].encode()))
    pq.write_table(pa.table({"text": records(part[5])}), d / "f.parquet", row_group_size=200)
    import datasets

    datasets.disable_progress_bars()
    datasets.Dataset.from_dict({"text": records(part[6]), "id": list(range(len(records(part[6]))))}) \
        .save_to_disk(str(d / "g_hf"), max_shard_size="60KB")
    return d
