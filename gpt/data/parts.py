"""Job arrays: array task i of n writes slice i of the input's units into `<output>.parts/`, each unit
atomically into `unit-NNNNN/` (shards, chunks.npy, part.json; a killed task leaves only a hidden
temporary directory); the task that finds every unit finished takes `merge.lock` and merges. The
merge hard-links the shards into `output` under their global numbers and writes the index and
metadata.json as one process would, so the result is byte-identical to `stage=all` whatever the
number of tasks; it refuses, in one line naming it, while any unit is missing, damaged or was
written with other inputs or settings. `stage=tokenizer` trains the BPE once for all tasks.
"""

import hashlib
import json
import os
import shutil
import socket
from pathlib import Path
from typing import List, Optional

import numpy as np

from gpt import log
from gpt.checksums import file_checksum
from gpt.config.commands import PreprocessConfig
from gpt.data.format import VERSION, dtype_for, write_json_atomic
from gpt.data.inputs import InputFile, Unit, slice_of
from gpt.data.pipeline import (Stats, build_tokenizer, check_documents, encode_units, report, source_of,
                               train_bpe_on_input)
from gpt.data.tokenizer import Tokenizer
from gpt.data.writer import ShardWriter, atomic_output, check_output, finish_directory, pid_alive
from gpt.errors import DataError

_log = log.get("data.preprocess")
PART_FILE = "part.json"
PLAN_FILE = "plan.json"
CHUNKS_FILE = "chunks.npy"
LOCK_FILE = "merge.lock"


def parts_dir(output: Path) -> Path:
    """Where the array tasks of `output` write their units: a sibling `<output>.parts/`, removed after the merge."""
    return output.parent / f"{output.name}.parts"


def train_tokenizer_stage(cfg: PreprocessConfig, output: Path, files: List[InputFile], units: List[Unit]) -> None:
    parts = parts_dir(output)
    parts.mkdir(parents=True, exist_ok=True)
    tok = train_bpe_on_input(cfg, files, units)
    tmp = parts / f".tokenizer.tmp-{socket.gethostname()}-{os.getpid()}"
    tmp.mkdir(exist_ok=True)
    tok.save_files(tmp)
    os.replace(tmp / "tokenizer.json", parts / "tokenizer.json")
    shutil.rmtree(tmp, ignore_errors=True)
    _log.info("saved the tokenizer to %s; now run the encode tasks (stage=encode)", parts / "tokenizer.json")


def _shared_tokenizer(cfg: PreprocessConfig, parts: Path, files: List[InputFile], units: List[Unit]) -> Tokenizer:
    """The tokenizer every array task uses: for bpe the one trained by stage=tokenizer."""
    if cfg.tokenizer.kind != "bpe":
        return build_tokenizer(cfg, files, units)
    from gpt.data.hf_tokenizer import DEFAULT_EOD, HFTokenizer

    path = parts / "tokenizer.json"
    if not path.is_file():
        raise DataError(f"{path} does not exist: with tokenizer.kind=bpe, train the tokenizer first with stage=tokenizer "
                        f"(slurm/preprocess.sh does it before submitting the array)")
    tok = HFTokenizer.from_file(path, kind="bpe", eod_token=cfg.tokenizer.eod_token or DEFAULT_EOD)
    tok.source = None  # a trained tokenizer is identified by its JSON (sha256), as in stage=all
    return tok


def _plan_hash(cfg: PreprocessConfig, files: List[InputFile], units: List[Unit], tokenizer: Tokenizer) -> str:
    plan = {"version": VERSION, "tokenizer": tokenizer.to_dict(), "shard_tokens": cfg.shard_tokens,
            "text_key": cfg.text_key, "on_error": cfg.on_error, "split": cfg.split, "unit_bytes": cfg.unit_bytes,
            "files": [[f.path, f.kind, f.compression, f.split, f.size, os.stat(f.path).st_mtime_ns] for f in files],
            "units": [[[s.file.path, s.start, s.end] for s in u.spans] for u in units]}
    return hashlib.sha256(json.dumps(plan, sort_keys=True).encode()).hexdigest()


def encode_stage(cfg: PreprocessConfig, output: Path, files: List[InputFile], units: List[Unit]) -> dict:
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
        if pid.isdigit() and not pid_alive(int(pid)):
            shutil.rmtree(stale, ignore_errors=True)
    tmp = parts / f".{done.name}.tmp-{host}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        writer = ShardWriter(tmp, dtype, cfg.shard_tokens)
        try:
            stats = encode_units(cfg, [unit], tokenizer, writer, parts)
            shards = writer.close()
        finally:
            writer.abort()
        counts = [len(c) for c in writer.chunks]
        np.save(tmp / CHUNKS_FILE, np.concatenate(writer.chunks) if writer.chunks else np.zeros(0, np.uint64))
        write_json_atomic(tmp / PART_FILE, {"plan": plan, "unit": unit.index, "input": unit.describe(),
                                            "shards": shards, "granularity": writer.granularity, "chunks": counts,
                                            "chunks_xxh3_128": file_checksum(tmp / CHUNKS_FILE, fsync=True),
                                            "stats": stats.to_dict(), "written_by": _job_name()})
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
            if file_checksum(d / CHUNKS_FILE) != part["chunks_xxh3_128"]:
                raise DataError(f"output={output} cannot be merged: unit {unit.index} is damaged ({d / CHUNKS_FILE} does "
                                f"not match its checksum); {_slice_hint(parts, units, unit)}")
            bounds = np.concatenate([[0], np.cumsum(part["chunks"])]).astype(np.int64)
            for j, s in enumerate(part["shards"]):
                name = f"shard-{len(shards):05d}.arrow"
                _link(d / s["file"], tmp / name)
                shards.append({**s, "file": name})
                chunks.append((counts[bounds[j]:bounds[j + 1]], part["granularity"]))
            stats.add(Stats.from_dict(part["stats"]))
        report(stats)
        check_documents(cfg, stats)
        meta = finish_directory(tmp, tokenizer.to_dict(), dtype, shards, chunks, source_of(cfg, files, total, stats))
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

