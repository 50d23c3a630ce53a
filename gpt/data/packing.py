"""Documents packed into training samples, reshuffled every epoch, addressed by sample index alone,
in memory that grows with the number of chunks (at most ~4M plus one per shard), never with the
number of documents or samples.

An epoch is one stream of tokens: the split's blocks (runs of consecutive chunks of one shard, about
1/128 of a window; chunks are runs of consecutive documents, see `ShardSet`) in an order shuffled by
(seed, epoch), grouped into windows of about `window_samples` samples' worth of tokens (~128
blocks). Inside a window the documents of all its chunks are shuffled again and concatenated, each
followed by the end-of-document token. Packed sample s is stream tokens
[s*seq_len, s*seq_len + seq_len + 1), so consecutive samples overlap by one token and every
stream token after the first is a label exactly once per epoch. Samples are visited window after
window, in a seeded permutation within each window: a global batch mixes samples from every chunk
of a window, i.e. from ~window_samples*seq_len tokens drawn from all over the corpus. Only the
chunk order of an epoch (O(chunks)) and the document layout and sample order of the windows in use
(O(window)) are ever built. Everything is a pure function of (seed, sample index): there is no
iterator state to save, and the data-parallel layout never enters.
"""

from collections import OrderedDict
from typing import Optional, Tuple

import numpy as np

from gpt.data.shards import ShardSet
from gpt.errors import DataError

VAL_SEED = 0x5EED
"""Seeds the choice and order of validation documents: the validation set must not move with train.seed."""
WINDOW_SAMPLES = 1 << 18
"""Samples per shuffle window (at seq_len 2048: 537M tokens, a few MB of layout)."""
BLOCKS_PER_WINDOW = 128
"""The epoch shuffles blocks of consecutive chunks of one shard, of about 1/128 of a window (4M tokens
at seq_len 2048): a window reads ~128 shards whatever the size of the corpus and of its chunks."""
_CACHED_WINDOWS = 2
_CACHED_EPOCHS = 2


