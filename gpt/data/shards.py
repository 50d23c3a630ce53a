"""A shard directory opened for random access, in memory that does not grow with the corpus.

Opening reads metadata.json and the chunk index (index.arrow: tokens per chunk of documents), and
checks every shard file's size; nothing else. A shard is opened on first use: its Arrow footer and
schema are checked and the file positions of its record batches kept; its list offsets (the
document index) are read when a window of the loader needs them (kept up to OFFSETS_BYTES), its
tokens with pread(2): nothing is memory-mapped, so a shard truncated while training runs is a short
read and a one-line DataError, not SIGBUS. At most OPEN_SHARDS shards stay open (least recently
used ones are closed). The checksum of every byte is checked only on request (`verify=True`)
because it reads the whole corpus.

Version 1 directories (no index, no recorded max token id) are read by opening every shard once at
start-up to count its documents' tokens; every read checks token ids against the vocabulary.
"""

import os
from collections import OrderedDict
from pathlib import Path
from typing import Optional

import numpy as np
import pyarrow as pa

from gpt import log
from gpt.checksums import file_checksum
from gpt.data.format import (DTYPES, LOSS_MASK, TOKENS, checksum_key, documents_per_chunk, int_values, read_index,
                             read_metadata, schema_metadata)
from gpt.data.tokenizer import Tokenizer, tokenizer_from_dict
from gpt.errors import DataError

