"""Token shards: preprocessing text into them, and loading packed, shuffled batches from them.

Imports no deepspeed or megatron; torch only in `loader` (loaded on first use of a batch name), so
preprocessing workers start quickly.
"""

from gpt.data.format import read_metadata
from gpt.data.tokenizer import ByteTokenizer, Tokenizer, load_tokenizer, tokenizer_from_dict

_LAZY = {"Batch": "gpt.data.loader", "BatchLoader": "gpt.data.loader", "build_loaders": "gpt.data.loader",
         "HFTokenizer": "gpt.data.hf_tokenizer", "TiktokenTokenizer": "gpt.data.tiktoken_tokenizer"}

__all__ = ["Batch", "BatchLoader", "ByteTokenizer", "HFTokenizer", "TiktokenTokenizer", "Tokenizer",
           "build_loaders", "load_tokenizer", "read_metadata", "tokenizer_from_dict"]


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'gpt.data' has no attribute {name!r}")
