"""gpt-preprocess: input text -> token shards + metadata.json, written atomically.

Work is cut into tasks of about `task_bytes` of input at document boundaries; workers read and
tokenise tasks, this process writes them in input order. Everything lands in a temporary sibling
directory that is renamed into place only when complete (metadata.json last), so an interrupted
run never leaves a directory that looks finished.
"""

import os
import sys
import time
from collections import Counter, deque
from pathlib import Path
from typing import Iterator, List

from gpt import log
from gpt.config.commands import PreprocessConfig
from gpt.data import encode
from gpt.data.format import METADATA_FILE, dtype_for, write_json_atomic
from gpt.data.inputs import PARQUET, InputFile, Piece, group_tasks, plan_pieces, resolve_inputs
from gpt.data.readers import read_piece
from gpt.data.tokenizer import KINDS, ByteTokenizer, Tokenizer
from gpt.data.writer import ShardWriter, atomic_output, check_output, metadata
from gpt.errors import ConfigError, DataError
from gpt.paths import refuse_overlap

_log = log.get("data.preprocess")


def preprocess(cfg: PreprocessConfig) -> dict:
    """Write the shards of cfg.input into cfg.output; returns the metadata written."""
    _check_options(cfg)
    output = Path(os.path.expanduser(cfg.output))
    check_output(output, cfg.overwrite)  # before any work, not only when renaming
    # The output replaces its directory (overwrite=true) or joins the next run's input: never an input.
    refuse_overlap(output, _input_paths(cfg), input_key="input", error=ConfigError)
    if cfg.format == "sft":
        from gpt.data.sft import preprocess_sft

        return preprocess_sft(cfg, output, _build_tokenizer)
    files = resolve_inputs(cfg.input, cfg.split)
    tasks = group_tasks(plan_pieces(files, cfg.task_bytes, cfg.text_key), cfg.task_bytes)
    total_bytes = sum(p.nbytes for t in tasks for p in t)
    _log.info("preprocessing %d files (%.1f MB) with %d worker(s), tokenizer %s",
              len(files), total_bytes / 1e6, cfg.workers, cfg.tokenizer.kind)

    with atomic_output(output, cfg.overwrite) as tmp:
        tokenizer = _build_tokenizer(cfg, tasks)
        tokenizer.save_files(tmp)
        dtype = dtype_for(tokenizer.vocab_size)
        writer = ShardWriter(tmp, dtype, cfg.shard_tokens)
        try:
            stats = _encode_all(cfg, tasks, tokenizer, tmp, dtype, writer, total_bytes)
            shards = writer.close()
        finally:
            writer.abort()
        if stats["documents"] == 0:
            raise DataError(f"input={_spec_str(cfg.input)} holds no documents"
                            + (f" ({stats['empty']} empty ones were dropped)" if stats["empty"] else "")
                            + (" and every record was bad (see the warning above)" if stats["skipped"] else ""))
        meta = metadata(tokenizer.to_dict(), dtype, shards, _source(cfg, files, total_bytes, stats))
        write_json_atomic(tmp / METADATA_FILE, meta)
    _log.info("wrote %d documents, %d tokens in %d shard(s) to %s", meta["num_documents"], meta["num_tokens"],
              len(meta["shards"]), output)
    return meta


def _input_paths(cfg: PreprocessConfig) -> List[str]:
    """What input= (and an hf tokenizer.path) name on disk: paths, the matches of globs, the stdlib directory."""
    import glob
    import sysconfig

    specs = cfg.input if isinstance(cfg.input, (list, tuple)) else [cfg.input]
    found: List[str] = []
    for spec in (str(s) for s in specs if s not in (None, "")):
        if spec == "stdlib":
            found.append(sysconfig.get_paths()["stdlib"])
        elif any(c in spec for c in "*?["):
            found.extend(glob.glob(os.path.expanduser(spec), recursive=True))
        else:
            found.append(spec)
    if cfg.tokenizer.kind == "hf" and cfg.tokenizer.path:
        found.append(str(cfg.tokenizer.path))
    return found