def split_chunks(num_chunks: int, val_fraction: float, *, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(train chunk ids, val chunk ids): a fixed pseudo-random val_fraction of the chunks (at least one).

    Chunks are single documents for sets of up to 4M documents, so this is a split by document."""
    if val_fraction <= 0:
        return np.arange(num_chunks, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_val = max(1, int(round(val_fraction * num_chunks)))
    if num_chunks - n_val < 1:
        raise DataError(f"{where} has {num_chunks} document(s) (chunks): holding out data.val_fraction={val_fraction} "
                        f"leaves none to train on; add documents, set data.val_path, or data.val_fraction=0")
    chosen = np.random.default_rng(VAL_SEED).permutation(num_chunks)[:n_val]
    is_val = np.zeros(num_chunks, dtype=bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class _Epoch:
    """Chunk order and window bounds of one epoch."""

    def __init__(self, order: np.ndarray, starts: np.ndarray, bounds: np.ndarray, sample_starts: np.ndarray):
        self.order = order                  # [chunks] chunk ids in stream order
        self.starts = starts                # [chunks + 1] stream position of each chunk
        self.bounds = bounds                # [windows + 1] first chunk (position in order) of each window
        self.window_starts = starts[bounds]  # [windows + 1] stream position of each window
        self.sample_starts = sample_starts  # [windows + 1] first sample (in epoch order) of each window


class _Window:
    """Documents of one window in their shuffled order: where each starts in the stream and lives on disk."""

    def __init__(self, starts: np.ndarray, shard: np.ndarray, elem: np.ndarray, length: np.ndarray):
        self.starts = starts    # [docs + 1] stream position of each document (its EOD at starts[i+1]-1)
        self.shard = shard      # [docs] shard index
        self.elem = elem        # [docs] element index of its first token within the shard
        self.length = length    # [docs] tokens (without EOD)


class PackedSamples:
    """Samples of seq_len+1 tokens packed from chunks `chunks` of `shards`."""

    def __init__(self, shards: ShardSet, chunks: np.ndarray, seq_len: int, seed: int, stream: int = 0, *,
                 window_samples: int = WINDOW_SAMPLES):
        if len(chunks) == 0:
            raise DataError(f"{shards.directory}: no documents to sample from")
        self.shards = shards
        self.chunks = np.asarray(chunks, dtype=np.int64)
        self.seq_len = seq_len
        # Stream tokens of each chunk: its tokens plus one EOD per document.
        self.chunk_len = shards.chunk_tokens[self.chunks] + shards.chunk_docs(self.chunks)        # [chunks]
        self.stream_tokens = int(self.chunk_len.sum())                                            # L
        # A split shorter than one sample still yields one sample (the stream repeated): never empty.
        self.samples_per_epoch = max(1, (self.stream_tokens - 1) // seq_len)
        self.window_tokens = max(1, window_samples) * seq_len
        # Blocks: runs of consecutive chunks of one shard, cut every block_tokens of stream.
        block_tokens = max(1, self.window_tokens // BLOCKS_PER_WINDOW)
        shard = shards.chunk_shard(self.chunks)
        before = np.cumsum(self.chunk_len) - self.chunk_len                 # stream tokens before each chunk
        first = np.ones(len(shard), dtype=bool)
        first[1:] = shard[1:] != shard[:-1]
        runs = np.flatnonzero(first)
        within = before - np.repeat(before[runs], np.diff(np.concatenate([runs, [len(shard)]])))
        key = within // block_tokens
        new = first.copy()
        new[1:] |= key[1:] != key[:-1]
        self.block_start = np.concatenate([np.flatnonzero(new), [len(shard)]])  # [blocks + 1] into chunks
        self.block_len = np.add.reduceat(self.chunk_len, self.block_start[:-1])   # [blocks] stream tokens
        del shard, before, first, within, key, new
        self._entropy = [seed % 2**63, stream]
        self._epochs: "OrderedDict[int, _Epoch]" = OrderedDict()
        self._windows: "OrderedDict[tuple, _Window]" = OrderedDict()
        self._orders: "OrderedDict[tuple, np.ndarray]" = OrderedDict()
        self._span = np.arange(seq_len + 1)
        self._wraps = self.samples_per_epoch * seq_len >= self.stream_tokens

    @property
    def has_mask(self) -> bool:
        return self.shards.has_mask

    def _epoch(self, epoch: int) -> _Epoch:
        e = self._epochs.get(epoch)
        if e is None:
            rng = np.random.default_rng(self._entropy + [epoch])
            blocks = rng.permutation(len(self.block_len))
            counts = np.diff(self.block_start)[blocks]                       # chunks of each block, in order
            ends = np.cumsum(counts)
            index = np.repeat(self.block_start[blocks] - (ends - counts), counts) + np.arange(int(ends[-1]))
            starts = np.zeros(len(index) + 1, dtype=np.int64)
            np.cumsum(self.chunk_len[index], out=starts[1:])
            # Window k takes the blocks that start in stream [k*W, (k+1)*W); a huge block makes its own.
            block_starts = np.concatenate([[0], np.cumsum(self.block_len[blocks])])
            cuts = np.searchsorted(block_starts[:-1], np.arange(0, self.stream_tokens, self.window_tokens), side="left")
            bounds = np.concatenate([[0], ends])[np.unique(np.concatenate([cuts, [len(blocks)]]))]
            sample_starts = np.minimum(-(-starts[bounds] // self.seq_len), self.samples_per_epoch)
            sample_starts[-1] = self.samples_per_epoch
            e = _Epoch(self.chunks[index], starts, bounds, sample_starts)
            del index, blocks, counts, ends, block_starts
            self._epochs[epoch] = e
            while len(self._epochs) > _CACHED_EPOCHS:
                self._epochs.popitem(last=False)
        return e

    def _sample_order(self, epoch: int, k: int, n: int) -> np.ndarray:
        key = (epoch, k)
        perm = self._orders.get(key)
        if perm is None:
            perm = np.random.default_rng(self._entropy + [epoch, k, 0]).permutation(n)
            self._orders[key] = perm
            while len(self._orders) > _CACHED_WINDOWS:
                self._orders.popitem(last=False)
        return perm

    def _window(self, epoch: int, k: int) -> _Window:
        key = (epoch, k)
        w = self._windows.get(key)
        if w is None:
            e = self._epoch(epoch)
            chunks = e.order[e.bounds[k]:e.bounds[k + 1]]
            first, count = self.shards.chunk_first_doc(chunks), self.shards.chunk_docs(chunks)
            docs = np.repeat(first - np.concatenate([[0], np.cumsum(count)[:-1]]), count) + np.arange(int(count.sum()))
            docs = docs[np.random.default_rng(self._entropy + [epoch, k, 1]).permutation(len(docs))]
            shard, elem, length = self.shards.documents(docs)
            starts = np.empty(len(docs) + 1, dtype=np.int64)
            starts[0] = e.window_starts[k]
            np.cumsum(length + 1, out=starts[1:])
            starts[1:] += e.window_starts[k]
            if starts[-1] != e.window_starts[k + 1]:
                raise DataError(f"{self.shards.directory}: the chunk index does not match the shards' documents "
                                f"({starts[-1] - starts[0]} stream tokens in window {k}, the index says "
                                f"{e.window_starts[k + 1] - e.window_starts[k]}); re-run gpt-preprocess")
            w = _Window(starts, shard, elem, length)
            self._windows[key] = w
            while len(self._windows) > _CACHED_WINDOWS:
                self._windows.popitem(last=False)
        return w

    def samples(self, index: np.ndarray, with_mask: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Tokens [n, seq_len+1] int64 of samples `index` [n] (and their loss mask [n, seq_len+1] uint8)."""
        index = np.asarray(index, dtype=np.int64)
        epochs = index // self.samples_per_epoch
        lo, hi = int(epochs.min(initial=0)), int(epochs.max(initial=0))
        if lo == hi:  # the usual case: one epoch
            return self._samples_of_epoch(lo, index - lo * self.samples_per_epoch, with_mask)
        width = self.seq_len + 1
        tokens = np.empty((len(index), width), dtype=np.int64)
        mask = np.empty((len(index), width), dtype=np.uint8) if with_mask else None
        for epoch in np.unique(epochs).tolist():  # more than one when a batch straddles the end of an epoch
            sel = epochs == epoch
            t, m = self._samples_of_epoch(epoch, index[sel] - epoch * self.samples_per_epoch, with_mask)
            tokens[sel] = t
            if with_mask:
                mask[sel] = m
        return tokens, mask

    def _samples_of_epoch(self, epoch: int, within: np.ndarray, with_mask: bool):
        e = self._epoch(epoch)
        # Sample `within` of the epoch -> packed sample p of the stream, shuffled inside its window.
        k = np.searchsorted(e.sample_starts, within, side="right") - 1
        packed = np.empty(len(within), dtype=np.int64)
        windows = _values(k)
        for window in windows:
            sel = slice(None) if len(windows) == 1 else k == window
            lo, hi = int(e.sample_starts[window]), int(e.sample_starts[window + 1])
            packed[sel] = lo + self._sample_order(epoch, window, hi - lo)[within[sel] - lo]
        pos = (packed[:, None] * self.seq_len + self._span).reshape(-1)                  # [n*(seq_len+1)]
        if self._wraps:
            pos %= self.stream_tokens
        out = np.full(len(pos), self.shards.eod_id, dtype=self.shards.dtype)
        mask = np.ones(len(pos), dtype=np.uint8) if with_mask else None
        in_window = np.searchsorted(e.window_starts, pos, side="right") - 1
        windows = _values(in_window)
        for window in windows:
            sel = np.arange(len(pos)) if len(windows) == 1 else np.flatnonzero(in_window == window)
            self._read(self._window(epoch, window), pos[sel], sel, out, mask)
        tokens = out.astype(np.int64).reshape(len(within), self.seq_len + 1)
        # EOD tokens inserted by packing have mask 1: learn to end a document (fine-tuning: to stop)
        return tokens, None if mask is None else mask.reshape(tokens.shape)

    def _read(self, w: _Window, pos: np.ndarray, at: np.ndarray, out: np.ndarray, mask: Optional[np.ndarray]) -> None:
        """out[at] = stream tokens at positions pos (sorted runs of consecutive positions), read in runs."""
        slot = np.searchsorted(w.starts, pos, side="right") - 1                     # document in window order
        offset = pos - w.starts[slot]
        real = offset < w.length[slot]                                                # else: its EOD
        slot, offset, pos, at = slot[real], offset[real], pos[real], at[real]
        if not len(slot):
            return
        # A run: consecutive positions of one document that land next to each other in `out`.
        new = np.ones(len(slot), dtype=bool)
        new[1:] = (slot[1:] != slot[:-1]) | (pos[1:] != pos[:-1] + 1) | (at[1:] != at[:-1] + 1)
        first = np.flatnonzero(new)
        length = np.diff(np.concatenate([first, [len(slot)]]))
        docs = slot[first]
        self.shards.read(w.shard[docs], w.elem[docs] + offset[first], length, at[first], out, mask)


def _values(a: np.ndarray) -> list:
    """The distinct values of an integer array, cheaply when there is only one (the usual case)."""
    if not len(a):
        return []
    lo, hi = int(a.min()), int(a.max())
    return [lo] if lo == hi else np.unique(a).tolist()
