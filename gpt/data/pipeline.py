"""One process's preprocessing pipeline: the tokenizer (a BPE trained on a deterministic sample of the
input), then units -> tasks -> workers -> shard writer, with bad records counted or refused at
their file:line. `gpt.data.preprocess` runs it for `stage=all`, `gpt.data.parts` for each unit of a
job array.
"""

import math
import os
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List

from gpt import log
from gpt.config.commands import PreprocessConfig
from gpt.data.inputs import ARROW, PARQUET, InputFile, Task, Unit, boundary
from gpt.data.readers import read_task, unit_tasks
from gpt.data.tokenizer import ByteTokenizer, Tokenizer
from gpt.data.writer import ShardWriter
from gpt.errors import DataError

_log = log.get("data.preprocess")
SAMPLE_STRETCH = 8 << 20
"""The BPE sample of a large text/jsonl file is read in stretches of about this many bytes, evenly spaced."""


@dataclass
class Stats:
    documents: int = 0
    tokens: int = 0
    empty: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_at: dict = field(default_factory=dict)    # reason -> file:line of its first occurrence

    def add(self, other: "Stats") -> None:
        self.documents += other.documents
        self.tokens += other.tokens
        self.empty += other.empty
        self.skipped.update(other.skipped)
        for reason, where in other.first_at.items():
            self.first_at.setdefault(reason, where)

    def to_dict(self) -> dict:
        return {"documents": self.documents, "tokens": self.tokens, "empty": self.empty,
                "skipped": dict(self.skipped), "first_at": self.first_at}

    @classmethod
    def from_dict(cls, d: dict) -> "Stats":
        return cls(d["documents"], d["tokens"], d["empty"], Counter(d["skipped"]), dict(d["first_at"]))


def build_tokenizer(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit]) -> Tokenizer:
    t = cfg.tokenizer
    if t.kind == "byte":
        return ByteTokenizer()
    if t.kind == "hf":
        from gpt.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(os.path.expanduser(t.path), kind="hf", eod_token=t.eod_token)
    if t.kind == "tiktoken":
        from gpt.data.tiktoken_tokenizer import TiktokenTokenizer

        return TiktokenTokenizer(t.name)
    return train_bpe_on_input(cfg, files, units)


def train_bpe_on_input(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit]) -> Tokenizer:
    from gpt.data.hf_tokenizer import DEFAULT_EOD, train_bpe

    t = cfg.tokenizer
    total = sum(u.nbytes for u in units)
    ratio = 1.0 if t.train_bytes is None or t.train_bytes >= total else t.train_bytes / total
    _log.info("training a byte-level BPE with %d tokens on %s of the input (%.1f MB)", t.vocab_size,
              "all" if ratio == 1 else f"a {ratio:.2%} sample", total * ratio / 1e6)
    started = time.perf_counter()
    tok = train_bpe(_sample_texts(cfg, units, ratio), t.vocab_size, eod_token=t.eod_token or DEFAULT_EOD)
    _log.info("trained the BPE in %.1f s (%d tokens)", time.perf_counter() - started, tok.vocab_size)
    return tok


def sample_tasks(units: List[Unit], ratio: float, task_bytes: int = SAMPLE_STRETCH) -> Iterator[Task]:
    """A deterministic sample of about `ratio` of the input: evenly spaced stretches of every large
    text/jsonl file, a prefix of every compressed file, evenly spaced row groups, batches and whole files.
    It depends on the input and ratio only (task_bytes, at a fixed default, only sizes the reads)."""
    if ratio >= 1:
        for unit in units:
            yield from unit_tasks(unit, task_bytes)
        return
    atoms = 0
    for unit in units:
        for span in unit.spans:
            f = span.file
            if f.seekable:
                budget = (span.end - span.start) * ratio
                stretches = max(1, math.ceil(budget / SAMPLE_STRETCH))
                with open(f.path, "rb") as fh:
                    for k in range(stretches):
                        at = span.start + (span.end - span.start) * k // stretches
                        start = span.start if k == 0 else min(span.end, boundary(fh, at, f))
                        end = min(span.end, boundary(fh, start + max(1, int(budget / stretches)), f))
                        if end > start:
                            yield Task(f, start, end, nbytes=end - start)
            elif f.compression:
                budget, taken = f.size * ratio, 0
                for task in unit_tasks(Unit(0, (span,)), task_bytes):
                    yield task
                    taken += task.nbytes
                    if taken >= budget:
                        break
            else:  # row groups, record batches, whole files: every 1/ratio-th one
                if math.floor((atoms + 1) * ratio) > math.floor(atoms * ratio):
                    yield from unit_tasks(Unit(0, (span,)), task_bytes)
                atoms += 1


def _sample_texts(cfg: PreprocessConfig, units: List[Unit], ratio: float) -> Iterator[str]:
    fail = cfg.on_error == "fail"
    for task in sample_tasks(units, ratio):
        docs = read_task(task, cfg.text_key, fail)
        if docs.problems and fail:
            raise bad_record(where(task, docs.problems[0][0]), docs.problems[0])
        yield from docs.texts


