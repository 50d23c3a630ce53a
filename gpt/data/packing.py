"""Documents packed into training samples, reshuffled every epoch, addressed by sample index alone.

Within an epoch the documents (in an order shuffled by seed and epoch) are concatenated, each
followed by the end-of-document token, into one stream of L tokens; packed sample s is stream tokens
[s*seq_len, s*seq_len + seq_len + 1), so consecutive samples overlap by one token and every stream
token after the first is a label exactly once. The samples of an epoch are then visited in a second
seeded permutation. Everything is a pure function of (seed, sample index): there is no iterator
state to save, and the data-parallel layout never enters.
"""

from typing import Optional, Tuple

import numpy as np

from gpt.data.shards import ShardSet
from gpt.errors import DataError

VAL_SEED = 0x5EED
"""Seeds the choice and order of validation documents: the validation set must not move with train.seed."""


def split_documents(num_documents: int, val_fraction: float, *, where: str) -> Tuple[np.ndarray, np.ndarray]:
    """(train ids, val ids): a fixed pseudo-random val_fraction of the documents (at least one)."""
    if val_fraction <= 0:
        return np.arange(num_documents, dtype=np.int64), np.zeros(0, dtype=np.int64)
    n_val = max(1, int(round(val_fraction * num_documents)))
    if num_documents - n_val < 1:
        raise DataError(f"{where} has {num_documents} document(s): holding out data.val_fraction={val_fraction} "
                        f"leaves none to train on; add documents, set data.val_path, or data.val_fraction=0")
    chosen = np.random.default_rng(VAL_SEED).permutation(num_documents)[:n_val]
    is_val = np.zeros(num_documents, dtype=bool)
    is_val[chosen] = True
    return np.flatnonzero(~is_val), np.flatnonzero(is_val)


class PackedSamples:
    """Samples of seq_len+1 tokens packed from documents `docs` of `shards`."""

    def __init__(self, shards: ShardSet, docs: np.ndarray, seq_len: int, seed: int, stream: int = 0):
        if len(docs) == 0:
            raise DataError(f"{shards.directory}: no documents to sample from")
        self.shards = shards
        self.docs = np.asarray(docs, dtype=np.int64)
        self.seq_len = seq_len
        self.stream_tokens = int(shards.doc_len[self.docs].sum()) + len(self.docs)   # L, with one EOD per document
        # A split shorter than one sample still yields one sample (the stream repeated): never empty.
        self.samples_per_epoch = max(1, (self.stream_tokens - 1) // seq_len)
        self._entropy = [seed % 2**63, stream]
        self._epochs: dict = {}
        self._window = np.arange(seq_len + 1)
        self._wraps = self.samples_per_epoch * seq_len >= self.stream_tokens

    @property
    def has_mask(self) -> bool:
        return self.shards.has_mask

    def _epoch(self, epoch: int):
        """Stream start [docs+1], address [docs] and length [docs] of each document in this epoch's
        order, and the epoch's sample permutation [samples_per_epoch]."""
        if epoch not in self._epochs:
            rng = np.random.default_rng(self._entropy + [epoch])
            order = self.docs[rng.permutation(len(self.docs))]
            lengths = self.shards.doc_len[order]
            starts = np.zeros(len(order) + 1, dtype=np.int64)
            np.cumsum(lengths + 1, out=starts[1:])
            perm = rng.permutation(self.samples_per_epoch)
            if len(self._epochs) >= 2:  # keep two: a batch rarely spans more (only splits smaller than a batch)
                self._epochs.pop(min(self._epochs))
            self._epochs[epoch] = (starts, self.shards.doc_start[order], lengths, perm)
        return self._epochs[epoch]

    def samples(self, index: np.ndarray, with_mask: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Tokens [n, seq_len+1] int64 of samples `index` [n] (and their loss mask [n, seq_len+1] uint8)."""
        index = np.asarray(index, dtype=np.int64)
        epochs = index // self.samples_per_epoch
        lo, hi = int(epochs.min(initial=0)), int(epochs.max(initial=0))
        if lo == hi:
            return self._samples_of_epoch(lo, index - lo * self.samples_per_epoch, with_mask)
        width = self.seq_len + 1
        tokens = np.empty((len(index), width), dtype=np.int64)
        mask = np.empty((len(index), width), dtype=np.uint8) if with_mask else None
        for epoch in range(lo, hi + 1):  # a batch that straddles the end of an epoch
            sel = epochs == epoch
            tokens[sel], m = self._samples_of_epoch(epoch, index[sel] - epoch * self.samples_per_epoch, with_mask)
            if with_mask:
                mask[sel] = m
        return tokens, mask

    def _samples_of_epoch(self, epoch: int, within: np.ndarray, with_mask: bool):
        starts, addresses, lengths, perm = self._epoch(epoch)
        pos = perm[within][:, None] * self.seq_len + self._window                     # [k, seq_len+1]
        if self._wraps:
            pos %= self.stream_tokens
        slot = np.searchsorted(starts, pos, side="right") - 1                            # document in epoch order
        offset = pos - starts[slot]
        eod = offset == lengths[slot]
        addr = addresses[slot] + offset
        addr[eod] = 0
        tokens = np.empty(pos.shape, dtype=np.int64)
        mask = np.empty(pos.shape, dtype=np.uint8) if with_mask else None
        self.shards.gather(addr.reshape(-1), tokens.reshape(-1), None if mask is None else mask.reshape(-1))
        tokens[eod] = self.shards.eod_id
        if with_mask:
            mask[eod] = 1  # learn to end a document (for fine-tuning: to stop after the response)
        return tokens, mask