def _open_limit() -> int:
    try:
        import resource

        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    except (ImportError, OSError, ValueError):
        soft = 1024
    return max(16, min(4096, (soft if soft > 0 else 1024) // 4))


OPEN_SHARDS = _open_limit()
"""Shards kept open at once: a descriptor and the positions of their record batches each (a quarter
of the open-file limit, at most 4096)."""
OFFSETS_BYTES = 64 << 20
"""Document starts (8 bytes per document) kept for the shards in use, read again when needed."""
PARALLEL_OPENS = 32
"""Shards opened together (by 8 threads) while a window is laid out."""
FIX = "re-run gpt-preprocess to rewrite it"


class ShardFile:
    """One shard: footer and schema checked once, tokens and list offsets read with pread."""

    def __init__(self, path: Path, entry: dict, dtype: str, version: int):
        self.path = path
        self.itemsize = np.dtype(dtype).itemsize
        self.size = entry["bytes"]
        try:
            self.fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise DataError(f"{path}: shard listed in metadata.json cannot be opened ({e.strerror}); {FIX}") from None
        try:
            self._read_layout(entry, dtype, version)
        except BaseException:
            os.close(self.fd)
            raise

    def _read_layout(self, entry: dict, dtype: str, version: int) -> None:
        path = self.path
        size = os.fstat(self.fd).st_size
        if size != entry["bytes"]:
            raise DataError(f"{path}: shard is {size} bytes but metadata.json says {entry['bytes']} "
                            f"(truncated or modified); {FIX}")
        try:
            mm = pa.memory_map(str(path), "r")  # only the footer and batch headers are touched
            reader = pa.ipc.open_file(mm)
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
            mm.seek(0)
            base = mm.read_buffer(1).address
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Arrow IPC file ({str(e).splitlines()[0]}); {FIX}") from None
        check_schema(path, reader.schema, dtype, version)
        self.has_mask = LOSS_MASK in reader.schema.names
        values_pos, mask_pos, offsets_pos, rows_of = [], [], [], []
        batch_start = [0]                     # element index of each batch's first token
        rows = 0
        tokens = values = offsets = None
        for batch in batches:
            try:
                batch.validate()
                tokens = batch.column(TOKENS)
                offsets = int_values(tokens.offsets)
                values = tokens.values
                if self.has_mask:
                    mask = batch.column(LOSS_MASK)
                    if not np.array_equal(int_values(mask.offsets), offsets):
                        raise DataError(f"{path}: loss_mask rows differ in length from tokens rows; {FIX}")
                    mask_pos.append(mask.values.buffers()[1].address - base + mask.values.offset)
            except pa.ArrowException as e:
                raise DataError(f"{path}: corrupt record batch ({str(e).splitlines()[0]}); {FIX}") from None
            if len(offsets) != len(tokens) + 1 or offsets[0] != 0 or offsets[-1] != len(values) \
                    or np.any(offsets[1:] < offsets[:-1]):
                raise DataError(f"{path}: corrupt list offsets in the tokens column; {FIX}")
            values_pos.append(values.buffers()[1].address - base + values.offset * self.itemsize)
            offsets_pos.append(tokens.buffers()[1].address - base + tokens.offset * 4)
            rows_of.append(len(tokens))
            batch_start.append(batch_start[-1] + len(values))
            rows += len(tokens)
        del batches, reader, offsets, tokens, values
        mm.close()
        if rows != entry["documents"] or batch_start[-1] != entry["tokens"]:
            raise DataError(f"{path}: holds {rows} documents and {batch_start[-1]} tokens but metadata.json says "
                            f"{entry['documents']} and {entry['tokens']}; {FIX}")
        self.batch_start = np.array(batch_start, dtype=np.int64)      # [batches + 1]
        self.values_pos = np.array(values_pos, dtype=np.int64)        # [batches] file offsets
        self.mask_pos = np.array(mask_pos, dtype=np.int64) if self.has_mask else None
        self.offsets_pos = offsets_pos
        self.rows = rows_of

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def doc_starts(self) -> np.ndarray:
        """Element index (within the shard) of every document's first token, and the end [docs + 1] int64."""
        out = [np.zeros(1, dtype=np.int64)]
        for b, (pos, rows) in enumerate(zip(self.offsets_pos, self.rows)):
            offsets = np.empty(rows + 1, dtype=np.int32)
            self._pread(np.array([pos]), np.array([4 * (rows + 1)]), np.zeros(1, np.int64), memoryview(offsets).cast("B"))
            out.append(offsets[1:].astype(np.int64) + self.batch_start[b])
        return np.concatenate(out)

    def read(self, elem: np.ndarray, length: np.ndarray, dest: np.ndarray, out: np.ndarray,
             mask_out: Optional[np.ndarray]) -> None:
        """out[dest[i]: dest[i] + length[i]] = tokens [elem[i], elem[i] + length[i]) of this shard (runs
        never cross a document, hence never a record batch); the same for the loss mask."""
        batch = np.searchsorted(self.batch_start, elem, side="right") - 1
        local = elem - self.batch_start[batch]
        self._pread(self.values_pos[batch] + local * self.itemsize, length * self.itemsize,
                    dest * self.itemsize, memoryview(out).cast("B"))
        if mask_out is not None and self.has_mask:
            self._pread(self.mask_pos[batch] + local, length, dest, memoryview(mask_out))

    def _pread(self, pos: np.ndarray, nbytes: np.ndarray, at: np.ndarray, buffer: memoryview) -> None:
        fd = self.fd
        for p, n, a in zip(pos.tolist(), nbytes.tolist(), at.tolist()):
            try:
                got = os.preadv(fd, [buffer[a:a + n]], p) if n else 0
            except OSError as e:
                raise DataError(f"{self.path}: cannot be read ({e.strerror}); check the disk, or {FIX}") from None
            if got != n:
                size = os.fstat(fd).st_size
                raise DataError(f"{self.path}: shard is now {size} bytes, {self.size} when training started "
                                f"(truncated while training runs?); restore it, or {FIX} and start a new run")


def check_schema(path: Path, schema: pa.Schema, dtype: str, version: int) -> None:
    meta = schema.metadata or {}
    for key, want in schema_metadata(version).items():
        if meta.get(key) != want:
            raise DataError(f"{path}: schema metadata {key.decode()}={meta.get(key, b'(missing)').decode(errors='replace')}, "
                            f"expected {want.decode()}; {FIX}")
    want_type = pa.list_(pa.field("item", DTYPES[dtype], nullable=False))
    if TOKENS not in schema.names or not schema.field(TOKENS).type.equals(want_type, check_metadata=False):
        found = schema.field(TOKENS).type if TOKENS in schema.names else "(missing)"
        raise DataError(f"{path}: column tokens has type {found}, expected list<{dtype}> as metadata.json says; {FIX}")
    if LOSS_MASK in schema.names and not (pa.types.is_list(schema.field(LOSS_MASK).type)
                                           and schema.field(LOSS_MASK).type.value_type == pa.uint8()):
        raise DataError(f"{path}: column loss_mask has type {schema.field(LOSS_MASK).type}, expected list<uint8>; {FIX}")


class ShardSet:
    """All documents of a shard directory, numbered 0..num_documents-1 in shard order, and their chunks.

    Chunk c holds `chunk_docs(c)` consecutive documents from `chunk_first_doc(c)` (never across a
    shard) with `chunk_tokens[c]` tokens: the unit the loader shuffles and splits by.
    """

    def __init__(self, directory, *, verify: bool = False):
        self.directory = Path(directory)
        meta = read_metadata(self.directory)
        entries = meta.pop("shards")
        self.meta = meta
        """metadata.json without its list of shards (kept as arrays below: the list costs ~0.7 kB per shard)."""
        self.version = meta["version"]
        self.dtype = meta["dtype"]
        self.eod_id = int(meta["tokenizer"]["eod_id"])
        self.vocab_size = int(meta["tokenizer"]["vocab_size"])
        self.shard_files = [s["file"] for s in entries]
        self.shard_bytes = np.array([s["bytes"] for s in entries], dtype=np.int64)         # [shards]
        self.shard_tokens = np.array([s["tokens"] for s in entries], dtype=np.int64)       # [shards]
        self.shard_docs = np.array([s["documents"] for s in entries], dtype=np.int64)      # [shards]
        self.shard_doc_start = np.concatenate([[0], np.cumsum(self.shard_docs)])            # [shards + 1]
        self._open: "OrderedDict[int, ShardFile]" = OrderedDict()
        self._starts: "OrderedDict[int, np.ndarray]" = OrderedDict()
        self._starts_bytes = 0
        digest = checksum_key(self.version)
        for entry in entries:  # cheap: one stat per shard
            path = self.directory / entry["file"]
            if not path.is_file():
                raise DataError(f"{path}: shard listed in metadata.json is missing (or not a regular file); {FIX}")
            if path.stat().st_size != entry["bytes"]:
                raise DataError(f"{path}: shard is {path.stat().st_size} bytes but metadata.json says {entry['bytes']} "
                                f"(truncated or modified); {FIX}")
            if verify and file_checksum(path, digest) != entry[digest]:
                raise DataError(f"{path}: {digest} does not match metadata.json (the shard is corrupt); {FIX}")
        del entries
        if verify:
            for i in range(len(self.shard_files)):
                self._file(i)
        self.has_mask = self._file(0).has_mask
        if self.version >= 2:
            self.granularity = self.meta["index"]["documents_per_chunk"]
            self.chunk_tokens = read_index(self.directory, self.meta).astype(np.int64)       # [chunks]
        else:
            log.get("data").info("%s: shard format version 1 (no chunk index): reading every shard's offsets; "
                                 "re-run gpt-preprocess for a faster start", self.directory)
            self.granularity = documents_per_chunk(int(self.shard_docs.sum()))
            self.chunk_tokens = self._index_from_offsets()
        per_shard = -(-self.shard_docs // self.granularity)
        self.shard_chunk_start = np.concatenate([[0], np.cumsum(per_shard)])                # [shards + 1]
        if self.shard_chunk_start[-1] != len(self.chunk_tokens):
            raise DataError(f"{self.directory}: the chunk index holds {len(self.chunk_tokens)} chunks, the shards "
                            f"need {self.shard_chunk_start[-1]}; {FIX}")
        self._chunk_shard = np.repeat(np.arange(len(per_shard), dtype=np.int32), per_shard)   # [chunks]
        last = self.shard_docs - (per_shard - 1) * self.granularity                          # [shards]
        self._chunk_docs = np.full(len(self.chunk_tokens), self.granularity, dtype=np.int32)  # [chunks]
        self._chunk_docs[self.shard_chunk_start[1:][per_shard > 0] - 1] = last[per_shard > 0]
        sums = np.add.reduceat(self.chunk_tokens, self.shard_chunk_start[:-1]) if len(self.chunk_tokens) else []
        tokens = self.shard_tokens
        nonempty = per_shard > 0
        if not np.array_equal(np.asarray(sums)[nonempty], tokens[nonempty]) or tokens[~nonempty].any():
            bad = int(np.flatnonzero(nonempty)[np.asarray(sums)[nonempty] != tokens[nonempty]][0]) if nonempty.any() else 0
            raise DataError(f"{self.directory}: the chunk index does not match {self.shard_files[bad]} "
                            f"({tokens[bad]} tokens in metadata.json); {FIX}")

    @property
    def num_documents(self) -> int:
        return int(self.shard_doc_start[-1])

    @property
    def num_chunks(self) -> int:
        return len(self.chunk_tokens)

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_dict(self.meta["tokenizer"], self.directory)

    def chunk_shard(self, chunks: np.ndarray) -> np.ndarray:
        return self._chunk_shard[chunks].astype(np.int64)

    def chunk_docs(self, chunks: np.ndarray) -> np.ndarray:
        """Documents in each of `chunks` [n] (the last chunk of a shard may hold fewer than granularity)."""
        return self._chunk_docs[chunks].astype(np.int64)

    def chunk_first_doc(self, chunks: np.ndarray) -> np.ndarray:
        chunks = np.asarray(chunks, dtype=np.int64)
        shard = self.chunk_shard(chunks)
        return self.shard_doc_start[shard] + (chunks - self.shard_chunk_start[shard]) * self.granularity

    def documents(self, docs: np.ndarray):
        """(shard [n] int64, element index of the first token within the shard [n], length [n]) of documents `docs`."""
        docs = np.asarray(docs, dtype=np.int64)
        shard = np.searchsorted(self.shard_doc_start, docs, side="right") - 1
        elem = np.empty(len(docs), dtype=np.int64)
        length = np.empty(len(docs), dtype=np.int64)
        order = np.argsort(shard, kind="stable")
        bounds = np.flatnonzero(np.diff(shard[order])) + 1
        groups = np.split(order, bounds) if len(order) else []
        for k in range(0, len(groups), PARALLEL_OPENS):
            batch = groups[k:k + PARALLEL_OPENS]
            self._prefetch([int(shard[g[0]]) for g in batch])
            for group in batch:
                s = int(shard[group[0]])
                starts = self._doc_starts(s)
                local = docs[group] - self.shard_doc_start[s]
                elem[group] = starts[local]
                length[group] = starts[local + 1] - starts[local]
        return shard, elem, length

    def _prefetch(self, shards: list) -> None:
        """Open shards and read their list offsets in parallel threads (a window reads ~128 shards:
        on a network filesystem their latencies overlap)."""
        missing = [s for s in shards if s not in self._starts]
        if len(missing) < 2:
            return
        from concurrent.futures import ThreadPoolExecutor

        def load(s):
            f = self._open.get(s) or self._new_file(s)
            return s, f, f.doc_starts()

        with ThreadPoolExecutor(min(len(missing), 8)) as pool:
            loaded = list(pool.map(load, missing))
        for s, f, starts in loaded:  # the caches are touched by this thread only
            self._remember_file(s, f)
            self._remember_starts(s, starts)

    def read(self, shard: np.ndarray, elem: np.ndarray, length: np.ndarray, dest: np.ndarray, out: np.ndarray,
             mask_out: Optional[np.ndarray] = None) -> None:
        """Runs of tokens: out[dest[i]: dest[i] + length[i]] = shard[i]'s tokens from element elem[i] (and the
        loss mask into mask_out; shards without a mask column leave it as it is). Positions of `out`
        outside the runs must hold valid ids (they are checked against the vocabulary with the rest)."""
        if len(shard) and shard.min() == shard.max():
            self._file(int(shard[0])).read(elem, length, dest, out, mask_out)
        else:
            order = np.argsort(shard, kind="stable")
            bounds = np.flatnonzero(np.diff(shard[order])) + 1
            for group in np.split(order, bounds) if len(order) else []:
                f = self._file(int(shard[group[0]]))
                f.read(elem[group], length[group], dest[group], out, mask_out)
        if len(out) and int(out.max()) >= self.vocab_size:  # version 1 shards record no max id; cheap anyway
            at = int(np.argmax(out >= self.vocab_size))
            run = int(np.flatnonzero((dest <= at) & (at < dest + length))[0])
            path = self.directory / self.shard_files[int(shard[run])]
            raise DataError(f"{path}: holds token id {int(out[at])} but the tokenizer in metadata.json has "
                            f"{self.vocab_size} ids; the shard was written with another tokenizer: {FIX}")

    def document(self, d: int) -> np.ndarray:
        """Token ids of document d (a copy) [length] int64."""
        shard, elem, length = self.documents(np.array([d]))
        out = np.zeros(int(length[0]), dtype=self.dtype)
        self.read(shard, elem, length, np.zeros(1, np.int64), out)
        return out.astype(np.int64)

    def doc_lengths(self, docs: np.ndarray) -> np.ndarray:
        return self.documents(docs)[2]

    def _new_file(self, s: int) -> ShardFile:
        entry = {"documents": int(self.shard_docs[s]), "tokens": int(self.shard_tokens[s]),
                 "bytes": int(self.shard_bytes[s])}
        return ShardFile(self.directory / self.shard_files[s], entry, self.dtype, self.version)

    def _remember_file(self, s: int, f: ShardFile) -> None:
        if s in self._open:
            self._open.move_to_end(s)
            return
        if self._open and f.has_mask != next(iter(self._open.values())).has_mask:
            f.close()
            raise DataError(f"{f.path}: has {'a' if f.has_mask else 'no'} loss_mask column, unlike the other "
                            f"shards of {self.directory}; {FIX}")
        self._open[s] = f
        while len(self._open) > OPEN_SHARDS:
            self._open.popitem(last=False)[1].close()

    def _file(self, s: int) -> ShardFile:
        f = self._open.get(s)
        if f is None:
            f = self._new_file(s)
        self._remember_file(s, f)
        return f

    def _remember_starts(self, s: int, starts: np.ndarray) -> None:
        if s in self._starts:
            self._starts.move_to_end(s)
            return
        self._starts[s] = starts
        self._starts_bytes += starts.nbytes
        while self._starts_bytes > OFFSETS_BYTES and len(self._starts) > 1:
            self._starts_bytes -= self._starts.popitem(last=False)[1].nbytes

    def _doc_starts(self, s: int) -> np.ndarray:
        starts = self._starts.get(s)
        if starts is None:
            starts = self._file(s).doc_starts()
        self._remember_starts(s, starts)
        return starts

    def _index_from_offsets(self) -> np.ndarray:
        chunks = []
        for s in range(len(self.shard_files)):
            lengths = np.diff(self._file(s).doc_starts())
            if self.granularity == 1:
                chunks.append(lengths)
            else:
                chunks.append(np.add.reduceat(lengths, np.arange(0, len(lengths), self.granularity)) if len(lengths)
                              else lengths)
        return np.concatenate(chunks).astype(np.int64)

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1].close()

    def __del__(self):
        try:
            self.close()
        except Exception:  # interpreter shutdown
            pass
