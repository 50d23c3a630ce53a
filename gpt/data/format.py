"""The token-shard format, version 1: constants, Arrow schema and metadata.json validation.

Everything a reader needs to trust a shard directory lives here, so the writer (preprocessing) and
the readers (training, generation, external tools) cannot drift apart. docs/data.md ("Shard format")
documents the same format for users.
"""

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa

from gpt.errors import DataError

FORMAT = "gpt-token-shards"
VERSION = 1
METADATA_FILE = "metadata.json"
SHARD_PATTERN = "shard-{:05d}.arrow"
TOKENS = "tokens"
LOSS_MASK = "loss_mask"
DTYPES = {"uint16": pa.uint16(), "uint32": pa.uint32()}
SCHEMA_METADATA = {b"gpt.format": FORMAT.encode(), b"gpt.version": str(VERSION).encode()}


def dtype_for(vocab_size: int) -> str:
    """uint16 halves the size of shards for every vocabulary up to 65536 ids (GPT-2's 50257)."""
    return "uint16" if vocab_size <= 65536 else "uint32"


def schema(dtype: str, loss_mask: bool = False) -> pa.Schema:
    fields = [pa.field(TOKENS, pa.list_(pa.field("item", DTYPES[dtype], nullable=False)), nullable=False)]
    if loss_mask:
        fields.append(pa.field(LOSS_MASK, pa.list_(pa.field("item", pa.uint8(), nullable=False)), nullable=False))
    return pa.schema(fields, metadata=SCHEMA_METADATA)


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
    if meta.get("version") != VERSION:
        raise DataError(f"{path}: shard format version {meta.get('version')!r} is not supported "
                        f"(this gpt reads version {VERSION}); re-run gpt-preprocess with this version")
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
    for i, s in enumerate(shards):
        need(isinstance(s, dict) and isinstance(s.get("file"), str) and "/" not in s["file"]
             and all(is_int(s.get(k)) for k in ("documents", "tokens", "bytes"))
             and isinstance(s.get("sha256"), str), f"shards[{i}] must have file, documents, tokens, bytes and sha256")
    need(sum(s["documents"] for s in shards) == meta["num_documents"], "shard document counts do not add up to num_documents")
    need(sum(s["tokens"] for s in shards) == meta["num_tokens"], "shard token counts do not add up to num_tokens")


def fingerprint(meta: dict) -> str:
    """A digest of what a shard directory holds, from its metadata.json alone (no shard is read):
    the tokenizer (what defines it, not where its file was), the dtype and every shard's name,
    counts, size and sha256. Shards rewritten by gpt-preprocess change it."""
    from gpt.data.tokenizer import identity

    shards = [{k: s.get(k) for k in ("file", "documents", "tokens", "bytes", "sha256")} for s in meta["shards"]]
    body = {"tokenizer": identity(meta["tokenizer"]), "dtype": meta["dtype"], "shards": shards}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