def _check_options(cfg: PreprocessConfig) -> None:
    def one_of(key, value, options):
        if value not in options:
            raise ConfigError(f"{key}={value} is not one of {'|'.join(options)}")

    one_of("format", cfg.format, ("pretrain", "sft"))
    one_of("tokenizer.kind", cfg.tokenizer.kind, KINDS)
    one_of("split", cfg.split, ("blank_lines", "file"))
    one_of("on_error", cfg.on_error, ("fail", "skip"))
    if not cfg.output:
        raise ConfigError("output is not set: pass output=<directory for the token shards>")
    for key in ("workers", "shard_tokens", "task_bytes"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if cfg.tokenizer.kind == "hf" and not cfg.tokenizer.path:
        raise ConfigError("tokenizer.kind=hf needs tokenizer.path=<tokenizer.json>")
    if cfg.tokenizer.kind == "tiktoken" and not cfg.tokenizer.name:
        raise ConfigError("tokenizer.kind=tiktoken needs tokenizer.name=<encoding>, e.g. gpt2 or cl100k_base")


def _build_tokenizer(cfg: PreprocessConfig, tasks: List[List[Piece]]) -> Tokenizer:
    t = cfg.tokenizer
    if t.kind == "byte":
        return ByteTokenizer()
    if t.kind == "hf":
        from gpt.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(os.path.expanduser(t.path), kind="hf", eod_token=t.eod_token)
    if t.kind == "tiktoken":
        from gpt.data.tiktoken_tokenizer import TiktokenTokenizer

        return TiktokenTokenizer(t.name)
    from gpt.data.hf_tokenizer import DEFAULT_EOD, train_bpe

    _log.info("training a byte-level BPE with %d tokens on the input", t.vocab_size)
    started = time.perf_counter()
    tok = train_bpe(_all_texts(cfg, tasks), t.vocab_size, eod_token=t.eod_token or DEFAULT_EOD)
    _log.info("trained the BPE in %.1f s (%d tokens)", time.perf_counter() - started, tok.vocab_size)
    return tok


def _all_texts(cfg: PreprocessConfig, tasks: List[List[Piece]]) -> Iterator[str]:
    """Every document, for BPE training; bad records stop here already with on_error=fail."""
    lines = _Lines()
    for task in tasks:
        for piece in task:
            docs = read_piece(piece, cfg.text_key, cfg.on_error == "fail")
            if docs.problems and cfg.on_error == "fail":
                raise _bad_record(lines.where(piece, docs.problems[0][0]), docs.problems[0])
            lines.advance(piece, docs.newlines)
            yield from docs.texts


class _Lines:
    """Turns a line number within a piece into file:line, from the newlines of the file's earlier pieces."""

    def __init__(self):
        self.base = 0

    def where(self, piece: Piece, line: int) -> str:
        if piece.file.kind == PARQUET:
            return f"{piece.file.path}:row {piece.first_row + line}"
        return f"{piece.file.path}:{(0 if piece.start == 0 else self.base) + line}"

    def advance(self, piece: Piece, newlines: int) -> None:
        self.base = (0 if piece.start == 0 else self.base) + newlines


def _bad_record(where: str, problem) -> DataError:
    _, reason, detail = problem
    return DataError(f"{where}: {reason} ({detail}); fix the record, or pass on_error=skip to skip bad records")


def _encode_all(cfg, tasks, tokenizer, tmp: Path, dtype: str, writer: ShardWriter, total_bytes: int) -> dict:
    from tqdm import tqdm

    fail = cfg.on_error == "fail"
    stats = {"documents": 0, "tokens": 0, "empty": 0, "skipped": 0}
    skipped: Counter = Counter()
    first_at: dict = {}
    lines = _Lines()
    started = time.perf_counter()
    bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="gpt-preprocess",
               disable=None, mininterval=0.5, file=sys.stderr)
    init_args = (tokenizer.to_dict(), str(tmp), dtype, cfg.text_key, fail)
    with bar:
        for task, result in zip(tasks, _results(cfg.workers, tasks, init_args, tokenizer)):
            for piece, summary in zip(task, result.pieces):
                for problem in summary.problems:
                    where = lines.where(piece, problem[0])
                    if fail:
                        raise _bad_record(where, problem)
                    skipped[problem[1]] += 1
                    first_at.setdefault(problem[1], where)
                lines.advance(piece, summary.newlines)
                stats["empty"] += summary.empty
            writer.add(result.tokens, result.lengths)
            stats["documents"] += len(result.lengths)
            stats["tokens"] += len(result.tokens)
            elapsed = max(time.perf_counter() - started, 1e-9)
            bar.update(result.nbytes)
            bar.set_postfix_str(f"{stats['documents'] / elapsed:,.0f} docs/s, {stats['tokens'] / elapsed:,.0f} tokens/s",
                                refresh=False)
    elapsed = max(time.perf_counter() - started, 1e-9)
    _log.info("tokenised %d documents in %.1f s: %.0f documents/s, %.0f tokens/s, %.1f MB/s of input",
              stats["documents"], elapsed, stats["documents"] / elapsed, stats["tokens"] / elapsed, total_bytes / elapsed / 1e6)
    if skipped:
        stats["skipped"] = sum(skipped.values())
        _log.warning("skipped %d bad records: %s", stats["skipped"],
                     "; ".join(f"{n} x {reason} (first at {first_at[reason]})" for reason, n in skipped.most_common()))
    if stats["empty"]:
        _log.info("dropped %d empty documents", stats["empty"])
    stats["skipped_by_reason"] = dict(skipped.most_common())
    return stats


