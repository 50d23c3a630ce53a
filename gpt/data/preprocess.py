"""gpt-preprocess: input text -> token shards + chunk index + metadata.json, in one process or as a job array.

The input is cut into units (see `gpt.data.inputs`); every unit becomes its own shards. `stage=all`
does everything here, writing into a temporary sibling directory renamed into place when complete
(metadata.json last). For many nodes (`slurm/preprocess.sh`): `stage=tokenizer` trains a BPE once
into `<output>.parts/`; `stage=encode task=i tasks=n` writes slice i of the units, each unit into
`<output>.parts/unit-NNNNN/` (atomically: a killed task leaves only a hidden temporary); the task
that finds every unit finished merges (`stage=merge` does it by hand): shard files are hard-linked
into the output under their global numbers, so the result is byte-identical to `stage=all`
whatever the number of tasks. The merge refuses, in one line naming it, while any unit is missing,
damaged or was written with other settings.
"""

import hashlib
import json
import math
import os
import shutil
import socket
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, List, Optional

import numpy as np

from gpt import log
from gpt.config.commands import PreprocessConfig
from gpt.data.format import METADATA_FILE, VERSION, dtype_for, write_json_atomic
from gpt.data.inputs import ARROW, PARQUET, InputFile, Task, Unit, boundary, plan_units, resolve_inputs, slice_of
from gpt.data.readers import read_task, unit_tasks
from gpt.data.tokenizer import KINDS, ByteTokenizer, Tokenizer
from gpt.data.writer import ShardWriter, atomic_output, check_output, file_sha256, finish_directory
from gpt.errors import ConfigError, DataError

_log = log.get("data.preprocess")
STAGES = ("all", "tokenizer", "encode", "merge")
PART_FILE = "part.json"
PLAN_FILE = "plan.json"
CHUNKS_FILE = "chunks.npy"
LOCK_FILE = "merge.lock"
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


def preprocess(cfg: PreprocessConfig) -> dict:
    """Run cfg.stage; returns the metadata written (stage=all/merge, or the encode task that merged), else {}."""
    _check_options(cfg)
    output = Path(os.path.expanduser(cfg.output))
    check_output(output, cfg.overwrite)  # before any work, not only when renaming
    _check_not_an_input(output, cfg.input)
    if cfg.format == "sft":
        from gpt.data.sft import preprocess_sft

        return preprocess_sft(cfg, output, _build_tokenizer)
    files = resolve_inputs(cfg.input, cfg.split)
    units = plan_units(files, cfg.unit_bytes, cfg.text_key)
    if not units:
        raise DataError(f"input={_spec_str(cfg.input)} holds no input bytes")
    if cfg.stage == "tokenizer":
        _train_tokenizer_stage(cfg, output, files, units)
        return {}
    if cfg.stage == "encode":
        return _encode_stage(cfg, output, files, units)
    if cfg.stage == "merge":
        return merge(cfg, output, files, units)
    total = sum(u.nbytes for u in units)
    _log.info("preprocessing %d files (%.1f MB) in %d unit(s) with %d worker(s), tokenizer %s",
              len(files), total / 1e6, len(units), cfg.workers, cfg.tokenizer.kind)
    with atomic_output(output, cfg.overwrite) as tmp:
        tokenizer = _build_tokenizer(cfg, files, units)
        tokenizer.save_files(tmp)
        dtype = dtype_for(tokenizer.vocab_size)
        writer = ShardWriter(tmp, dtype, cfg.shard_tokens)
        try:
            stats = _encode_units(cfg, units, tokenizer, writer, tmp)
            shards = writer.close()
        finally:
            writer.abort()
        _report(stats)
        _check_documents(cfg, stats)
        meta = finish_directory(tmp, tokenizer.to_dict(), dtype, shards, [(c, writer.granularity) for c in writer.chunks],
                                _source(cfg, files, total, stats))
    _log.info("wrote %d documents, %d tokens in %d shard(s) to %s", meta["num_documents"], meta["num_tokens"],
              len(meta["shards"]), output)
    return meta


