"""Writes documents' token ids into Arrow IPC shard files, the chunk index and metadata.json.

Shard and record-batch boundaries depend only on the sequence of documents (a shard closes after
the document that brings it to shard_tokens, or at the end of a unit of input), so the bytes
written do not depend on how the input was cut into pieces, how many workers tokenised it, or how
many tasks of a job array wrote it. A document may arrive in parts (a huge document is encoded
and sent in pieces); the writer holds at most one record batch (and one document) of tokens.
"""

import os
import shutil
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import pyarrow as pa

from gpt import __version__, log
from gpt.checksums import file_checksum
from gpt.data.format import (FORMAT, INDEX_FILE, LOSS_MASK, METADATA_FILE, SHARD_PATTERN, TOKENS, VERSION, checksum_key,
                             coarsen, documents_per_chunk, dtype_for, schema, write_index, write_json_atomic)
from gpt.errors import DataError

BATCH_TOKENS = 1 << 24
"""Tokens per Arrow record batch (16M): the writer holds one batch (32-64 MB) in memory; readers
address a shard's tokens batch by batch."""
CHECKSUM = checksum_key(VERSION)
MAX_LIST_VALUES = (1 << 31) - 1
"""Arrow lists have int32 offsets: one record batch (hence one document) holds at most this many tokens."""