def _results(workers: int, tasks, init_args, tokenizer) -> Iterator["encode.TaskResult"]:
    """TaskResults in task order, with at most 2 tasks per worker in flight.

    workers=1 runs tasks on two threads of this process: the encoders release the GIL, so one task's
    reading and id conversion overlap another's encoding. workers > 1 are processes.
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
    from concurrent.futures.process import BrokenProcessPool

    if workers == 1:
        encode.init(*init_args, tokenizer=tokenizer)
        pool = ThreadPoolExecutor(2)
    else:
        # spawn, not fork: the parent may already run tokenizer/Arrow threads, which fork would break.
        # An executor (unlike multiprocessing.Pool) fails instead of hanging if a worker is killed.
        threads = max(1, (os.cpu_count() or 1) // workers)  # no oversubscription of the cores
        pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                                   initializer=encode.init, initargs=(*init_args, None, threads))
    with pool:
        pending: deque = deque()
        queue = iter(tasks)
        try:
            for task in queue:
                pending.append(pool.submit(encode.encode_task, task))
                if len(pending) >= 2 * max(workers, 2):
                    break
            while pending:
                result = pending.popleft().result()
                task = next(queue, None)
                if task is not None:
                    pending.append(pool.submit(encode.encode_task, task))
                yield result
        except BrokenProcessPool:
            raise DataError(f"a preprocessing worker process died (out of memory?); retry with fewer workers "
                            f"(workers={workers}) or a smaller task_bytes") from None
        finally:
            for f in pending:
                f.cancel()


def _source(cfg: PreprocessConfig, files: List[InputFile], total_bytes: int, stats: dict) -> dict:
    inputs = list(cfg.input) if isinstance(cfg.input, (list, tuple)) else [cfg.input]
    source = {"inputs": [str(i) for i in inputs], "files": len(files), "bytes": total_bytes, "split": cfg.split,
              "text_key": cfg.text_key, "on_error": cfg.on_error, "empty_documents": stats["empty"],
              "skipped_records": stats["skipped_by_reason"]}
    if "stdlib" in source["inputs"]:
        import sysconfig

        source["stdlib"] = sysconfig.get_paths()["stdlib"]
    return source


def _spec_str(spec) -> str:
    return "[" + ",".join(map(str, spec)) + "]" if isinstance(spec, (list, tuple)) else str(spec)

