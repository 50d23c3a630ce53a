"""Writes documents' token ids into Arrow IPC shard files.

Shard and record-batch boundaries depend only on the sequence of documents (a shard closes after
the document that brings it to shard_tokens), so the bytes written do not depend on how the input
was cut into pieces or how many workers tokenised it.
"""

import hashlib
import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import numpy as np
import pyarrow as pa

from gpt import __version__, log
from gpt.data.format import FORMAT, LOSS_MASK, METADATA_FILE, SHARD_PATTERN, TOKENS, VERSION, dtype_for, schema, write_json_atomic
from gpt.errors import DataError

BATCH_TOKENS = 1 << 26
"""Tokens per Arrow record batch (64M, like the default shard): the writer holds one batch in memory;
a reader gathers from each batch as one array, so fewer batches make random access cheaper."""


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


def metadata(tokenizer: dict, dtype: str, shards: List[dict], source: dict) -> dict:
    """metadata.json of a shard directory (format version 1)."""
    return {"format": FORMAT, "version": VERSION, "created_by": f"gpt {__version__}", "tokenizer": tokenizer,
            "dtype": dtype, "num_documents": sum(s["documents"] for s in shards),
            "num_tokens": sum(s["tokens"] for s in shards), "shards": shards, "source": source}


def check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not output.is_dir():
        raise DataError(f"output={output} is a file, not a directory")
    if output.is_dir() and any(output.iterdir()) and not overwrite:
        raise DataError(f"output={output} exists and is not empty; pass overwrite=true to replace it")


@contextmanager
def atomic_output(output, overwrite: bool = False) -> Iterator[Path]:
    """A temporary sibling of `output` to write into; renamed to `output` if the block succeeds.

    The block must write metadata.json (last). On any exception the temporary directory is removed;
    a killed process leaves only a hidden `.name.tmp-host-pid` without metadata, which is not a shard
    directory and is removed by the next run on this host.
    """
    output = Path(output)
    check_output(output, overwrite)
    output.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temporaries(output)
    tmp = output.parent / f".{output.name}.tmp-{socket.gethostname()}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if not (tmp / METADATA_FILE).is_file():
            raise RuntimeError(f"atomic_output: the block did not write {METADATA_FILE}")
        _install(tmp, output, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_token_shards(output, tokenizer, documents: Iterable[Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]], *,
                       source: dict, shard_tokens: int = 64_000_000, loss_mask: bool = False,
                       overwrite: bool = False, finish=None) -> dict:
    """A complete shard directory from chunks of (tokens [t], lengths [d], loss mask [t] or None).

    For writers other than gpt-preprocess (fine-tuning data, synthetic benchmarks); returns the metadata.
    `finish(meta)` may add what is known only after the last chunk, before metadata.json is written.
    """
    dtype = dtype_for(tokenizer.vocab_size)
    with atomic_output(output, overwrite) as tmp:
        tokenizer.save_files(tmp)
        writer = ShardWriter(tmp, dtype, shard_tokens, loss_mask=loss_mask)
        try:
            for tokens, lengths, mask in documents:
                writer.add(tokens, lengths, mask)
            shards = writer.close()
        finally:
            writer.abort()
        if not shards:
            raise DataError(f"output={output}: no documents to write")
        meta = metadata(tokenizer.to_dict(), dtype, shards, source)
        if finish is not None:
            finish(meta)
        write_json_atomic(tmp / METADATA_FILE, meta)
    return meta


def _install(tmp: Path, output: Path, overwrite: bool) -> None:
    """Move the finished directory into place; an existing one is replaced only after this one is complete."""
    if output.is_dir() and not any(output.iterdir()):
        output.rmdir()
    if output.exists():
        if not overwrite:
            raise DataError(f"output={output} appeared while writing; pass overwrite=true to replace it")
        old = output.parent / f".{output.name}.old-{socket.gethostname()}-{os.getpid()}"
        os.rename(output, old)
        os.rename(tmp, output)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, output)


def _remove_stale_temporaries(output: Path) -> None:
    """Temporary directories of killed runs on this host (their process is gone) are removed."""
    prefix = f".{output.name}.tmp-{socket.gethostname()}-"
    for p in output.parent.glob(prefix + "*"):
        pid = p.name[len(prefix):]
        if pid.isdigit() and not _alive(int(pid)):
            log.get("data").info("removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
