"""The token-shard format, version 3: constants, Arrow schema, the chunk index and metadata.json validation.

Everything a reader needs to trust a shard directory lives here, so the writer (preprocessing) and
the readers (training, generation, external tools) cannot drift apart. docs/data.md documents the
same format for users.

Version 2 adds, over version 1: the largest token id of every shard (`max_token_id`, so ids outside
the vocabulary are refused at open from metadata.json alone) and `index.arrow`, the number of tokens
in every chunk of `documents_per_chunk` consecutive documents of a shard, so a loader can plan whole
epochs over trillions of tokens from one small file without opening the shards. Version 1
directories still open (the loader then reads every shard's list offsets at start-up and checks
token ids as it reads them).

Version 3 records every file's XXH3-128 (`xxh3_128`) instead of its sha256: the preprocessing main
process checksums every shard it writes, and sha256 was a third of its CPU time on byte inputs
(docs/benchmarks.md). Version 1 and 2 directories keep their sha256 records, still checked.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from gpt.checksums import HEX
from gpt.errors import DataError

FORMAT = "gpt-token-shards"
VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
METADATA_FILE = "metadata.json"
INDEX_FILE = "index.arrow"
SHARD_PATTERN = "shard-{:05d}.arrow"
TOKENS = "tokens"
LOSS_MASK = "loss_mask"
CHUNK_TOKENS = "chunk_tokens"
DTYPES = {"uint16": pa.uint16(), "uint32": pa.uint32()}
MAX_CHUNKS = 1 << 22
"""A set's index holds at most this many chunks plus one per shard (34 MB at most): documents per
chunk is the smallest power of two that keeps it so (1, i.e. one chunk per document, up to 4M documents)."""


def schema_metadata(version: int = VERSION) -> dict:
    return {b"gpt.format": FORMAT.encode(), b"gpt.version": str(version).encode()}


SCHEMA_METADATA = schema_metadata()


def checksum_key(version: int) -> str:
    """The checksum metadata.json records for every file of a directory of this format version."""
    return "xxh3_128" if version >= 3 else "sha256"


def dtype_for(vocab_size: int) -> str:
    """uint16 halves the size of shards for every vocabulary up to 65536 ids (GPT-2's 50257)."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def schema(dtype: str, loss_mask: bool = False) -> pa.Schema:
    fields = [pa.field(TOKENS, pa.list_(pa.field("item", DTYPES[dtype], nullable=False)), nullable=False)]
    if loss_mask:
        fields.append(pa.field(LOSS_MASK, pa.list_(pa.field("item", pa.uint8(), nullable=False)), nullable=False))
    return pa.schema(fields, metadata=SCHEMA_METADATA)


def documents_per_chunk(num_documents: int) -> int:
    """The index granularity of a set of num_documents: the smallest power of two g with num_documents/g <= MAX_CHUNKS."""
    g = 1
    while num_documents > g * MAX_CHUNKS:
        g *= 2
    return g


def coarsen(chunks: np.ndarray, factor: int) -> np.ndarray:
    """Chunk token counts of one shard at `factor` times the granularity (pairs summed from the shard's start)."""
    chunks = np.asarray(chunks, dtype=np.uint64)
    while factor > 1:
        if len(chunks) % 2:
            chunks = np.append(chunks, np.uint64(0))
        chunks = chunks.reshape(-1, 2).sum(axis=1, dtype=np.uint64)
        factor //= 2
    return chunks


def write_json_atomic(path: Path, obj: Any) -> None:
    """A reader sees either the old file or the complete new one, never a partial write."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; metadata is as readable as the shards
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def int_values(array: pa.Array) -> np.ndarray:
    """A read-only numpy view of a pyarrow integer array without nulls (offsets, the chunk index).
    pyarrow's own to_numpy() imports pandas first (1 s of every rank's start-up)."""
    if array.null_count:
        raise pa.ArrowInvalid("unexpected nulls")
    dtype = np.dtype(f"{'u' if pa.types.is_unsigned_integer(array.type) else ''}int{array.type.bit_width}")
    if len(array) == 0:
        return np.empty(0, dtype)
    data = array.buffers()[1]
    if data is None or data.size < (array.offset + len(array)) * dtype.itemsize:
        raise pa.ArrowInvalid("buffer shorter than the array")
    return np.frombuffer(data, dtype=dtype, count=len(array), offset=array.offset * dtype.itemsize)


def write_index(path: Path, chunk_tokens: np.ndarray) -> None:
    """index.arrow: one uint64 column, the tokens of every chunk of every shard, in shard order."""
    table = pa.table({CHUNK_TOKENS: pa.array(np.asarray(chunk_tokens, dtype=np.uint64))},
                     schema=pa.schema([pa.field(CHUNK_TOKENS, pa.uint64(), nullable=False)], metadata=SCHEMA_METADATA))
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table)


def read_index(shard_dir: Path, meta: dict) -> np.ndarray:
    """Chunk token counts [chunks] uint64 of a version 2 or 3 directory, checked against metadata.json."""
    entry = meta["index"]
    path = Path(shard_dir) / entry["file"]
    fix = "re-run gpt-preprocess to rewrite the directory"
    if not path.is_file() or path.stat().st_size != entry["bytes"]:
        found = f"{path.stat().st_size} bytes" if path.is_file() else "missing"
        raise DataError(f"{path}: the chunk index is {found} but metadata.json says {entry['bytes']} bytes; {fix}")
    try:
        with pa.OSFile(str(path), "rb") as f:
            table = pa.ipc.open_file(f).read_all()
        column = int_values(table.column(CHUNK_TOKENS).combine_chunks())
    except (pa.ArrowException, KeyError, OSError) as e:
        raise DataError(f"{path}: not a readable chunk index ({str(e).splitlines()[0]}); {fix}") from None
    if len(column) != entry["chunks"]:
        raise DataError(f"{path}: holds {len(column)} chunks but metadata.json says {entry['chunks']}; {fix}")
    return column.astype(np.uint64, copy=False)


def read_metadata(shard_dir) -> dict:
    """metadata.json of a shard directory, checked for format, version and internal consistency."""
    shard_dir = Path(shard_dir)
    path = shard_dir / METADATA_FILE
    if not shard_dir.is_dir():
        raise DataError(f"{shard_dir}: no such directory of token shards (write one with gpt-preprocess input=... output={shard_dir})")
    if not path.is_file():
        raise DataError(f"{shard_dir} holds no {METADATA_FILE}, so it is not a complete shard directory "
                        f"(an interrupted gpt-preprocess?); re-run gpt-preprocess output={shard_dir}")
    try:
        meta = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{path}: not valid JSON ({e}); re-run gpt-preprocess") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise DataError(f"{path}: format {found!r} is not {FORMAT!r}; this directory was not written by gpt-preprocess")
    if meta.get("version") not in READABLE_VERSIONS:
        raise DataError(f"{path}: shard format version {meta.get('version')!r} is not supported "
                        f"(this gpt reads versions {', '.join(map(str, READABLE_VERSIONS))}); re-run gpt-preprocess with this version")
    _check_fields(path, meta)
    return meta


def _check_fields(path: Path, meta: dict) -> None:
    def need(cond: bool, what: str) -> None:
        if not cond:
            raise DataError(f"{path}: {what}; the file is damaged, re-run gpt-preprocess")

    def is_int(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    tok = meta.get("tokenizer")
    need(isinstance(tok, dict) and isinstance(tok.get("kind"), str), "'tokenizer' must be an object with a 'kind'")
    need(is_int(tok.get("vocab_size")) and is_int(tok.get("eod_id")) and tok["eod_id"] < tok["vocab_size"],
         "'tokenizer' needs integer 'vocab_size' and 'eod_id' < vocab_size")
    need(meta.get("dtype") in DTYPES, f"'dtype' must be one of {'|'.join(DTYPES)}")
    need(meta["dtype"] == "uint32" or tok["vocab_size"] <= 65536, "'dtype' uint16 cannot hold this vocab_size")
    need(is_int(meta.get("num_documents")) and is_int(meta.get("num_tokens")),
         "'num_documents' and 'num_tokens' must be non-negative integers")
    shards = meta.get("shards")
    need(isinstance(shards, list) and len(shards) > 0, "'shards' must be a non-empty list")
    v2 = meta["version"] >= 2
    keys = ("documents", "tokens", "bytes") + (("max_token_id",) if v2 else ())
    digest = checksum_key(meta["version"])

    def is_digest(v) -> bool:
        return isinstance(v, str) and HEX[digest].match(v) is not None

    for i, s in enumerate(shards):
        need(isinstance(s, dict) and _plain_name(s.get("file")) and all(is_int(s.get(k)) for k in keys)
             and is_digest(s.get(digest)), f"shards[{i}] must have file, {', '.join(keys)} and a hex {digest}")
    need(sum(s["documents"] for s in shards) == meta["num_documents"], "shard document counts do not add up to num_documents")
    need(sum(s["tokens"] for s in shards) == meta["num_tokens"], "shard token counts do not add up to num_tokens")
    if not v2:
        return
    index = meta.get("index")
    need(isinstance(index, dict) and _plain_name(index.get("file"))
         and all(is_int(index.get(k)) for k in ("documents_per_chunk", "chunks", "bytes"))
         and (meta["version"] < 3 or is_digest(index.get(digest))),
         f"'index' must have file, documents_per_chunk, chunks, bytes{' and ' + digest if meta['version'] >= 3 else ''}")
    g = index["documents_per_chunk"]
    need(g >= 1 and g & (g - 1) == 0, "'index.documents_per_chunk' must be a power of two")
    need(index["chunks"] == sum(-(-s["documents"] // g) for s in shards), "'index.chunks' does not match the shards")
    for s in shards:
        if s["tokens"] and s["max_token_id"] >= tok["vocab_size"]:
            raise DataError(f"{path.parent / s['file']}: holds token id {s['max_token_id']} but the tokenizer in "
                            f"metadata.json has {tok['vocab_size']} ids (0-{tok['vocab_size'] - 1}); the shard was written "
                            f"with another tokenizer: re-run gpt-preprocess with the tokenizer you train with")


def _plain_name(name) -> bool:
    """A file name inside the directory: no separators, no '..', nothing hidden."""
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def fingerprint(meta: dict) -> str:
    """A digest of what a shard directory holds, from its metadata.json alone (no shard is read):
    the tokenizer (what defines it, not where its file was), the dtype and every shard's name,
    counts, size and checksum. Shards rewritten by gpt-preprocess change it."""
    from gpt.data.tokenizer import identity

    keys = ("file", "documents", "tokens", "bytes", checksum_key(meta["version"]))
    shards = [{k: s.get(k) for k in keys} for s in meta["shards"]]
    body = {"tokenizer": identity(meta["tokenizer"]), "dtype": meta["dtype"], "shards": shards}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
