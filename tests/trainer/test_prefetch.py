"""The background prefetcher hands out exactly the loader's batches, in order or not."""

import torch

from gpt.config.training import DataConfig
from gpt.data import build_loaders
from gpt.trainer.prefetch import Prefetcher


def test_prefetched_batches_are_the_loaders(shards):
    loader, _ = build_loaders(DataConfig(path=str(shards)), seq_len=16, global_batch_size=8, micro_batch_size=2,
                              dp_rank=1, dp_size=2, seed=3)
    prefetch = Prefetcher(loader, 8, pin_memory=False)
    try:
        for consumed in (0, 8, 16, 40, 8, 16):  # in order (prefetched), then jumps (read on the spot)
            got, want = prefetch.get(consumed), loader.global_batch(consumed)
            assert len(got) == len(want) == 2
            for a, b in zip(got, want):
                assert all(torch.equal(x, y) for x, y in zip((a.tokens, a.labels, a.weights),
                                                             (b.tokens, b.labels, b.weights)))
    finally:
        prefetch.close()