def _check_options(cfg: PreprocessConfig) -> None:
    def one_of(key, value, options):
        if value not in options:
            raise ConfigError(f"{key}={value} is not one of {'|'.join(options)}")

    one_of("format", cfg.format, ("pretrain", "sft"))
    one_of("tokenizer.kind", cfg.tokenizer.kind, KINDS)
    one_of("split", cfg.split, ("blank_lines", "file"))
    one_of("on_error", cfg.on_error, ("fail", "skip"))
    one_of("stage", cfg.stage, STAGES)
    if not cfg.output:
        raise ConfigError("output is not set: pass output=<directory for the token shards>")
    for key in ("workers", "shard_tokens", "task_bytes", "unit_bytes", "tasks"):
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key}={getattr(cfg, key)} must be at least 1")
    if not 0 <= cfg.task < cfg.tasks:
        raise ConfigError(f"task={cfg.task} must be in [0, tasks={cfg.tasks})")
    if cfg.tokenizer.train_bytes is not None and cfg.tokenizer.train_bytes < 1:
        raise ConfigError(f"tokenizer.train_bytes={cfg.tokenizer.train_bytes} must be at least 1 (or null: all the input)")
    if cfg.tokenizer.kind == "hf" and not cfg.tokenizer.path:
        raise ConfigError("tokenizer.kind=hf needs tokenizer.path=<tokenizer.json>")
    if cfg.tokenizer.kind == "tiktoken" and not cfg.tokenizer.name:
        raise ConfigError("tokenizer.kind=tiktoken needs tokenizer.name=<encoding>, e.g. gpt2 or cl100k_base")
    if cfg.format == "sft" and cfg.stage != "all":
        raise ConfigError(f"format=sft runs in one process: stage={cfg.stage} is for format=pretrain")
    if cfg.stage == "tokenizer" and cfg.tokenizer.kind != "bpe":
        raise ConfigError(f"stage=tokenizer trains tokenizer.kind=bpe; tokenizer.kind={cfg.tokenizer.kind} needs no training")


def _check_not_an_input(output: Path, spec) -> None:
    """Refuse an output that is, contains or lies inside an input (overwrite=true would delete the input)."""
    out = output.resolve()
    for s in (spec if isinstance(spec, (list, tuple)) else [spec]):
        if str(s) == "stdlib" or any(c in str(s) for c in "*?["):
            continue
        p = Path(os.path.expanduser(str(s))).resolve()
        if p == out or out in p.parents or (p.is_dir() and p in out.parents):
            raise DataError(f"output={output} is, contains or lies inside input={s}; write the shards somewhere else")


# ---- tokenizers ------------------------------------------------------------------------------

def _build_tokenizer(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit]) -> Tokenizer:
    t = cfg.tokenizer
    if t.kind == "byte":
        return ByteTokenizer()
    if t.kind == "hf":
        from gpt.data.hf_tokenizer import HFTokenizer

        return HFTokenizer.from_file(os.path.expanduser(t.path), kind="hf", eod_token=t.eod_token)
    if t.kind == "tiktoken":
        from gpt.data.tiktoken_tokenizer import TiktokenTokenizer

        return TiktokenTokenizer(t.name)
    return _train_bpe(cfg, files, units)


def _train_bpe(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit]) -> Tokenizer:
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


def _sample_tasks(units: List[Unit], ratio: float, task_bytes: int = SAMPLE_STRETCH) -> Iterator[Task]:
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
    for task in _sample_tasks(units, ratio):
        docs = read_task(task, cfg.text_key, fail)
        if docs.problems and fail:
            raise _bad_record(_where(task, docs.problems[0][0]), docs.problems[0])
        yield from docs.texts


def _train_tokenizer_stage(cfg: PreprocessConfig, output: Path, files: List[InputFile], units: List[Unit]) -> None:
    parts = parts_dir(output)
    parts.mkdir(parents=True, exist_ok=True)
    tok = _train_bpe(cfg, files, units)
    tmp = parts / f".tokenizer.tmp-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    tok.save_files(tmp)
    os.replace(tmp / "tokenizer.json", parts / "tokenizer.json")
    shutil.rmtree(tmp, ignore_errors=True)
    _log.info("saved the tokenizer to %s; now run the encode tasks (stage=encode)", parts / "tokenizer.json")


def _shared_tokenizer(cfg: PreprocessConfig, parts: Path, files: List[InputFile], units: List[Unit]) -> Tokenizer:
    """The tokenizer every array task uses: for bpe the one trained by stage=tokenizer."""
    if cfg.tokenizer.kind != "bpe":
        return _build_tokenizer(cfg, files, units)
    from gpt.data.hf_tokenizer import DEFAULT_EOD, HFTokenizer

    path = parts / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: with tokenizer.kind=bpe, train the tokenizer first with stage=tokenizer "
                        f"(slurm/preprocess.sh does it before submitting the array)")
    tok = HFTokenizer.from_file(path, kind="bpe", eod_token=cfg.tokenizer.eod_token or DEFAULT_EOD)
    tok.source = None  # a trained tokenizer is identified by its JSON (sha256), as in stage=all
    return tok


