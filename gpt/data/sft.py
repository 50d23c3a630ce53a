"""Instruction data -> token shards with a loss mask (gpt-preprocess format=sft).

A record is one training document, in one of two shapes (a line of .jsonl, .jsonl.gz or .jsonl.zst,
a Parquet row, a row of a dataset saved with save_to_disk):

    {"prompt": "...", "response": "..."}                        field names: sft.prompt_key / response_key
    {"messages": [{"role": "user", "content": "..."}, ...]}     sft.messages_key; roles system|user|assistant

rendered with a plain template (every string configurable under `sft.*`; defaults shown):

    ### System:\\n{system}\\n\\n          mask 0 (chat records only)
    ### User:\\n{prompt}\\n\\n            mask 0
    ### Assistant:\\n                    mask 0   (a generation prompt ends here)
    {response}                           mask 1
    \\n\\n                                mask 1 if another message follows (it ends the turn)
    <end-of-document>                    mask 1, added by packing after every document

A prompt/response record is the chat [user: prompt, assistant: response]. Each run of text with the
same mask is tokenised on its own, so the prompt's tokens are exactly what encoding the rendered
prompt at generation time gives. Bad records follow on_error (file:line, or file:row N).
"""

import gzip
import json
import zlib
from collections import Counter
from pathlib import Path
from typing import Iterator, List, Tuple

import numpy as np

from gpt import log
from gpt.config.commands import PreprocessConfig, SftConfig
from gpt.data.format import dtype_for
from gpt.data.inputs import ARROW, JSONL, PARQUET, resolve_inputs
from gpt.errors import DataError

_log = log.get("data.sft")
ROLES = ("system", "user", "assistant")
Segments = List[Tuple[str, int]]  # (text, mask) runs of one record
CHUNK_RECORDS = 4096


