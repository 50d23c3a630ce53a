"""What one preprocessing worker does with a task: read its documents, tokenise them in batches (the
Rust encoders of `tokenizers` spread a batch over threads), and send back compact arrays in messages
of bounded size; a huge document is encoded in pieces (`Tokenizer.segments`) and sent in parts.

Module state holds the worker's tokenizer, loaded once per process (or thread pool) by `init`.
"""

import os
from dataclasses import dataclass, field
from typing import Iterator, List, Optional

import numpy as np

from gpt.data.inputs import Task
from gpt.data.readers import Problem, read_task
from gpt.data.tokenizer import SEGMENT_CHARS, Tokenizer, tokenizer_from_dict

MESSAGE_CHARS = 1 << 22
"""Characters of text encoded and sent together (4M: one message per default task of 1 MB)."""


@dataclass
class TaskSummary:
    documents: int = 0
    tokens: int = 0
    newlines: int = 0
    empty: int = 0
    nbytes: int = 0
    problems: List[Problem] = field(default_factory=list)


@dataclass
class Tokens:
    """Documents' ids: tokens [sum(lengths)], lengths [documents]; open_end: the last one goes on in the next message."""

    tokens: np.ndarray
    lengths: np.ndarray
    open_end: bool = False


_tokenizer: Optional[Tokenizer] = None
_options: dict = {}


def init(tokenizer_dict: dict, tokenizer_dir: str, dtype: str, text_key: str, stop_at_problem: bool,
         tokenizer: Optional[Tokenizer] = None, threads: Optional[int] = None) -> None:
    """Load the tokenizer; `threads` caps the encoder's threads (a worker process's share of the CPUs)."""
    global _tokenizer, _options
    if threads:
        # Read by the Rust thread pool of `tokenizers` when it starts, i.e. at the first batch.
        os.environ["RAYON_NUM_THREADS"] = str(threads)
    _tokenizer = tokenizer or tokenizer_from_dict(tokenizer_dict, tokenizer_dir)
    if hasattr(_tokenizer, "threads"):
        _tokenizer.threads = 1  # tiktoken: one thread per worker; workers=N is the parallelism
    _options = {"dtype": _tokenizer.narrowest_dtype(dtype), "text_key": text_key, "stop": stop_at_problem}


def encode_task(task: Task) -> Iterator[object]:
    """Tokens messages, then the task's TaskSummary."""
    docs = read_task(task, _options["text_key"], _options["stop"])
    summary = TaskSummary(newlines=docs.newlines, empty=docs.empty, nbytes=task.nbytes, problems=docs.problems)
    if docs.problems and _options["stop"]:
        yield summary
        return
    tok, dtype = _tokenizer, _options["dtype"]
    group: List[str] = []
    chars = 0
    texts, docs.texts = docs.texts, []
    for i, text in enumerate(texts):
        texts[i] = None  # let each document go once it is encoded
        summary.documents += 1
        if len(text) > 2 * SEGMENT_CHARS:
            if group:
                yield _encoded(tok, group, dtype, summary)
                group, chars = [], 0
            cuts = tok.cuts(text)
            per_message = max(1, MESSAGE_CHARS // SEGMENT_CHARS)
            for k in range(0, len(cuts) - 1, per_message):
                bounds = cuts[k:k + per_message + 1]
                ids, _ = tok.encode_arrays([text[a:b] for a, b in zip(bounds[:-1], bounds[1:])], dtype)
                summary.tokens += len(ids)
                yield Tokens(ids, np.array([len(ids)], dtype=np.int64), open_end=k + per_message < len(cuts) - 1)
            del text
            continue
        group.append(text)
        chars += len(text)
        if chars >= MESSAGE_CHARS:
            yield _encoded(tok, group, dtype, summary)
            group, chars = [], 0
    if group:
        yield _encoded(tok, group, dtype, summary)
    yield summary


def _encoded(tok: Tokenizer, texts: List[str], dtype, summary: TaskSummary) -> Tokens:
    ids, lengths = tok.encode_arrays(texts, dtype)
    summary.tokens += len(ids)
    return Tokens(ids, lengths)