# ---- encoding ------------------------------------------------------------------------------

def _encode_units(cfg: PreprocessConfig, units: List[Unit], tokenizer: Tokenizer, writer: ShardWriter,
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
                    raise _bad_record(_where(task, problem[0]), problem)
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
    stats.first_at = {reason: _where(task, line) for reason, (task, line) in first.items()}
    return stats


def _report(stats: Stats) -> None:
    if stats.skipped:
        _log.warning("skipped %d bad records: %s", sum(stats.skipped.values()),
                     "; ".join(f"{n} x {reason} (first at {stats.first_at[reason]})"
                               for reason, n in stats.skipped.most_common()))
    if stats.empty:
        _log.info("dropped %d empty documents", stats.empty)


def _check_documents(cfg: PreprocessConfig, stats: Stats) -> None:
    if stats.documents == 0:
        raise DataError(f"input={_spec_str(cfg.input)} holds no documents"
                        + (f" ({stats.empty} empty ones were dropped)" if stats.empty else "")
                        + (" and every record was bad (see the warning above)" if stats.skipped else ""))


def _where(task: Task, line: int) -> str:
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


def _bad_record(where: str, problem) -> DataError:
    _, reason, detail = problem
    return DataError(f"{where}: {reason} ({detail}); fix the record, or pass on_error=skip to skip bad records")


def _source(cfg: PreprocessConfig, files: List[InputFile], total_bytes: int, stats: Stats) -> dict:
    inputs = list(cfg.input) if isinstance(cfg.input, (list, tuple)) else [cfg.input]
    skipped = dict(sorted(stats.skipped.items(), key=lambda kv: (-kv[1], kv[0])))
    source = {"inputs": [str(i) for i in inputs], "files": len(files), "bytes": total_bytes, "split": cfg.split,
              "text_key": cfg.text_key, "on_error": cfg.on_error, "unit_bytes": cfg.unit_bytes,
              "empty_documents": stats.empty, "skipped_records": skipped}
    if "stdlib" in source["inputs"]:
        import sysconfig

        source["stdlib"] = sysconfig.get_paths()["stdlib"]
    return source


def _spec_str(spec) -> str:
    return "[" + ",".join(map(str, spec)) + "]" if isinstance(spec, (list, tuple)) else str(spec)


# ---- job arrays: parts and the merge ------------------------------------------------------

def parts_dir(output: Path) -> Path:
    """Where the array tasks of `output` write their units: a sibling `<output>.parts/`, removed after the merge."""
    return output.parent / f"{output.name}.parts"


def _plan_hash(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit], tokenizer: Tokenizer) -> str:
    plan = {"version": VERSION, "tokenizer": tokenizer.to_dict(), "shard_tokens": cfg.shard_tokens,
            "text_key": cfg.text_key, "on_error": cfg.on_error, "split": cfg.split, "unit_bytes": cfg.unit_bytes,
            "files": [[f.path, f.kind, f.compression, f.split, f.size, os.stat(f.path).st_mtime_ns] for f in files],
            "units": [[[s.file.path, s.start, s.end] for s in u.spans] for u in units]}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def _encode_stage(cfg: PreprocessConfig, output: Path, files: List[InputFile], units: List[Unit]) -> dict:
    parts = parts_dir(output)
    parts.mkdir(parents=True, exist_ok=True)
    tokenizer = _shared_tokenizer(cfg, parts, files, units)
    if tokenizer.kind != "bpe":  # bpe: stage=tokenizer saved it there already
        tmp = parts / f".tokenizer.tmp-{socket.gethostname()}-{os.getpid()}"
        tmp.mkdir(exist_ok=True)
        tokenizer.save_files(tmp)
        for f in tmp.iterdir():
            os.replace(f, parts / f.name)  # atomic: other tasks may be reading it
        tmp.rmdir()
    plan = _plan_hash(cfg, files, units, tokenizer)
    _record_plan(parts, plan, cfg, len(units))
    mine = slice_of(units, cfg.task, cfg.tasks)
    job = _job_name()
    write_json_atomic(parts / f"slice-{cfg.task:05d}-of-{cfg.tasks:05d}.json",
                      {"units": [u.index for u in mine], "job": job, "host": socket.gethostname(), "pid": os.getpid()})
    dtype = dtype_for(tokenizer.vocab_size)
    todo = [u for u in mine if _part_problem(parts, u, plan, check_files=True) is not None]
    _log.info("task %d of %d (%s): units %s, %d to write (%.1f MB)", cfg.task, cfg.tasks, job,
              f"{mine[0].index}-{mine[-1].index}" if mine else "none", len(todo), sum(u.nbytes for u in todo) / 1e6)
    for unit in todo:
        _write_unit(cfg, parts, unit, tokenizer, dtype, plan)
    missing = [u for u in units if _part_problem(parts, u, plan) is not None]
    if missing:
        _log.info("%d of %d units are not finished yet (first: unit %d); the task that finishes the last one merges",
                  len(missing), len(units), missing[0].index)
        return {}
    lock = parts / LOCK_FILE
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        _log.info("every unit is finished and %s exists: another task is merging", lock)
        return {}
    with os.fdopen(fd, "w") as f:
        f.write(f"{job} {socket.gethostname()} {os.getpid()}\n")
    try:
        return merge(cfg, output, files, units)
    except BaseException:
        lock.unlink(missing_ok=True)
        raise


