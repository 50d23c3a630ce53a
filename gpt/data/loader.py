"""Global batches for the trainer: a pure function of (data, seed, consumed_samples).

`consumed_samples` (saved in checkpoints) is the whole data position: resuming continues with the
very next sample, and since global sample i is the same whatever the data-parallel size, a DP=2 run
sees exactly the samples of a DP=1 run, each rank taking its slice.
"""

from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from gpt.data.blend import BlendSchedule
from gpt.data.packing import VAL_SEED, PackedSamples, split_chunks
from gpt.data.shards import ShardSet
from gpt.data.tokenizer import Tokenizer
from gpt.errors import ConfigError, DataError


@dataclass
class Batch:
    tokens: torch.Tensor    # [b, s] int64 inputs
    labels: torch.Tensor    # [b, s] int64 targets (inputs shifted by one)
    weights: torch.Tensor   # [b, s] float32: micro-batch loss = sum(token_loss * weights)

    def to(self, device, non_blocking: bool = False) -> "Batch":
        return Batch(*(t.to(device, non_blocking=non_blocking) for t in (self.tokens, self.labels, self.weights)))


class BatchLoader:
    """Micro-batches of one data-parallel rank, for any global batch, in any order, any number of times."""

    def __init__(self, sources: Sequence[PackedSamples], weights: Optional[Sequence[float]], *, seq_len: int,
                 global_batch_size: int, micro_batch_size: int, dp_rank: int, dp_size: int):
        if dp_size < 1 or not 0 <= dp_rank < dp_size:
            raise ConfigError(f"data-parallel rank {dp_rank} is not in [0, {dp_size})")
        if micro_batch_size < 1 or global_batch_size % (micro_batch_size * dp_size):
            raise ConfigError(f"train.global_batch_size={global_batch_size} is not divisible by "
                              f"train.micro_batch_size*data_parallel={micro_batch_size}*{dp_size}")
        self.sources = list(sources)
        self.schedule = BlendSchedule(weights) if len(self.sources) > 1 else None
        self.seq_len = seq_len
        self.global_batch_size = global_batch_size
        self.micro_batch_size = micro_batch_size
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.grad_accum = global_batch_size // (micro_batch_size * dp_size)
        self.has_mask = any(s.has_mask for s in self.sources)
        self.samples_per_epoch = sum(s.samples_per_epoch for s in self.sources)
        """Packed samples in one pass over this split (for a blend: over every component once)."""

    @property
    def vocab_size(self) -> int:
        """Ids the shards may hold, special tokens included (from metadata; no tokenizer is loaded)."""
        return self.sources[0].shards.vocab_size

    @property
    def eod_id(self) -> int:
        return self.sources[0].shards.eod_id

    @property
    def sft_template(self) -> Optional[dict]:
        """The template that rendered instruction data (gpt-preprocess format=sft), else None."""
        return self.sources[0].shards.meta.get("source", {}).get("sft")

    @property
    def tokenizer(self) -> Tokenizer:
        """The tokenizer that wrote these shards (loaded on each access; keep it)."""
        return self.sources[0].shards.tokenizer()

    def samples(self, index: np.ndarray, with_mask: bool = False) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Global samples `index` [n]: tokens [n, seq_len+1] int64 (and loss mask, uint8)."""
        index = np.asarray(index, dtype=np.int64)
        if self.schedule is None:
            return self.sources[0].samples(index, with_mask)
        component, local = self.schedule.locate(index)
        tokens = np.empty((len(index), self.seq_len + 1), dtype=np.int64)
        mask = np.empty(tokens.shape, dtype=np.uint8) if with_mask else None
        for k in np.unique(component):
            sel = component == k
            t, m = self.sources[k].samples(local[sel], with_mask)
            tokens[sel] = t
            if with_mask:
                mask[sel] = m
        return tokens, mask

    def global_batch(self, consumed_samples: int) -> List[Batch]:
        """This rank's grad_accum micro-batches of global samples [consumed, consumed + global_batch_size).

        Micro-batch k on rank r holds global samples consumed + (k*dp_size + r)*micro + [0, micro).
        """
        if consumed_samples < 0:
            raise ValueError(f"consumed_samples={consumed_samples} must not be negative")
        micro, dp, ga = self.micro_batch_size, self.dp_size, self.grad_accum
        first = consumed_samples + (np.arange(ga)[:, None] * dp + self.dp_rank) * micro      # [ga, 1]
        mine = (first + np.arange(micro)).reshape(-1)                                       # [ga*micro]
        if self.has_mask:
            # Weights need the number of trained label positions in the whole global batch.
            everything = consumed_samples + np.arange(self.global_batch_size)
            tokens, mask = self.samples(everything, with_mask=True)
            label_mask = mask[:, 1:].astype(np.float32)                                     # [gbs, s]
            scale = ga * dp / max(float(label_mask.sum()), 1.0)
            rows = mine - consumed_samples
            tokens, weights = tokens[rows], label_mask[rows] * np.float32(scale)
        else:
            tokens, _ = self.samples(mine)
            weights = np.full((len(mine), self.seq_len), 1.0 / (micro * self.seq_len), dtype=np.float32)
        tokens = tokens.reshape(ga, micro, self.seq_len + 1)
        weights = weights.reshape(ga, micro, self.seq_len)
        return [Batch(tokens=torch.from_numpy(np.ascontiguousarray(tokens[k, :, :-1])),
                      labels=torch.from_numpy(np.ascontiguousarray(tokens[k, :, 1:])),
                      weights=torch.from_numpy(np.ascontiguousarray(weights[k])))
                for k in range(ga)]


def build_loaders(data_cfg, *, seq_len: int, global_batch_size: int, micro_batch_size: int, dp_rank: int,
                  dp_size: int, seed: int) -> Tuple[BatchLoader, Optional[BatchLoader]]:
    """(train, val) loaders of data_cfg (a gpt.config.training.DataConfig). val is None only when
    data.val_fraction == 0 and data.val_path is null."""
    if seq_len < 1:
        raise ConfigError(f"train.seq_len={seq_len} must be at least 1")
    weights, paths = _components(data_cfg)
    verify = data_cfg.verify
    sets = [ShardSet(p, verify=verify) for p in paths]
    for s in sets[1:]:
        _same_tokenizer(sets[0], s, "data.blend")
    train: List[PackedSamples] = []
    val: List[PackedSamples] = []
    for k, s in enumerate(sets):
        if data_cfg.val_path:
            train_chunks, val_chunks = np.arange(s.num_chunks), None
        else:
            train_chunks, val_chunks = split_chunks(s.num_chunks, data_cfg.val_fraction, where=str(s.directory))
        train.append(PackedSamples(s, train_chunks, seq_len, seed, stream=k))
        if val_chunks is not None and len(val_chunks):
            val.append(PackedSamples(s, val_chunks, seq_len, VAL_SEED, stream=k))
    common = dict(seq_len=seq_len, global_batch_size=global_batch_size, micro_batch_size=micro_batch_size,
                  dp_rank=dp_rank, dp_size=dp_size)
    train_loader = BatchLoader(train, weights, **common)
    if data_cfg.val_path:
        vs = ShardSet(data_cfg.val_path, verify=verify)
        _same_tokenizer(sets[0], vs, "data.val_path")
        return train_loader, BatchLoader([PackedSamples(vs, np.arange(vs.num_chunks), seq_len, VAL_SEED)], None, **common)
    return train_loader, (BatchLoader(val, weights, **common) if val else None)


def _components(data_cfg) -> Tuple[Optional[List[float]], List[str]]:
    if not data_cfg.blend:
        if not data_cfg.path:
            raise ConfigError("set data.path (token shards from gpt-preprocess) or data.blend")
        return None, [str(data_cfg.path)]
    weights, paths = [], []
    for i, entry in enumerate(data_cfg.blend):
        ok = isinstance(entry, (list, tuple)) and len(entry) == 2
        try:
            w = float(entry[0]) if ok else 0.0
        except (TypeError, ValueError):
            ok = False
        if not ok or not w > 0 or not isinstance(entry[1], str):
            raise ConfigError(f"data.blend[{i}]={entry!r} must be [weight > 0, path], "
                              f"e.g. data.blend=[[0.7,/path/a],[0.3,/path/b]]")
        weights.append(w)
        paths.append(entry[1])
    return weights, paths


def _same_tokenizer(a: ShardSet, b: ShardSet, key: str) -> None:
    def identity(s: ShardSet) -> dict:
        return {k: v for k, v in s.meta["tokenizer"].items() if k != "source"}

    if identity(a) != identity(b):
        raise DataError(f"{key}: {b.directory} was tokenised with {identity(b)} but {a.directory} with {identity(a)}; "
                        f"preprocess both with the same tokenizer")
