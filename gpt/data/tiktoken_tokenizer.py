"""tiktoken encodings (gpt2, cl100k_base, ...) read from tiktoken's local cache only.

tiktoken downloads an encoding's files on first use. Training nodes often have no internet, and a
download in the middle of a job is a bad surprise, so gpt never lets it: the files must already be
in the cache (TIKTOKEN_CACHE_DIR, as tiktoken itself names it), and a missing one is a one-line
error naming the file and the variable.
"""

import hashlib
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from gpt import log
from gpt.data.tokenizer import Tokenizer, as_id_array
from gpt.errors import DataError

CACHE_VARIABLE = "TIKTOKEN_CACHE_DIR"


def cache_dir() -> Path:
    """Where tiktoken keeps downloaded files, resolved exactly as tiktoken.load does."""
    for var in (CACHE_VARIABLE, "DATA_GYM_CACHE_DIR"):
        if var in os.environ:
            return Path(os.environ[var])
    return Path(tempfile.gettempdir()) / "data-gym-cache"


def cache_path(url: str) -> Path:
    """tiktoken names each cached file by the sha1 of its URL."""
    return cache_dir() / hashlib.sha1(url.encode()).hexdigest()


class _NotCached(Exception):
    def __init__(self, url: str, path: Path):
        super().__init__(url)
        self.url, self.path = url, path


@contextmanager
def _cache_only():
    """Make tiktoken read from its cache and never from the network, for the duration of a load.

    tiktoken verifies a cached file's sha256 and silently re-downloads on a mismatch; here a
    mismatch is only a warning, so that locally prepared encodings can be used offline.
    """
    import tiktoken.load

    def read_cached(blobpath: str, expected_hash=None) -> bytes:
        if "://" not in blobpath:
            return Path(blobpath).read_bytes()
        if str(cache_dir()) == "":
            raise _NotCached(blobpath, Path(""))
        path = cache_path(blobpath)
        if not path.is_file():
            raise _NotCached(blobpath, path)
        data = path.read_bytes()
        if expected_hash and hashlib.sha256(data).hexdigest() != expected_hash:
            log.get("data").warning("%s (cached %s) does not match tiktoken's published sha256; using it as is", path, blobpath)
        return data

    original = tiktoken.load.read_file_cached
    tiktoken.load.read_file_cached = read_cached
    try:
        yield
    finally:
        tiktoken.load.read_file_cached = original


def load_encoding(name: str):
    import tiktoken
    from tiktoken import registry

    names = registry.list_encoding_names()
    if name not in names:
        raise DataError(f"tokenizer.name={name!r} is not a tiktoken encoding; choose one of {'|'.join(sorted(names))}")
    try:
        with _cache_only():
            params = registry.ENCODING_CONSTRUCTORS[name]()
        return tiktoken.Encoding(**params)
    except _NotCached as e:
        raise DataError(f"tiktoken encoding {name!r} is not in the local cache: {e.path} (the file of {e.url}) is missing; "
                        f"gpt never downloads it: put the file there or set {CACHE_VARIABLE} to a directory that has it") from None
    except (ValueError, AssertionError, KeyError, UnicodeDecodeError) as e:
        raise DataError(f"the cached files of tiktoken encoding {name!r} in {cache_dir()} are not a valid encoding "
                        f"({type(e).__name__}: {e}); replace them ({CACHE_VARIABLE})") from None


class TiktokenTokenizer(Tokenizer):
    kind = "tiktoken"

    def __init__(self, name):
        if not name:
            raise DataError("tokenizer.kind=tiktoken needs tokenizer.name (an encoding such as gpt2 or cl100k_base)")
        self.name = name
        self._enc = load_encoding(name)
        self.vocab_size = self._enc.n_vocab
        self.eod_id = self._enc.eot_token
        self._special = np.array(sorted(self._enc._special_tokens.values()), dtype=np.int64)
        self.threads = os.cpu_count() or 1
        """Threads of encode_batch; a preprocessing worker uses one (workers=N is the parallelism)."""

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Ordinary encoding: "<|endoftext|>" inside a document is text, not a boundary.
        return self._enc.encode_ordinary_batch(list(texts), num_threads=self.threads)

    def decode(self, ids: Iterable[int]) -> str:
        a = as_id_array(ids)
        a = a[(a >= 0) & (a < self.vocab_size) & ~np.isin(a, self._special)].tolist()
        try:
            return self._enc.decode(a, errors="replace")
        except (KeyError, ValueError):  # an id in a hole of the vocabulary (the model can sample one)
            pieces = []
            for i in a:
                try:
                    pieces.append(self._enc.decode_single_token_bytes(i))
                except (KeyError, ValueError):
                    pass
            return b"".join(pieces).decode("utf-8", errors="replace")

    def to_dict(self) -> dict:
        d = super().to_dict()
        d["name"] = self.name
        return d
