"""What one preprocessing worker does with a task: read its pieces, tokenise all their documents in
one batch (the Rust/tiktoken encoders spread a batch over threads), return compact arrays.

Module state holds the worker's tokenizer, loaded once per process by `init`.
"""

import os
from dataclasses import dataclass, field
from typing import List, Optional

import numpy as np

from gpt.data.inputs import Piece
from gpt.data.readers import Problem, read_piece
from gpt.data.tokenizer import Tokenizer, tokenizer_from_dict


@dataclass
class PieceSummary:
    documents: int
    newlines: int
    empty: int
    problems: List[Problem]


@dataclass
class TaskResult:
    tokens: np.ndarray           # [sum(lengths)] ids of all documents, in order
    lengths: np.ndarray          # [documents] int64
    pieces: List[PieceSummary] = field(default_factory=list)
    nbytes: int = 0


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
    _options = {"dtype": np.dtype(dtype), "text_key": text_key, "stop": stop_at_problem}


def encode_task(task: List[Piece]) -> TaskResult:
    texts: List[str] = []
    result = TaskResult(tokens=np.zeros(0), lengths=np.zeros(0))
    for piece in task:
        docs = read_piece(piece, _options["text_key"], _options["stop"])
        texts.extend(docs.texts)
        result.pieces.append(PieceSummary(len(docs.texts), docs.newlines, docs.empty, docs.problems))
        result.nbytes += piece.nbytes
        if docs.problems and _options["stop"]:
            break
    result.tokens, result.lengths = _tokenizer.encode_arrays(texts, _options["dtype"])
    return result
