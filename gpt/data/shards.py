"""A shard directory opened for random access: memory-mapped Arrow, checked on open.

The Arrow list offsets are the document index (written once at preprocessing, memory-mapped here),
so opening costs O(documents) over the offsets and never reads the tokens. Every shard is checked
against metadata.json (size, schema, version, row and token counts); the sha256 of every byte is
checked only on request (`verify=True`) because it reads the whole corpus.
"""

from pathlib import Path
from typing import List, Optional

import numpy as np
import pyarrow as pa

from gpt.data.format import DTYPES, LOSS_MASK, SCHEMA_METADATA, TOKENS, read_metadata
from gpt.data.tokenizer import Tokenizer, tokenizer_from_dict
from gpt.data.writer import file_sha256
from gpt.errors import DataError


class ShardSet:
    """All documents of a shard directory as one address space of tokens.

    Document d occupies global token addresses [doc_start[d], doc_start[d] + doc_len[d]).
    """

    def __init__(self, directory, *, verify: bool = False):
        self.directory = Path(directory)
        self.meta = read_metadata(self.directory)
        self.dtype = self.meta["dtype"]
        self.eod_id = int(self.meta["tokenizer"]["eod_id"])
        self.vocab_size = int(self.meta["tokenizer"]["vocab_size"])
        self._values: List[np.ndarray] = []          # per record batch: tokens [n]
        self._masks: List[Optional[np.ndarray]] = []  # per record batch: loss mask [n] or None
        lengths: List[np.ndarray] = []
        for entry in self.meta["shards"]:
            lengths.extend(self._open(entry, verify))
        self.has_mask = any(m is not None for m in self._masks)
        self.doc_len = np.concatenate(lengths) if lengths else np.zeros(0, np.int64)   # [docs] int64
        self.doc_start = np.zeros(len(self.doc_len) + 1, dtype=np.int64)              # [docs + 1]
        np.cumsum(self.doc_len, out=self.doc_start[1:])
        batch_sizes = np.array([len(v) for v in self._values], dtype=np.int64)
        self._batch_start = np.concatenate([[0], np.cumsum(batch_sizes)])              # [batches + 1]
        if self.doc_start[-1] != self.meta["num_tokens"]:
            raise DataError(f"{self.directory}: the shards hold {self.doc_start[-1]} tokens but metadata.json says "
                            f"{self.meta['num_tokens']}; re-run gpt-preprocess")

    @property
    def num_documents(self) -> int:
        return len(self.doc_len)

    def tokenizer(self) -> Tokenizer:
        return tokenizer_from_dict(self.meta["tokenizer"], self.directory)

    def _open(self, entry: dict, verify: bool) -> List[np.ndarray]:
        path = self.directory / entry["file"]
        fix = "re-run gpt-preprocess to rewrite it"
        if not path.is_file():
            raise DataError(f"{path}: shard listed in metadata.json is missing; {fix}")
        size = path.stat().st_size
        if size != entry["bytes"]:
            raise DataError(f"{path}: shard is {size} bytes but metadata.json says {entry['bytes']} "
                            f"(truncated or modified); {fix}")
        if verify and file_sha256(path, fsync=False) != entry["sha256"]:
            raise DataError(f"{path}: sha256 does not match metadata.json (the shard is corrupt); {fix}")
        try:
            reader = pa.ipc.open_file(pa.memory_map(str(path), "r"))
            batches = [reader.get_batch(i) for i in range(reader.num_record_batches)]
        except (pa.ArrowException, OSError) as e:
            raise DataError(f"{path}: not a readable Arrow IPC file ({str(e).splitlines()[0]}); {fix}") from None
        self._check_schema(path, reader.schema, fix)
        lengths, rows, ntokens = [], 0, 0
        for batch in batches:
            try:
                batch.validate()
                tokens = batch.column(TOKENS)
                offsets = tokens.offsets.to_numpy()
                values = tokens.values.to_numpy(zero_copy_only=True)
                mask = None
                if LOSS_MASK in batch.schema.names:
                    mask = batch.column(LOSS_MASK).values.to_numpy(zero_copy_only=True)
                    if not np.array_equal(batch.column(LOSS_MASK).offsets.to_numpy(), offsets):
                        raise DataError(f"{path}: loss_mask rows differ in length from tokens rows; {fix}")
            except pa.ArrowException as e:
                raise DataError(f"{path}: corrupt record batch ({str(e).splitlines()[0]}); {fix}") from None
            if len(offsets) != len(tokens) + 1 or offsets[0] != 0 or offsets[-1] != len(values) \
                    or np.any(offsets[1:] < offsets[:-1]):
                raise DataError(f"{path}: corrupt list offsets in the tokens column; {fix}")
            self._values.append(values)
            self._masks.append(mask)
            lengths.append(np.diff(offsets).astype(np.int64))
            rows += len(tokens)
            ntokens += len(values)
        if rows != entry["documents"] or ntokens != entry["tokens"]:
            raise DataError(f"{path}: holds {rows} documents and {ntokens} tokens but metadata.json says "
                            f"{entry['documents']} and {entry['tokens']}; {fix}")
        return lengths

    def _check_schema(self, path: Path, schema: pa.Schema, fix: str) -> None:
        meta = schema.metadata or {}
        for key, want in SCHEMA_METADATA.items():
            if meta.get(key) != want:
                raise DataError(f"{path}: schema metadata {key.decode()}={meta.get(key, b'(missing)').decode(errors='replace')}, "
                                f"expected {want.decode()}; {fix}")
        want_type = pa.list_(pa.field("item", DTYPES[self.dtype], nullable=False))
        if TOKENS not in schema.names or not schema.field(TOKENS).type.equals(want_type, check_metadata=False) \
                or not pa.types.is_list(schema.field(TOKENS).type):
            found = schema.field(TOKENS).type if TOKENS in schema.names else "(missing)"
            raise DataError(f"{path}: column tokens has type {found}, expected list<{self.dtype}> as metadata.json says; {fix}")
        if LOSS_MASK in schema.names and schema.field(LOSS_MASK).type.value_type != pa.uint8():
            raise DataError(f"{path}: column loss_mask has type {schema.field(LOSS_MASK).type}, expected list<uint8>; {fix}")

    def gather(self, addr: np.ndarray, out: np.ndarray, mask_out: Optional[np.ndarray] = None) -> None:
        """out[i] = token at global address addr[i] (and mask_out[i] its loss mask, 1 without a mask column)."""
        if len(self._values) == 1:
            batch, lo, hi = None, 0, 0
        else:
            batch = np.searchsorted(self._batch_start, addr, side="right") - 1
            lo, hi = int(batch.min(initial=0)), int(batch.max(initial=0))
        # Record batches are as large as shards by default, so a global batch touches only a few.
        for b in ([lo] if lo == hi else np.unique(batch)):
            sel = slice(None) if lo == hi else batch == b
            local = addr[sel] - self._batch_start[b]
            out[sel] = self._values[b][local]
            if mask_out is not None:
                mask_out[sel] = 1 if self._masks[b] is None else self._masks[b][local]

    def document(self, d: int) -> np.ndarray:
        """Token ids of document d (a copy) [doc_len[d]]."""
        addr = np.arange(self.doc_start[d], self.doc_start[d + 1], dtype=np.int64)
        out = np.empty(len(addr), dtype=np.int64)
        self.gather(addr, out)
        return out