class BadRecord(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(reason)
        self.reason, self.detail = reason, detail


def prompt_text(prompt: str, sft: SftConfig) -> str:
    """The text a single-turn generation prompt should be: exactly the record's untrained prefix."""
    return sft.user_prefix + prompt + sft.separator + sft.assistant_prefix


def _messages(record, sft: SftConfig) -> list:
    if not isinstance(record, dict):
        raise BadRecord("not a JSON object", type(record).__name__)
    if sft.messages_key in record:
        messages = record[sft.messages_key]
        if not isinstance(messages, list) or not messages:
            raise BadRecord(f"{sft.messages_key!r} is not a non-empty list", type(messages).__name__)
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ROLES or not isinstance(m.get("content"), str):
                raise BadRecord(f"bad message {i}", f"expected {{\"role\": {'|'.join(ROLES)}, \"content\": text}}, "
                                                    f"got {str(m)[:60]}")
        if not any(m["role"] == "assistant" and m["content"] for m in messages):
            raise BadRecord("no assistant message", "nothing to train on")
        return messages
    missing = [k for k in (sft.prompt_key, sft.response_key) if k not in record]
    if missing:
        raise BadRecord(f"no {missing[0]!r} field", f"fields: {', '.join(list(record)[:5])}; set sft.prompt_key/"
                                                    f"sft.response_key, or give {sft.messages_key!r}")
    for k in (sft.prompt_key, sft.response_key):
        if not isinstance(record[k], str):
            raise BadRecord(f"{k!r} is not a string", type(record[k]).__name__)
    if not record[sft.response_key]:
        raise BadRecord(f"empty {sft.response_key!r}", "nothing to train on")
    return [{"role": "user", "content": record[sft.prompt_key]},
            {"role": "assistant", "content": record[sft.response_key]}]


def render(record, sft: SftConfig) -> Segments:
    """The record's text as runs of (text, mask): 1 = trained on. Raises BadRecord."""
    messages = _messages(record, sft)
    prefix = {"system": sft.system_prefix, "user": sft.user_prefix, "assistant": sft.assistant_prefix}
    segments: Segments = []

    def add(text: str, mask: int) -> None:
        if not text:
            return
        if segments and segments[-1][1] == mask:
            segments[-1] = (segments[-1][0] + text, mask)
        else:
            segments.append((text, mask))

    for i, m in enumerate(messages):
        trained = int(m["role"] == "assistant")
        add(prefix[m["role"]], 0)
        add(m["content"], trained)
        if i + 1 < len(messages):
            add(sft.separator, trained)
    return segments


def _records(f) -> Iterator[Tuple[str, object]]:
    """(where, record or BadRecord) for every record of one file, read as a stream."""
    import io

    if f.kind in (PARQUET, ARROW):
        import pyarrow as pa
        import pyarrow.parquet as pq

        try:
            batches = pq.ParquetFile(f.path).iter_batches() if f.kind == PARQUET else \
                pa.ipc.open_stream(pa.memory_map(f.path, "r"))
            row = 0
            for batch in batches:
                for record in batch.to_pylist():
                    row += 1
                    yield f"{f.path}:row {row}", record
        except Exception as e:
            raise DataError(f"{f.path}: not a readable {f.kind} file ({str(e).splitlines()[0]})") from None
        return
    raw = open(f.path, "rb")
    with raw:
        if f.compression == "gz":
            stream = gzip.GzipFile(fileobj=raw, mode="rb")
        elif f.compression == "zst":
            import zstandard

            stream = io.BufferedReader(zstandard.ZstdDecompressor().stream_reader(raw))
        else:
            stream = raw
        i = 0
        try:
            for i, raw_line in enumerate(stream, 1):
                if not raw_line.strip():
                    continue
                try:
                    yield f"{f.path}:{i}", json.loads(raw_line)
                except UnicodeDecodeError as e:
                    yield f"{f.path}:{i}", BadRecord("invalid UTF-8", f"byte 0x{raw_line[e.start]:02x}")
                except json.JSONDecodeError as e:
                    yield f"{f.path}:{i}", BadRecord("invalid JSON", f"{e.msg} at column {e.colno}")
        except (OSError, EOFError, zlib.error) + _zstd_errors() as e:
            yield f"{f.path}:{i + 1}", BadRecord(f"unreadable {f.compression} data", f"{e}; the rest of the file was skipped")


def _zstd_errors() -> tuple:
    try:
        import zstandard

        return (zstandard.ZstdError,)
    except ImportError:
        return ()


class _Rendered:
    """Every good record of the input, rendered, with the bad ones counted (or raised, on_error=fail)."""

    def __init__(self, cfg: PreprocessConfig):
        self.cfg = cfg
        self.files = resolve_inputs(cfg.input, cfg.split)
        for f in self.files:
            if f.kind not in (JSONL, PARQUET, ARROW):
                raise DataError(f"{f.path}: format=sft reads instruction records from .jsonl (plain, .gz or .zst), "
                                f".parquet or saved datasets, not {f.kind}")
        self.skipped: Counter = Counter()
        self.first_at: dict = {}

    def __iter__(self) -> Iterator[Segments]:
        fail = self.cfg.on_error == "fail"
        for f in self.files:
            for where, record in _records(f):
                try:
                    if isinstance(record, BadRecord):
                        raise record
                    yield render(record, self.cfg.sft)
                except BadRecord as bad:
                    if fail:
                        raise DataError(f"{where}: {bad.reason} ({bad.detail}); fix the record, or pass on_error=skip "
                                        f"to skip bad records") from None
                    self.skipped[bad.reason] += 1
                    self.first_at.setdefault(bad.reason, where)


def encode_chunk(tokenizer, chunk: List[Segments], dtype) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(tokens, lengths [records], mask) of a chunk of rendered records, every segment encoded on its own."""
    texts = [text for segments in chunk for text, _ in segments]
    ids, seg_lengths = tokenizer.encode_arrays(texts, dtype)
    masks = np.repeat(np.array([m for segments in chunk for _, m in segments], dtype=np.uint8), seg_lengths)
    per_record = np.add.reduceat(seg_lengths, np.cumsum([0] + [len(s) for s in chunk[:-1]])) if chunk else seg_lengths
    return ids, per_record.astype(np.int64), masks


def preprocess_sft(cfg: PreprocessConfig, output: Path, build_tokenizer) -> dict:
    """Write the shards of cfg.input's instruction records to `output`; returns the metadata."""
    from gpt.data.writer import write_token_shards

    rendered = _Rendered(cfg)
    if cfg.tokenizer.kind == "bpe":  # trained on the rendered records, templates included
        from gpt.data.hf_tokenizer import DEFAULT_EOD, train_bpe

        tokenizer = train_bpe(("".join(t for t, _ in segs) for segs in rendered), cfg.tokenizer.vocab_size,
                              eod_token=cfg.tokenizer.eod_token or DEFAULT_EOD)
        rendered = _Rendered(cfg)
    else:
        tokenizer = build_tokenizer(cfg, [], [])
    dtype = np.dtype(dtype_for(tokenizer.vocab_size))
    stats = {"documents": 0, "tokens": 0, "trained_tokens": 0}

    def chunks():
        chunk: List[Segments] = []
        for segments in rendered:
            chunk.append(segments)
            if len(chunk) == CHUNK_RECORDS:
                yield _counted(encode_chunk(tokenizer, chunk, dtype))
                chunk = []
        if chunk:
            yield _counted(encode_chunk(tokenizer, chunk, dtype))

    def _counted(encoded):
        tokens, lengths, mask = encoded
        stats["documents"] += len(lengths)
        stats["tokens"] += len(tokens)
        stats["trained_tokens"] += int(mask.sum())
        return encoded

    source = {"inputs": [str(i) for i in (cfg.input if isinstance(cfg.input, (list, tuple)) else [cfg.input])],
              "files": len(rendered.files), "format": "sft", "on_error": cfg.on_error,
              "sft": {k: getattr(cfg.sft, k) for k in vars(cfg.sft)}}
    try:
        meta = write_token_shards(output, tokenizer, chunks(), source=source, shard_tokens=cfg.shard_tokens,
                                  loss_mask=True, overwrite=cfg.overwrite, finish=lambda m: _finish(m, rendered, stats))
    except DataError as e:
        if "no documents to write" in str(e):
            raise DataError(f"input={cfg.input} holds no usable instruction records"
                            + (" (every record was bad, see the warning above)" if rendered.skipped else "")) from None
        raise
    _log.info("wrote %d records, %d tokens (%d trained on, %.1f%%) in %d shard(s) to %s", meta["num_documents"],
              meta["num_tokens"], stats["trained_tokens"], 100.0 * stats["trained_tokens"] / max(1, stats["tokens"]),
              len(meta["shards"]), output)
    return meta


def _finish(meta: dict, rendered: _Rendered, stats: dict) -> None:
    """Counts known only once every record was read, recorded in metadata.json."""
    meta["source"]["trained_tokens"] = stats["trained_tokens"]
    meta["source"]["skipped_records"] = dict(rendered.skipped.most_common())
    if rendered.skipped:
        _log.warning("skipped %d bad records: %s", sum(rendered.skipped.values()),
                     "; ".join(f"{n} x {reason} (first at {rendered.first_at[reason]})"
                               for reason, n in rendered.skipped.most_common()))


