"""Per-layer key/value cache for incremental decoding (one process, tensor size 1)."""

import torch


class KVCache:
    """Preallocated (b, nkv, max_len, hd) keys and values; `length` tokens are filled."""

    def __init__(self, max_len: int):
        self.max_len = max_len
        self.length = 0
        self.k = self.v = None

    def update(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b, n, t, hd = k.shape
        if self.k is None:
            self.k = k.new_empty(b, n, self.max_len, hd)
            self.v = v.new_empty(b, n, self.max_len, hd)
        end = self.length + t
        if end > self.max_len:
            raise ValueError(f"KV cache full: {end} > {self.max_len} tokens")
        self.k[:, :, self.length:end] = k
        self.v[:, :, self.length:end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]


def new_caches(n_layer: int, max_len: int) -> list[KVCache]:
    return [KVCache(max_len) for _ in range(n_layer)]
