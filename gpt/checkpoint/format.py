"""On-disk checkpoint format, version 2: layout-free, sharded, safetensors only.

    <run.dir>/checkpoints/
      latest                      text: name of the newest complete checkpoint (written last)
      best                        text (optional, written by fine-tuning): a checkpoint pruning never deletes
      step_00000012/
        meta.json                 format, version, step, trainer state, resolved config, layout it
                                  was written with, tokenizer, code version, fp16 loss scale, files
                                  (bytes + xxh3-128 checksum), tensor index
        rank-00000.safetensors    one file per rank: the fragments of tensors this rank held, plus its RNG
        tokenizer.json            when the tokenizer needs files
      .tmp-step_00000016/         a save in progress (or one that was interrupted): never loaded

Each parameter is stored under its one-process name (e.g. `blocks.3.attn.qkv.weight`) in fp32, with
its Adam moments beside it (`<name>#exp_avg`, `<name>#exp_avg_sq`), as *pieces* (the
tensor-parallel slices it had when saved, once per tensor group) made of *fragments*: flat ranges
[start, start + numel) of a piece (row-major), each a 1-D tensor in the file of the rank that held
it (its ZeRO partition; without ZeRO, the data ranks of a replica split the writing). The index in
meta.json says, for every name, its full shape, the dimension its slices split along, and for every
piece its shape and fragments (file, start, numel) — enough to rebuild any flat range of any slice
for any other layout. Nothing is pickled: loading a checkpoint cannot run code.

Version 1 (one whole piece per tensor, no fragments) is still read: `read_meta` turns its index
into version 2's form.

A directory only gets its `step_*` name once every rank's file and meta.json are on disk, so an
interrupted save is never picked up; a damaged one is caught by the sizes and checksums recorded in
meta.json (`validate`): XXH3-128 since version 2 (computed while writing; ~10x cheaper than sha256,
which version 1 recorded and which is still checked there), for corruption, not for tampering (an
unsigned meta.json could be rewritten with any hash).
"""

import hashlib
import json
import os
import re
from pathlib import Path

import xxhash

from gpt.errors import CheckpointError

FORMAT = "gpt-checkpoint"
VERSION = 2
READABLE_VERSIONS = (1, 2)
META = "meta.json"
LATEST = "latest"
BEST = "best"
POINTERS = (LATEST, BEST)
MOMENTS = ("exp_avg", "exp_avg_sq")
RNG_CPU, RNG_CUDA = "__rng__.cpu", "__rng__.cuda"
RNG_TENSOR_PARALLEL = "__rng__.tensor_parallel"  # the tensor-parallel dropout stream (gpt/parallel/rng.py)
TMP_PREFIX = ".tmp-"
_STEP_DIR = re.compile(r"^step_(\d{8})$")
_HASH_CHUNK = 16 << 20


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


def moment_key(name: str, moment: str) -> str:
    return f"{name}#{moment}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_text_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename inside `path` durable (POSIX needs the directory itself synced)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_readable(path: Path) -> None:
    """safetensors creates files readable by their owner only; give them the umask's usual mode."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, 0o666 & ~mask)


CHECKSUM = "xxh3_128"  # the checksum version 2 records per file; version 1 recorded "sha256"
CHECKSUMS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}


def checksum(path: Path, algorithm: str = CHECKSUM) -> str:
    h = CHECKSUMS[algorithm]()
    with open(path, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


def sha256(path: Path) -> str:
    return checksum(path, "sha256")


def recorded_checksum(record: dict) -> tuple[str, str] | None:
    """(algorithm, hex digest) a meta.json file record holds, None if it holds none."""
    return next(((a, record[a]) for a in CHECKSUMS if record.get(a)), None)


def step_of(path: Path) -> int | None:
    m = _STEP_DIR.match(path.name)
    return int(m.group(1)) if m else None


def complete_checkpoints(root: Path) -> list[Path]:
    """Step directories that were renamed into place (temporary ones never match), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and step_of(p) is not None]
    return sorted(found, key=step_of)


def read_pointer(root: Path, pointer: str) -> str | None:
    path = root / pointer
    return path.read_text().strip() if path.is_file() else None