def _record_plan(parts: Path, plan: str, cfg: PreprocessConfig, n_units: int) -> None:
    path = parts / PLAN_FILE
    if path.is_file():
        try:
            recorded = json.loads(path.read_text()).get("plan")
        except (OSError, ValueError, AttributeError):
            recorded = None
        if recorded != plan:
            raise DataError(f"{parts} holds units written with other inputs or settings (plan {str(recorded)[:12]}, "
                            f"now {plan[:12]}); re-run with the same arguments, or delete {parts} to start over")
        return
    write_json_atomic(path, {"plan": plan, "units": n_units, "unit_bytes": cfg.unit_bytes, "tasks": cfg.tasks})


def _job_name() -> str:
    array, task = os.environ.get("SLURM_ARRAY_JOB_ID"), os.environ.get("SLURM_ARRAY_TASK_ID")
    if array and task:
        return f"SLURM job {array}_{task}"
    if os.environ.get("SLURM_JOB_ID"):
        return f"SLURM job {os.environ['SLURM_JOB_ID']}"
    return f"pid {os.getpid()} on {socket.gethostname()}"


def _unit_dir(parts: Path, unit: Unit) -> Path:
    return parts / f"unit-{unit.index:05d}"


def _write_unit(cfg: PreprocessConfig, parts: Path, unit: Unit, tokenizer: Tokenizer, dtype: str, plan: str) -> None:
    done = _unit_dir(parts, unit)
    host = socket.gethostname()
    for stale in parts.glob(f".{done.name}.tmp-{host}-*"):  # left by a killed task on this host
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parts / f".{done.name}.tmp-{host}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = ShardWriter(tmp, dtype, cfg.shard_tokens)
        try:
            stats = _encode_units(cfg, [unit], tokenizer, writer, parts)
            shards = writer.close()
        finally:
            writer.abort()
        counts = [len(c) for c in writer.chunks]
        np.save(tmp / CHUNKS_FILE, np.concatenate(writer.chunks) if writer.chunks else np.zeros(0, np.uint64))
        write_json_atomic(tmp / PART_FILE, {"plan": plan, "unit": unit.index, "input": unit.describe(),
                                            "shards": shards, "granularity": writer.granularity, "chunks": counts,
                                            "chunks_sha256": file_sha256(tmp / CHUNKS_FILE), "stats": stats.to_dict(),
                                            "written_by": _job_name()})
        if done.exists() and _part_problem(parts, unit, plan, check_files=True) is None:
            shutil.rmtree(tmp)  # another task finished the same unit meanwhile: its bytes are the same
        else:
            if done.exists():   # damaged, or from other settings: replaced
                shutil.rmtree(done)
            os.rename(tmp, done)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _log.info("unit %d (%s): %d documents, %d tokens, %d shard(s)", unit.index, unit.describe(), stats.documents,
              stats.tokens, len(shards))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _part_problem(parts: Path, unit: Unit, plan: str, check_files: bool = False) -> Optional[str]:
    """None if the unit's part is complete and intact, else what is wrong with it."""
    d = _unit_dir(parts, unit)
    if not (d / PART_FILE).is_file():
        return "is missing (its task did not finish)"
    try:
        part = json.loads((d / PART_FILE).read_text())
        if part["plan"] != plan:
            return "was written with other inputs or settings"
        if not check_files:
            return None
        for s in part["shards"]:
            path = d / s["file"]
            if not path.is_file() or path.stat().st_size != s["bytes"]:
                return f"is damaged: {path.name} is {'missing' if not path.is_file() else 'of the wrong size'}"
        chunks = np.load(d / CHUNKS_FILE)
        if len(chunks) != sum(part["chunks"]) or len(part["chunks"]) != len(part["shards"]):
            return f"is damaged: {CHUNKS_FILE} does not match {PART_FILE}"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"is damaged ({type(e).__name__}: {str(e)[:80]})"
    return None


