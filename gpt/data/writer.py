"""Writes documents' token ids into Arrow IPC shard files.

Shard and record-batch boundaries depend only on the sequence of documents (a shard closes after
the document that brings it to shard_tokens), so the bytes written do not depend on how the input
was cut into pieces or how many workers tokenised it.
"""

import hashlib
import os
from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa

from gpt.data.format import LOSS_MASK, SHARD_PATTERN, TOKENS, schema

BATCH_TOKENS = 1 << 22
"""Tokens per Arrow record batch: bounds the writer's memory; readers see each batch as one array."""


class ShardWriter:
    def __init__(self, directory, dtype: str, shard_tokens: int, *, loss_mask: bool = False,
                 batch_tokens: int = BATCH_TOKENS):
        self.directory = Path(directory)
        self.dtype = dtype
        self.np_dtype = np.dtype(dtype)
        self.shard_tokens = max(1, shard_tokens)
        self.batch_tokens = max(1, batch_tokens)
        self.loss_mask = loss_mask
        self.schema = schema(dtype, loss_mask)
        self.shards: List[dict] = []
        self._buf: list = []          # [(tokens [t], lengths [d], mask [t] | None)]
        self._buf_tokens = 0
        self._shard_tokens = 0
        self._shard_docs = 0
        self._file = None
        self._writer = None

    def add(self, tokens: np.ndarray, lengths: np.ndarray, mask: Optional[np.ndarray] = None) -> None:
        """Append documents: tokens [sum(lengths)] concatenated, lengths [documents], mask like tokens."""
        if self.loss_mask and mask is None:
            raise ValueError("this writer stores a loss_mask column; pass mask=")
        ends = np.cumsum(lengths, dtype=np.int64)
        i, base = 0, 0
        while i < len(lengths):
            need = min(self.batch_tokens, self.shard_tokens - self._shard_tokens) - self._buf_tokens
            j = int(np.searchsorted(ends, base + need, side="left"))  # first doc reaching the threshold
            last = min(j, len(lengths) - 1)
            stop = int(ends[last])
            self._buf.append((tokens[base:stop], lengths[i:last + 1], None if mask is None else mask[base:stop]))
            self._buf_tokens += stop - base
            self._shard_docs += last + 1 - i
            i, base = last + 1, stop
            if j < len(lengths):
                self._flush_batch()
                if self._shard_tokens >= self.shard_tokens:
                    self._close_shard()

    def close(self) -> List[dict]:
        """Finish the last shard; returns one entry per shard for metadata.json."""
        if self._buf:
            self._flush_batch()
        if self._writer is not None:
            self._close_shard()
        return self.shards

    def abort(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None

    def _flush_batch(self) -> None:
        toks = np.concatenate([b[0] for b in self._buf]).astype(self.np_dtype, copy=False)
        lengths = np.concatenate([b[1] for b in self._buf])
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        columns = [pa.ListArray.from_arrays(pa.array(offsets), pa.array(toks), type=self.schema.field(TOKENS).type)]
        if self.loss_mask:
            mask = np.concatenate([b[2] for b in self._buf]).astype(np.uint8, copy=False)
            columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(mask),
                                                    type=self.schema.field(LOSS_MASK).type))
        if self._writer is None:
            path = self.directory / SHARD_PATTERN.format(len(self.shards))
            self._file = pa.OSFile(str(path), "wb")
            self._writer = pa.ipc.new_file(self._file, self.schema)
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        self._shard_tokens += len(toks)
        self._buf, self._buf_tokens = [], 0

    def _close_shard(self) -> None:
        self._writer.close()
        self._file.close()
        self._writer = self._file = None
        path = self.directory / SHARD_PATTERN.format(len(self.shards))
        self.shards.append({"file": path.name, "documents": self._shard_docs, "tokens": self._shard_tokens,
                            "bytes": path.stat().st_size, "sha256": file_sha256(path)})
        self._shard_docs = self._shard_tokens = 0


def file_sha256(path, fsync: bool = True) -> str:
    """Checksum of a finished file (read back from the page cache); optionally flushed to disk first."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        if fsync:
            os.fsync(f.fileno())
        while chunk := f.read(1 << 22):
            h.update(chunk)
    return h.hexdigest()
