"""Token shards: preprocessing text into them, and loading packed, shuffled batches from them.

Imports no deepspeed or megatron, and torch only in `loader`. Names are imported on first use, so
preprocessing worker processes start without pyarrow or torch.
"""

import importlib

_LAZY = {
    "Batch": "gpt.data.loader", "BatchLoader": "gpt.data.loader", "build_loaders": "gpt.data.loader",
    "read_metadata": "gpt.data.format",
    "Tokenizer": "gpt.data.tokenizer", "ByteTokenizer": "gpt.data.tokenizer", "load_tokenizer": "gpt.data.tokenizer",
    "tokenizer_from_dict": "gpt.data.tokenizer",
    "HFTokenizer": "gpt.data.hf_tokenizer", "TiktokenTokenizer": "gpt.data.tiktoken_tokenizer",
}

__all__ = sorted(_LAZY)


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt.data' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_LAZY))