def merge(cfg: PreprocessConfig, output: Path, files: List[InputFile], units: List[Unit]) -> dict:
    """Every unit's part in <output>.parts/ -> one shard directory `output` (byte-identical to stage=all)."""
    parts = parts_dir(output)
    if not parts.is_dir():
        raise DataError(f"{parts} does not exist: run the encode tasks (stage=encode) first")
    tokenizer = _shared_tokenizer(cfg, parts, files, units)
    plan = _plan_hash(cfg, files, units, tokenizer)
    for unit in units:
        problem = _part_problem(parts, unit, plan, check_files=True)
        if problem is not None:
            raise DataError(f"output={output} cannot be merged: unit {unit.index} of {len(units)} ({unit.describe()}) "
                            f"{problem}, in {_unit_dir(parts, unit)}; {_slice_hint(parts, units, unit)}")
    check_output(output, cfg.overwrite)
    dtype = dtype_for(tokenizer.vocab_size)
    total = sum(u.nbytes for u in units)
    stats = Stats()
    with atomic_output(output, cfg.overwrite) as tmp:
        tokenizer.save_files(tmp)
        shards, chunks = [], []
        for unit in units:
            d = _unit_dir(parts, unit)
            part = json.loads((d / PART_FILE).read_text())
            counts = np.load(d / CHUNKS_FILE)
            if file_sha256(d / CHUNKS_FILE, fsync=False) != part["chunks_sha256"]:
                raise DataError(f"output={output} cannot be merged: unit {unit.index} is damaged ({d / CHUNKS_FILE} does "
                                f"not match its sha256); {_slice_hint(parts, units, unit)}")
            bounds = np.concatenate([[0], np.cumsum(part["chunks"])]).astype(np.int64)
            for j, s in enumerate(part["shards"]):
                name = f"shard-{len(shards):05d}.arrow"
                _link(d / s["file"], tmp / name)
                shards.append({**s, "file": name})
                chunks.append((counts[bounds[j]:bounds[j + 1]], part["granularity"]))
            stats.add(Stats.from_dict(part["stats"]))
        _report(stats)
        _check_documents(cfg, stats)
        meta = finish_directory(tmp, tokenizer.to_dict(), dtype, shards, chunks, _source(cfg, files, total, stats))
    shutil.rmtree(parts, ignore_errors=True)
    _log.info("merged %d units: %d documents, %d tokens in %d shard(s) to %s", len(units), meta["num_documents"],
              meta["num_tokens"], len(meta["shards"]), output)
    return meta


def _link(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:  # a filesystem without hard links
        shutil.copyfile(src, dst)


def _slice_hint(parts: Path, units: List[Unit], unit: Unit) -> str:
    """Which array task holds `unit` (by the array size of the first task that ran) and how to re-run it."""
    try:
        tasks = int(json.loads((parts / PLAN_FILE).read_text())["tasks"])
    except (OSError, ValueError, KeyError, TypeError):
        return "run the encode tasks (stage=encode) for it; finished units are kept"
    task = next(i for i in range(tasks) if unit in slice_of(units, i, tasks))
    job = ""
    record = parts / f"slice-{task:05d}-of-{tasks:05d}.json"
    if record.is_file():
        try:
            job = f", {json.loads(record.read_text())['job']}"
        except (OSError, ValueError, KeyError):
            pass
    return (f"it belongs to slice {task} of {tasks}{job}: re-run that task alone once the array has ended "
            f"(sbatch --array={task} slurm/preprocess.sh <same arguments>, or gpt-preprocess stage=encode "
            f"<same arguments>); finished units are kept")


__all__ = ["preprocess", "merge", "parts_dir", "METADATA_FILE"]