def encode_units(cfg: PreprocessConfig, units: List[Unit], tokenizer: Tokenizer, writer: ShardWriter,
                  tokenizer_dir: Path) -> Stats:
    """Every unit's documents into `writer`, which ends a shard at the end of every unit. Worker
    processes load the tokenizer from its dict and the files saved in tokenizer_dir."""
    from tqdm import tqdm

    from gpt.data.encode import TaskSummary
    from gpt.data.pool import Workers

    fail = cfg.on_error == "fail"
    stats = Stats()
    first: dict = {}              # reason -> (task, line): resolved to file:line at the end
    total = sum(u.nbytes for u in units)
    started = time.perf_counter()
    bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc="gpt-preprocess",
               disable=None, mininterval=0.5, file=sys.stderr)
    init_args = (tokenizer.to_dict(), str(tokenizer_dir), writer.np_dtype.name, cfg.text_key, fail)
    tasks = (t for u in units for t in unit_tasks(u, cfg.task_bytes))
    with bar, Workers(cfg.workers, init_args, tokenizer) as workers:
        for task, message in workers.run(tasks):
            if not isinstance(message, TaskSummary):
                writer.add(message.tokens, message.lengths, open_end=message.open_end)
                continue
            for problem in message.problems:
                if fail:
                    raise bad_record(where(task, problem[0]), problem)
                stats.skipped[problem[1]] += 1
                first.setdefault(problem[1], (task, problem[0]))
            stats.empty += message.empty
            stats.documents += message.documents
            stats.tokens += message.tokens
            if task.unit_end:
                writer.end_unit()
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(message.nbytes)
            bar.set_postfix_str(f"{stats.documents / elapsed:,.0f} docs/s, {stats.tokens / elapsed:,.0f} tokens/s",
                                refresh=False)
    elapsed = max(time.perf_counter() - started, 1e-9)
    _log.info("tokenised %d documents in %.1f s: %.0f documents/s, %.0f tokens/s, %.1f MB/s of input",
              stats.documents, elapsed, stats.documents / elapsed, stats.tokens / elapsed, total / elapsed / 1e6)
    stats.first_at = {reason: where(task, line) for reason, (task, line) in first.items()}
    return stats


def report(stats: Stats) -> None:
    if stats.skipped:
        _log.warning("skipped %d bad records: %s", sum(stats.skipped.values()),
                     "; ".join(f"{n} x {reason} (first at {stats.first_at[reason]})"
                               for reason, n in stats.skipped.most_common()))
    if stats.empty:
        _log.info("dropped %d empty documents", stats.empty)


def check_documents(cfg: PreprocessConfig, stats: Stats) -> None:
    if stats.documents == 0:
        raise DataError(f"input={spec_str(cfg.input)} holds no documents"
                        + (f" ({stats.empty} empty ones were dropped)" if stats.empty else "")
                        + (" and every record was bad (see the warning above)" if stats.skipped else ""))


def where(task: Task, line: int) -> str:
    """file:line (or file:row N) of line `line` (1-based) of a task."""
    f = task.file
    if f.kind in (PARQUET, ARROW):
        return f"{f.path}:row {task.first_row + line}"
    if task.data is not None:
        return f"{f.path}:{task.line + line - 1}"
    return f"{f.path}:{_newlines_before(f.path, task.start) + line}"


def _newlines_before(path: str, offset: int) -> int:
    """Line breaks in the first `offset` bytes of a file (read only to name the line of a bad record)."""
    n, done = 0, 0
    with open(path, "rb") as f:
        while done < offset:
            block = f.read(min(1 << 22, offset - done))
            if not block:
                break
            n += block.count(b"\n")
            done += len(block)
    return n


def bad_record(where: str, problem) -> DataError:
    _, reason, detail = problem
    return DataError(f"{where}: {reason} ({detail}); fix the record, or pass on_error=skip to skip bad records")


def source_of(cfg: PreprocessConfig, files: List[InputFile], total_bytes: int, stats: Stats) -> dict:
    inputs = list(cfg.input) if isinstance(cfg.input, (list, tuple)) else [cfg.input]
    skipped = dict(sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    source = {"inputs": [str(i) for i in inputs], "files": len(files), "bytes": total_bytes, "split": cfg.split,
              "text_key": cfg.text_key, "on_error": cfg.on_error, "unit_bytes": cfg.unit_bytes,
              "empty_documents": stats.empty, "skipped_records": skipped}
    if "stdlib" in source["inputs"]:
        import sysconfig

        source["stdlib"] = sysconfig.get_paths()["stdlib"]
    return source


def spec_str(spec) -> str:
    return "[" + ",".join(map(str, spec)) + "]" if isinstance(spec, (list, tuple)) else str(spec)
