"""Typed configuration of the commands other than training: preprocess and generate."""

from dataclasses import dataclass, field
from typing import Any, List, Optional

from gpt.config.training import DataConfig


@dataclass(kw_only=True)
class TokenizerConfig:
    kind: str = "byte"
    """byte (ids 0-255 are bytes, specials after) | bpe (train one on the input) | hf (a tokenizer.json) | tiktoken (an encoding by name)."""
    vocab_size: int = 8192
    """Vocabulary size of a BPE trained on the input (tokenizer.kind=bpe)."""
    path: Optional[str] = None
    """tokenizer.json to use (tokenizer.kind=hf)."""
    name: Optional[str] = None
    """tiktoken encoding name, e.g. gpt2 or cl100k_base (tokenizer.kind=tiktoken), read from tiktoken's local cache (TIKTOKEN_CACHE_DIR); never downloaded."""
    eod_token: Optional[str] = None
    """End-of-document token of a bpe/hf tokenizer; null means <|endoftext|> for bpe, and for hf the first of <|endoftext|>, <|end_of_text|>, </s>, <eos> it has. Added to the vocabulary if missing."""


@dataclass(kw_only=True)
class PreprocessConfig:
    """What gpt-preprocess composes from conf/preprocess.yaml."""

    input: Any = None
    """A file, directory, glob, `stdlib` (this Python's standard library sources), or a list of those."""
    output: Optional[str] = None
    """Directory to write the token shards and metadata.json into."""
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)
    """How text becomes token ids."""
    text_key: str = "text"
    """Field holding the text in jsonl/parquet records."""
    split: str = "blank_lines"
    """How text files become documents: blank_lines (paragraphs) | file (one document per file). .py files are always one document per file."""
    shard_tokens: int = 64_000_000
    """Start a new shard file after the document that brings the current one to this many tokens."""
    workers: int = 1
    """Worker processes for reading and tokenising; the output is identical whatever the number."""
    task_bytes: int = 1_048_576
    """Input bytes per unit of work given to a worker (files are cut at document boundaries); the output does not depend on it."""
    on_error: str = "fail"
    """fail (stop at the first bad record, naming file:line) | skip (skip and report bad records)."""
    overwrite: bool = False
    """Replace an existing non-empty output directory."""


@dataclass(kw_only=True)
class GenerateConfig:
    """What gpt-generate composes from conf/generate.yaml."""

    checkpoint: Optional[str] = None
    """A run.dir (its latest checkpoint) or one checkpoint directory."""
    prompt: str = ""
    """Text to continue."""
    max_new_tokens: int = 200
    """Tokens to sample after the prompt."""
    temperature: float = 1.0
    """Softmax temperature; 0 is greedy decoding."""
    top_k: Optional[int] = None
    """Sample only among the k most likely tokens."""
    top_p: Optional[float] = None
    """Sample only among the smallest set of tokens whose probability reaches p (nucleus)."""
    seed: int = 1234
    """Sampling seed."""
    device: str = "auto"
    """auto | cpu | cuda."""
    stop: List[str] = field(default_factory=list)
    """Stop when any of these strings appears in the generated text."""
    prompt_file: Optional[str] = None
    """Continue every prompt of this file instead (one per line, or jsonl with a `prompt` field); prints one JSON line per prompt."""
    repetition_penalty: float = 1.0
    """Divide the logits of tokens already in the text by this (>1 discourages repeats; 1 is off)."""
    use_cache: bool = True
    """Reuse attention keys/values across steps (same output, much faster)."""


@dataclass(kw_only=True)
class EvaluateConfig:
    """What gpt-eval composes from conf/eval.yaml."""

    checkpoint: Optional[str] = None
    """A run.dir (its latest checkpoint), a checkpoint directory, or a `latest`/`best` pointer file."""
    data: DataConfig = field(default_factory=lambda: DataConfig(path=None))
    """The shards to evaluate on; null fields fall back to the checkpoint's training data config."""
    split: str = "val"
    """val (the held-out documents, as in training) | all (every document of data.path)."""
    batch_size: int = 8
    """Samples per forward pass."""
    iters: Optional[int] = None
    """Batches to evaluate; null is one pass over the split."""
    device: str = "auto"
    """auto | cpu | cuda."""