class _Growing:
    """A contiguous numpy buffer that grows in place (realloc: large blocks are remapped, not copied)."""

    def __init__(self, dtype, capacity: int):
        self.array = np.empty(max(1, capacity), dtype=dtype)
        self.n = 0
        self.base_capacity = max(1, capacity)

    def extend(self, values: np.ndarray) -> None:
        need = self.n + len(values)
        if need > len(self.array):
            self.array.resize(max(need, len(self.array) * 3 // 2), refcheck=False)
        self.array[self.n:need] = values
        self.n = need

    def view(self) -> np.ndarray:
        return self.array[:self.n]

    def clear(self) -> None:
        self.n = 0
        if len(self.array) > 2 * self.base_capacity:  # after a huge document: give the memory back
            self.array.resize(self.base_capacity, refcheck=False)


class _ChunkCounter:
    """Token counts of consecutive chunks of g documents of one shard, from the shard's first document."""

    def __init__(self, g: int):
        self.g = g
        self.done: List[np.ndarray] = []
        self.part_docs = 0
        self.part_tokens = 0

    def add(self, lengths: np.ndarray) -> None:
        lengths = np.asarray(lengths, dtype=np.uint64)
        i = 0
        if self.part_docs:
            take = min(self.g - self.part_docs, len(lengths))
            self.part_tokens += int(lengths[:take].sum())
            self.part_docs += take
            i = take
            if self.part_docs == self.g:
                self.done.append(np.array([self.part_tokens], dtype=np.uint64))
                self.part_docs = self.part_tokens = 0
        rest = lengths[i:]
        full = len(rest) // self.g * self.g
        if full:
            self.done.append(rest[:full].reshape(-1, self.g).sum(axis=1, dtype=np.uint64))
        if full < len(rest):
            self.part_docs = len(rest) - full
            self.part_tokens = int(rest[full:].sum())

    def coarsen(self) -> None:
        done = np.concatenate(self.done) if self.done else np.zeros(0, np.uint64)
        if len(done) % 2:  # the last finished chunk and the partial one form one chunk of 2g
            self.part_docs += self.g
            self.part_tokens += int(done[-1])
            done = done[:-1]
        self.done = [done.reshape(-1, 2).sum(axis=1, dtype=np.uint64)]
        self.g *= 2

    def finish(self) -> np.ndarray:
        parts = self.done + ([np.array([self.part_tokens], dtype=np.uint64)] if self.part_docs else [])
        return np.concatenate(parts) if parts else np.zeros(0, np.uint64)

    def __len__(self) -> int:
        return sum(len(d) for d in self.done) + bool(self.part_docs)


class ShardWriter:
    """Documents in, shard files out. `shards` / `chunks` describe every closed shard; chunk counts
    are at granularity `granularity` (documents per chunk), which doubles as documents arrive."""

    def __init__(self, directory, dtype: str, shard_tokens: int, *, loss_mask: bool = False,
                 batch_tokens: int = BATCH_TOKENS, first_shard: int = 0):
        self.directory = Path(directory)
        self.np_dtype = np.dtype(dtype)
        self.shard_tokens = max(1, shard_tokens)
        self.batch_tokens = max(1, min(batch_tokens, self.shard_tokens))
        self.loss_mask = loss_mask
        self.schema = schema(dtype, loss_mask)
        self.first_shard = first_shard
        self.shards: List[dict] = []
        self.chunks: List[np.ndarray] = []
        self.granularity = 1
        self.documents = 0
        self._tokens = _Growing(self.np_dtype, self.batch_tokens)  # pages are touched only as they fill
        self._mask = _Growing(np.uint8, self.batch_tokens) if loss_mask else None
        self._lengths: List[np.ndarray] = []       # complete documents of the buffered batch
        self._open = False                         # a document is still arriving (open_end)
        self._open_tokens = 0                      # its tokens so far
        self._shard_tokens = 0                     # tokens of the current shard, flushed and buffered
        self._shard_docs = 0
        self._shard_max = 0
        self._counter = _ChunkCounter(self.granularity)
        self._file = None
        self._writer = None
        self._hasher = None            # fsync + checksum of closed shards, off the writing thread
        self._checksums: list = []

    def add(self, tokens: np.ndarray, lengths: np.ndarray, mask: Optional[np.ndarray] = None,
            open_end: bool = False) -> None:
        """Append documents: tokens [sum(lengths)] concatenated, lengths [documents], mask like tokens.

        If a document is open (an earlier call had open_end=True), lengths[0] continues it;
        open_end=True leaves the last document open for the next call.
        """
        if self.loss_mask and mask is None:
            raise ValueError("this writer stores a loss_mask column; pass mask=")
        lengths = np.asarray(lengths, dtype=np.int64)
        if not len(lengths):
            return
        if self._open:
            first = int(lengths[0])
            self._append(tokens[:first], None if mask is None else mask[:first])
            self._open_tokens += first
            if len(lengths) == 1 and open_end:
                return
            self._complete_open()
            tokens, lengths = tokens[first:], lengths[1:]
            mask = None if mask is None else mask[first:]
        complete = len(lengths) - int(open_end)
        stop = int(lengths[:complete].sum())
        self._add_complete(tokens[:stop], lengths[:complete], None if mask is None else mask[:stop])
        if open_end:
            self._append(tokens[stop:], None if mask is None else mask[stop:])
            self._open, self._open_tokens = True, int(lengths[-1])

    def end_unit(self) -> None:
        """Close the current shard: the next document starts a new one (units of input never share a shard)."""
        if self._open:
            raise RuntimeError("ShardWriter.end_unit: a document is still open")
        if self._lengths:
            self._flush_batch()
        if self._writer is not None:
            self._close_shard()

    def close(self) -> List[dict]:
        """Finish the last shard; returns one entry per shard for metadata.json."""
        self.end_unit()
        for entry, future in self._checksums:
            entry[CHECKSUM] = future.result()
        self._checksums = []
        if self._hasher is not None:
            self._hasher.shutdown()
            self._hasher = None
        return self.shards

    def abort(self) -> None:
        if self._hasher is not None:
            self._hasher.shutdown(cancel_futures=True)
            self._hasher = None
        if self._writer is not None:
            self._writer.close()
            self._file.close()
            self._writer = self._file = None

    def _append(self, tokens: np.ndarray, mask: Optional[np.ndarray]) -> None:
        self._tokens.extend(tokens)
        if self._mask is not None:
            self._mask.extend(mask)
        if self._tokens.n > MAX_LIST_VALUES:
            raise DataError(f"a document of more than {MAX_LIST_VALUES} tokens does not fit an Arrow list; "
                            f"split it into smaller documents")

    def _add_complete(self, tokens: np.ndarray, lengths: np.ndarray, mask: Optional[np.ndarray]) -> None:
        ends = np.cumsum(lengths, dtype=np.int64)
        i, base = 0, 0
        while i < len(lengths):
            buffered = self._tokens.n
            need = min(self.batch_tokens - buffered, self.shard_tokens - self._shard_tokens)
            j = int(np.searchsorted(ends, base + need, side="left"))  # first doc reaching a threshold
            last = min(j, len(lengths) - 1)
            stop = int(ends[last])
            self._append(tokens[base:stop], None if mask is None else mask[base:stop])
            self._docs_done(lengths[i:last + 1])
            i, base = last + 1, stop
            if j < len(lengths):
                self._boundary()

    def _complete_open(self) -> None:
        self._docs_done(np.array([self._open_tokens], dtype=np.int64))
        self._open, self._open_tokens = False, 0
        if self._tokens.n >= self.batch_tokens or self._shard_tokens >= self.shard_tokens:
            self._boundary()

    def _docs_done(self, lengths: np.ndarray) -> None:
        self._lengths.append(lengths)
        n = int(lengths.sum())
        self._shard_tokens += n
        self._shard_docs += len(lengths)
        self._counter.add(lengths)
        self.documents += len(lengths)
        while documents_per_chunk(self.documents) > self.granularity:
            self.chunks = [coarsen(c, 2) for c in self.chunks]
            self._counter.coarsen()
            self.granularity *= 2

    def _boundary(self) -> None:
        self._flush_batch()
        if self._shard_tokens >= self.shard_tokens:
            self._close_shard()

    def _flush_batch(self) -> None:
        toks = self._tokens.view()
        lengths = np.concatenate(self._lengths) if self._lengths else np.zeros(0, np.int64)
        offsets = np.zeros(len(lengths) + 1, dtype=np.int32)
        np.cumsum(lengths, out=offsets[1:])
        if len(toks):
            self._shard_max = max(self._shard_max, int(toks.max()))
        offsets_array = pa.array(offsets)
        columns = [pa.ListArray.from_arrays(offsets_array, pa.array(toks), type=self.schema.field(TOKENS).type)]
        if self.loss_mask:
            columns.append(pa.ListArray.from_arrays(offsets_array, pa.array(self._mask.view()),
                                                    type=self.schema.field(LOSS_MASK).type))
        if self._writer is None:
            self._file = pa.OSFile(str(self._path()), "wb")
            self._writer = pa.ipc.new_file(self._file, self.schema)
        self._writer.write_batch(pa.RecordBatch.from_arrays(columns, schema=self.schema))
        del columns, offsets_array, toks  # no pyarrow view of the buffers may outlive a resize
        self._tokens.clear()
        if self._mask is not None:
            self._mask.clear()
        self._lengths = []

    def _path(self) -> Path:
        return self.directory / SHARD_PATTERN.format(self.first_shard + len(self.shards))

    def _close_shard(self) -> None:
        self._writer.close()
        self._file.close()
        self._writer = self._file = None
        path = self._path()
        entry = {"file": path.name, "documents": self._shard_docs, "tokens": self._shard_tokens,
                 "bytes": path.stat().st_size, CHECKSUM: None, "max_token_id": self._shard_max}
        if self._hasher is None:
            from concurrent.futures import ThreadPoolExecutor

            self._hasher = ThreadPoolExecutor(1, thread_name_prefix="shard-checksum")
        self._checksums.append((entry, self._hasher.submit(file_checksum, path, CHECKSUM, True)))
        self.shards.append(entry)
        self.chunks.append(self._counter.finish())
        self._counter = _ChunkCounter(self.granularity)
        self._shard_docs = self._shard_tokens = self._shard_max = 0


def metadata(tokenizer: dict, dtype: str, shards: List[dict], source: dict, index: Optional[dict] = None) -> dict:
    """metadata.json of a shard directory (format version 3)."""
    meta = {"format": FORMAT, "version": VERSION, "created_by": f"gpt {__version__}", "tokenizer": tokenizer,
            "dtype": dtype, "num_documents": sum(s["documents"] for s in shards),
            "num_tokens": sum(s["tokens"] for s in shards), "shards": shards}
    if index is not None:
        meta["index"] = index
    meta["source"] = source
    return meta


def finish_directory(directory: Path, tokenizer: dict, dtype: str, shards: List[dict],
                     chunks: Sequence[Tuple[np.ndarray, int]], source: dict, finish=None) -> dict:
    """Write index.arrow and (last) metadata.json for `shards`; chunks[i] = (chunk counts, their granularity)
    of shards[i]. `finish(meta)` may add to the metadata before it is written. Returns the metadata."""
    directory = Path(directory)
    g = documents_per_chunk(sum(s["documents"] for s in shards))
    parts = []
    for counts, granularity in chunks:
        if g % granularity:
            raise RuntimeError(f"chunk granularity {granularity} does not divide {g}")
        parts.append(coarsen(counts, g // granularity))
    index = np.concatenate(parts) if parts else np.zeros(0, np.uint64)
    write_index(directory / INDEX_FILE, index)
    entry = {"file": INDEX_FILE, "documents_per_chunk": g, "chunks": len(index),
             "bytes": (directory / INDEX_FILE).stat().st_size,
             CHECKSUM: file_checksum(directory / INDEX_FILE, CHECKSUM, fsync=True)}
    meta = metadata(tokenizer, dtype, shards, source, entry)
    if finish is not None:
        finish(meta)
    write_json_atomic(directory / METADATA_FILE, meta)
    return meta


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
        meta = finish_directory(tmp, tokenizer.to_dict(), dtype, shards, [(c, writer.granularity) for c in writer.chunks],
                                source, finish)
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
        if pid.isdigit() and not pid_alive(int(pid)):
            log.get("data").info("removing %s, left by an interrupted run", p)
            shutil.rmtree(p, ignore_errors=True)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
