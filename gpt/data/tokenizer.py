"""Text <-> token ids, and how a tokenizer is recorded in (and rebuilt from) shard metadata.

Preprocessing, training and generation must use the very same tokenizer; the shards' metadata.json
(plus tokenizer.json for BPE kinds) is the single record of it, and a checkpoint keeps a copy made
with `to_dict()` and `save_files()`.
"""

import re
from pathlib import Path
from typing import Iterable, List, Optional, Sequence

import numpy as np

from gpt.errors import DataError

KINDS = ("byte", "bpe", "hf", "tiktoken")
SEGMENT_CHARS = 1 << 20
"""Documents longer than twice this are encoded in pieces of about this many characters (memory
stays bounded whatever a document's size, and the pieces are encoded in parallel)."""
_CUT = re.compile(r"(?<=\S)\s(?=\S)")
_CUT_CONTEXT = 1024
_CUT_TRIES = 16
LOCATION_KEYS = ("source", "file")
"""Keys of a tokenizer's record that say where its files were read from, not what it is."""


class Tokenizer:
    """Base of every tokenizer kind. `encode` never emits special tokens; packing inserts `eod_id`."""

    kind: str
    vocab_size: int
    """Number of ids, special tokens included (the model's embedding needs at least this many rows)."""
    eod_id: int
    """End-of-document token inserted between packed documents."""

    def encode(self, text: str) -> list[int]:
        return self.encode_batch([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        raise NotImplementedError

    def encode_arrays(self, texts: Sequence[str], dtype) -> tuple[np.ndarray, np.ndarray]:
        """All documents' ids concatenated [sum(lengths)] and the per-document lengths [len(texts)].

        This is what shard writing consumes; kinds override it to skip Python lists of ints.
        """
        ids = self.encode_batch(texts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        flat = np.fromiter((i for x in ids for i in x), dtype=dtype, count=int(lengths.sum()))
        return flat, lengths

    def decode(self, ids: Iterable[int]) -> str:
        raise NotImplementedError

    def narrowest_dtype(self, dtype) -> np.dtype:
        """The narrowest type holding every id `encode` emits, no wider than `dtype` (the shards'): a
        preprocessing worker's ids travel in it and widen as the writer copies them into a batch."""
        return np.dtype(dtype)

    def segments(self, text: str, size: int = SEGMENT_CHARS) -> List[str]:
        """`text` cut into pieces of about `size` characters whose encodings, joined, are the encoding of
        `text` (see `cuts`)."""
        cuts = self.cuts(text, size)
        return [text[a:b] for a, b in zip(cuts[:-1], cuts[1:])]

    def cuts(self, text: str, size: int = SEGMENT_CHARS) -> List[int]:
        """Where to cut `text` into pieces of about `size` characters (0 and len(text) included). A cut is
        made only at a whitespace character between two others, and only where encoding the
        surrounding 2 KB whole and in two halves gives the same ids (so the tokenizer's own
        pre-tokenizer splits there); where no such place is found the piece grows."""
        if len(text) <= 2 * size:
            return [0, len(text)]
        cuts = [0]
        pos = size
        while pos < len(text) - size:
            cut = self._safe_cut(text, pos)
            if cut is None:
                pos += size
            else:
                cuts.append(cut)
                pos = cut + size
        cuts.append(len(text))
        return cuts

    def _safe_cut(self, text: str, pos: int) -> Optional[int]:
        for i, m in enumerate(_CUT.finditer(text, pos, min(len(text), pos + (1 << 16)))):
            if i == _CUT_TRIES:
                break
            b = m.start()
            left, right = text[max(0, b - _CUT_CONTEXT):b], text[b:b + _CUT_CONTEXT]
            whole, a, c = self.encode_batch([left + right, left, right])
            if list(whole) == list(a) + list(c):
                return b
        return None

    def to_dict(self) -> dict:
        return {"kind": self.kind, "vocab_size": self.vocab_size, "eod_id": self.eod_id}

    def save_files(self, directory) -> None:
        """Write the files `tokenizer_from_dict` needs beside the dict (none for this kind)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.to_dict()})"


def identity(d: dict) -> dict:
    """What defines a tokenizer, from its record: kind, sizes, special tokens and, for a tokenizer.json, the
    sha256 of its content; not where it was read from (the same tokenizer beside shards and in a checkpoint)."""
    return {k: v for k, v in d.items() if k not in LOCATION_KEYS}


def as_id_array(ids) -> np.ndarray:
    """Lists, iterables, numpy arrays and torch tensors alike, as int64 [n]."""
    if hasattr(ids, "detach"):
        ids = ids.detach().cpu().numpy()
    elif not hasattr(ids, "__len__"):  # generators, map objects
        ids = list(ids)
    return np.asarray(ids, dtype=np.int64).reshape(-1)


class ByteTokenizer(Tokenizer):
    """Ids 0-255 are the UTF-8 bytes of the text; 256 is end-of-document. No files, no training."""

    kind = "byte"
    vocab_size = 257
    eod_id = 256

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def encode_arrays(self, texts: Sequence[str], dtype) -> tuple[np.ndarray, np.ndarray]:
        encoded = [t.encode("utf-8") for t in texts]
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        return np.frombuffer(b"".join(encoded), dtype=np.uint8).astype(dtype, copy=False), lengths

    def narrowest_dtype(self, dtype) -> np.dtype:
        """Bytes: encode never emits 256 (end-of-document is packing's), so uint8 whatever the shards hold
        (half the bytes through a worker's pipe; no widening pass in the worker)."""
        return np.dtype(np.uint8)

    def cuts(self, text: str, size: int = SEGMENT_CHARS) -> List[int]:
        """Bytes are bytes: any cut is exact."""
        return list(range(0, len(text), size)) + [len(text)] if text else [0, 0]

    def decode(self, ids: Iterable[int]) -> str:
        a = as_id_array(ids)
        return a[(a >= 0) & (a < 256)].astype(np.uint8).tobytes().decode("utf-8", errors="replace")


def tokenizer_from_dict(d: dict, base_dir) -> Tokenizer:
    """Rebuild what `to_dict()` described, reading its files (tokenizer.json) from base_dir.

    base_dir is a shard directory or a checkpoint directory holding a copy made with `save_files`.
    """
    if not isinstance(d, dict) or d.get("kind") not in KINDS:
        kind = d.get("kind") if isinstance(d, dict) else d
        raise DataError(f"tokenizer kind {kind!r} (in {base_dir}) is not one of {'|'.join(KINDS)}")
    kind = d["kind"]
    if kind == "byte":
        tok: Tokenizer = ByteTokenizer()
    elif kind in ("bpe", "hf"):
        from gpt.data.hf_tokenizer import HFTokenizer

        tok = HFTokenizer.from_file(_tokenizer_file(Path(base_dir), d.get("file", "tokenizer.json")), kind=kind,
                                    eod_token=d.get("eod_token"))
    else:
        from gpt.data.tiktoken_tokenizer import TiktokenTokenizer

        tok = TiktokenTokenizer(d.get("name"))
    for key in ("vocab_size", "eod_id", "sha256"):
        if key in d and d[key] != getattr(tok, key, None):
            raise DataError(f"the {kind} tokenizer rebuilt from {base_dir} has {key}={getattr(tok, key, None)}, "
                            f"but its metadata says {d[key]}; the tokenizer files do not belong to these shards")
    return tok


def _tokenizer_file(base_dir: Path, name) -> Path:
    """The tokenizer file a record names: a regular file inside base_dir, never a path out of it."""
    from gpt.paths import member_file

    try:
        return member_file(base_dir, name, where=f"the tokenizer record of {base_dir}", error=DataError)
    except FileNotFoundError:
        return base_dir / name  # HFTokenizer.from_file says it is missing


def load_tokenizer(shard_dir) -> Tokenizer:
    """The tokenizer that wrote the shards in shard_dir (from its metadata.json)."""
    from gpt.data.format import read_metadata

    return tokenizer_from_dict(read_metadata(shard_dir)["tokenizer"], shard_dir)