def candidates(path: str | Path) -> list[Path]:
    """Checkpoints to try for a resume from `path`, best first; [] when there is none yet.

    `path` is a run.dir, its checkpoints/ dir, one checkpoint dir, or a pointer file
    (`checkpoints/latest`, `checkpoints/best`). For a run the `latest` pointer comes first; then the
    other complete checkpoints, newest first (used only with checkpoint.fallback). A run whose
    `latest` is missing (a crash between renaming a checkpoint into place and writing the pointer)
    starts from its newest complete checkpoint.
    """
    path = Path(path)
    if (path / META).is_file() or step_of(path) is not None:
        return [path]
    if path.is_file():
        return [_follow(path)]
    root = path if path.name == "checkpoints" else checkpoints_dir(path)
    done = complete_checkpoints(root)[::-1]
    name = read_pointer(root, LATEST)
    if name is None:
        return done
    first = root / name
    return [first] + [p for p in done if p.name != name and (step_of(first) is None or step_of(p) < step_of(first))]


def resolve(path: str | Path, *, verify: bool = True) -> Path | None:
    """The checkpoint to load from a run.dir, checkpoints dir, checkpoint dir or pointer file (None:
    the run has no checkpoint yet), validated."""
    found = candidates(path)
    if not found:
        return None
    validate(found[0], verify=verify)
    return found[0]


def _follow(pointer: Path) -> Path:
    name = pointer.read_text().strip()
    target = pointer.parent / name
    if not (target / META).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint; "
                              f"delete {pointer} to start over or point it at a directory listed in {pointer.parent}")
    return target


def write_pointer(run_dir: str | Path, pointer: str, step: int) -> None:
    write_text_atomic(checkpoints_dir(run_dir) / pointer, step_dir_name(step) + "\n")


def read_meta(ckpt: Path) -> dict:
    path = ckpt / META
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt} is not a directory: no such checkpoint")
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {ckpt} is not a complete checkpoint") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); use checkpoint.fallback=true to resume from the previous one") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a gpt checkpoint (format={found!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has format version {meta.get('version')}; this gpt reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))} (a newer gpt wrote it: upgrade gpt to load it)")
    for key in ("step", "files", "tensors", "config", "layout"):
        if key not in meta:
            raise CheckpointError(f"{path} has no {key!r} entry: the file is corrupt")
    if meta["version"] == 1:
        upgrade_index(meta)
    return meta


def upgrade_index(meta: dict) -> None:
    """Version 1's pieces (one whole tensor-parallel slice in one file) as version 2's: one fragment
    covering the piece, marked `shaped` (stored with its shape, not flat)."""
    for entry in meta["tensors"].values():
        for piece in entry["pieces"]:
            if "fragments" not in piece:
                piece["fragments"] = [{"file": piece.pop("file"), "start": 0, "numel": numel(piece["shape"]),
                                       "shaped": True}]


def numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def verify_file(ckpt: Path, name: str, record: dict, *, hashes: bool = True) -> None:
    """One rank file exists with its recorded size (catches truncation) and checksum (any damage)."""
    f = ckpt / name
    if not f.is_file():
        raise CheckpointError(f"{f} is missing; the checkpoint is incomplete (use checkpoint.fallback=true to resume "
                              f"from the previous one)")
    size = f.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"{f} has {size} bytes, meta.json records {record['bytes']}: the file is truncated or "
                              f"corrupt (use checkpoint.fallback=true to resume from the previous one)")
    recorded = recorded_checksum(record)
    if hashes and recorded and checksum(f, recorded[0]) != recorded[1]:
        raise CheckpointError(f"{f} does not match the {recorded[0]} checksum in meta.json: the file is corrupt (use "
                              f"checkpoint.fallback=true to resume from the previous one)")


def validate(ckpt: Path, *, verify: bool = True, files: list[str] | None = None) -> dict:
    """meta.json parses and every listed file (or those in `files`) is intact; returns the meta."""
    meta = read_meta(ckpt)
    for name in (meta["files"] if files is None else files):
        verify_file(ckpt, name, meta["files"][name], hashes=verify)
    return meta
