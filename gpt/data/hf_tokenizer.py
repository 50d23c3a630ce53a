"""Tokenizers from the Hugging Face `tokenizers` library: a byte-level BPE trained on the input
(kind `bpe`) or any existing tokenizer.json (kind `hf`).

Both are stored as tokenizer.json beside the shards, so training and generation load exactly the
tokenizer that wrote them.
"""

import hashlib
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np

from gpt.data.tokenizer import Tokenizer, as_id_array
from gpt.errors import DataError

FILE = "tokenizer.json"
DEFAULT_EOD = "<|endoftext|>"
# End-of-text tokens of common tokenizer families, tried in order when tokenizer.eod_token is null.
EOD_CANDIDATES = (DEFAULT_EOD, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


class HFTokenizer(Tokenizer):
    def __init__(self, tok, *, kind: str, eod_token: Optional[str] = None, source: Optional[str] = None):
        self.kind = kind
        self.source = source
        self._tok = tok
        if eod_token is None:
            eod_token = next((t for t in EOD_CANDIDATES if tok.token_to_id(t) is not None), None)
            if eod_token is None:
                raise DataError(f"{source or 'the tokenizer'} has no end-of-document token (looked for "
                                f"{', '.join(EOD_CANDIDATES)}); set tokenizer.eod_token=<token> (it is added if missing)")
        if tok.token_to_id(eod_token) is None:
            tok.add_special_tokens([eod_token])
        self.eod_token = eod_token
        self.eod_id = tok.token_to_id(eod_token)
        self.vocab_size = max(tok.get_vocab_size(with_added_tokens=True), self.eod_id + 1)
        # Identifies the exact vocabulary and merges: two BPEs of equal size are not interchangeable.
        self.sha256 = hashlib.sha256(tok.to_str().encode()).hexdigest()
        # Text that happens to contain "<|endoftext|>" is data, not a document boundary.
        tok.encode_special_tokens = True

    @classmethod
    def from_file(cls, path, *, kind: str = "hf", eod_token: Optional[str] = None) -> "HFTokenizer":
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(path)
        if not path.is_file():
            raise DataError(f"{path}: no such tokenizer file (tokenizer.kind={kind} needs a tokenizer.json)")
        try:
            tok = RustTokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises plain Exception with a serde message
            raise DataError(f"{path}: not a tokenizer.json the tokenizers library can load ({str(e).splitlines()[0]})") from None
        return cls(tok, kind=kind, eod_token=eod_token, source=str(path))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast skips the character offsets we never use (about 20% faster); the Rust
        # side spreads the batch over all cores.
        return [e.ids for e in self._tok.encode_batch_fast(list(texts), add_special_tokens=False)]

    def encode_arrays(self, texts: Sequence[str], dtype) -> tuple[np.ndarray, np.ndarray]:
        ids = self.encode_batch(texts)
        lengths = np.fromiter(map(len, ids), dtype=np.int64, count=len(ids))
        flat = np.concatenate([np.asarray(x, dtype=dtype) for x in ids]) if ids else np.zeros(0, dtype)
        return flat, lengths

    def decode(self, ids: Iterable[int]) -> str:
        a = as_id_array(ids)
        a = a[(a >= 0) & (a < self.vocab_size)]
        return self._tok.decode(a.tolist(), skip_special_tokens=True)

    def to_dict(self) -> dict:
        d = super().to_dict()
        d.update(eod_token=self.eod_token, file=FILE, sha256=self.sha256)
        if self.source:
            d["source"] = self.source
        return d

    def save_files(self, directory) -> None:
        self._tok.save(str(Path(directory) / FILE))


def train_bpe(texts: Iterable[str], vocab_size: int, *, eod_token: str = DEFAULT_EOD) -> HFTokenizer:
    """A GPT-2 style byte-level BPE: every byte is in the alphabet, so any text round-trips."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 258:
        raise DataError(f"tokenizer.vocab_size={vocab_size} is too small for a byte-level BPE: it needs the 256 bytes, "
                        f"the end-of-document token and some merges; use at least 512")
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[eod_token], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(texts, trainer)
    return HFTokenizer(tok, kind="bpe", eod_token=eod_token)

