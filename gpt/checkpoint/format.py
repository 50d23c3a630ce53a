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

import json
import os
import re
import stat
from pathlib import Path

from gpt.checksums import ALGORITHMS, DEFAULT, HEX, file_checksum
from gpt.errors import CheckpointError
from gpt.paths import member_file, plain_name

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
_POINTER_BYTES = 256  # a pointer holds one step directory name; more is not a pointer
FALLBACK_HINT = "use checkpoint.fallback=true to resume from the previous one"


def step_dir_name(step: int) -> str:
    return f"step_{step:08d}"


def rank_file(rank: int) -> str:
    return f"rank-{rank:05d}.safetensors"


def moment_key(name: str, moment: str) -> str:
    return f"{name}#{moment}"


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"


def write_text_atomic(path: Path, text: str) -> None:
    """Readers see the old file or the whole new one; a failed write (a full disk) leaves the old one and no debris."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
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


CHECKSUM = DEFAULT  # the checksum version 2 records per file; version 1 recorded "sha256"
CHECKSUMS = ALGORITHMS


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
    """The checkpoint name in `root/<pointer>` (None: no such pointer).

    Only a `step_NNNNNNNN` name is a pointer: it cannot lead outside `root` (no path, no `..`), so an
    absolute path, `..`, random bytes, an empty file, a symlink or a FIFO are refused in one line.
    """
    path = Path(root) / pointer
    try:
        st = os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):  # no pointer, or no checkpoints/ directory at all
        return None
    fix = (f"delete it to resume from the newest complete checkpoint in {root}, or write the name of one of its "
           f"step_* directories into it")
    if not stat.S_ISREG(st.st_mode):
        raise CheckpointError(f"{path} is not a regular file (a pointer is a text file holding a step_NNNNNNNN name); {fix}")
    with open(path, "rb") as f:
        raw = f.read(_POINTER_BYTES + 1)
    name = raw.decode("utf-8", errors="replace").strip()
    if len(raw) > _POINTER_BYTES or _STEP_DIR.match(name) is None:
        shown = name[:40] + ("..." if len(name) > 40 else "")
        raise CheckpointError(f"{path} holds {shown!r}, not a checkpoint name (step_NNNNNNNN, a directory inside "
                              f"{root}); {fix}")
    return name


def candidates(path: str | Path, *, ignore_latest: bool = False) -> list[Path]:
    """Checkpoints to try for a resume from `path`, best first; [] when there is none yet.

    `path` is a run.dir, its checkpoints/ dir, one checkpoint dir, or a pointer file
    (`checkpoints/latest`, `checkpoints/best`). For a run the `latest` pointer comes first; then the
    other complete checkpoints, newest first (used only with checkpoint.fallback). A run whose
    `latest` is missing (a crash between renaming a checkpoint into place and writing the pointer)
    starts from its newest complete checkpoint; so does one whose `latest` is unreadable when
    `ignore_latest` (checkpoint.fallback), which otherwise is an error. Every candidate of a run is
    a `step_NNNNNNNN` directory inside its checkpoints/.
    """
    path = Path(path)
    if (path / META).is_file() or step_of(path) is not None:
        return [path]
    if os.path.lexists(path) and not path.is_dir():
        return [_follow(path)]
    root = path if path.name == "checkpoints" else checkpoints_dir(path)
    done = complete_checkpoints(root)[::-1]
    name = None if ignore_latest else read_pointer(root, LATEST)
    if name is None:
        return done
    first = root / name
    return [first] + [p for p in done if p.name != name and step_of(p) < step_of(first)]


def resolve(path: str | Path, *, verify: bool = True) -> Path | None:
    """The checkpoint to load from a run.dir, checkpoints dir, checkpoint dir or pointer file (None:
    the run has no checkpoint yet), validated."""
    found = candidates(path)
    if not found:
        return None
    validate(found[0], verify=verify)
    return found[0]


def _follow(pointer: Path) -> Path:
    name = read_pointer(pointer.parent, pointer.name)
    target = pointer.parent / name
    if not (target / META).is_file():
        raise CheckpointError(f"{pointer} names {name!r}, which is not a complete checkpoint; "
                              f"delete {pointer} to start over or point it at a directory listed in {pointer.parent}")
    return target


def write_pointer(run_dir: str | Path, pointer: str, step: int) -> None:
    write_text_atomic(checkpoints_dir(run_dir) / pointer, step_dir_name(step) + "\n")


def read_meta(ckpt: Path) -> dict:
    """meta.json of `ckpt`, checked for format, version and structure (every key the readers use)."""
    path = ckpt / META
    if not ckpt.is_dir():
        raise CheckpointError(f"{ckpt} is not a directory: no such checkpoint")
    try:
        member_file(ckpt, META, where=ckpt, error=CheckpointError)  # a FIFO would block read_text forever
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {ckpt} is not a complete checkpoint") from None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); {FALLBACK_HINT}") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{path} is not a gpt checkpoint (format={found!r})")
    if meta.get("version") not in READABLE_VERSIONS:
        raise CheckpointError(f"{path} has format version {meta.get('version')}; this gpt reads versions "
                              f"{', '.join(map(str, READABLE_VERSIONS))} (a newer gpt wrote it: upgrade gpt to load it)")
    for key in ("step", "files", "tensors", "config", "layout", "trainer"):
        if key not in meta:
            raise CheckpointError(f"{path} has no {key!r} entry: the file is corrupt ({FALLBACK_HINT})")
    _check_structure(path, meta)
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


def _check_structure(path: Path, meta: dict) -> None:
    """The shapes of meta.json's entries: what a reader indexes cannot be missing or of the wrong type.

    Every file a tensor piece (version 1) or fragment (version 2) lives in must be listed in `files`,
    so the size and checksum checks cover every byte that is read; every listed name is a plain file
    name inside the checkpoint.
    """
    def need(ok: bool, what: str) -> None:
        if not ok:
            raise CheckpointError(f"{path}: {what}; the file is corrupt ({FALLBACK_HINT})")

    def count(v) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and v >= 0

    def listed(file, where: str) -> None:
        need(isinstance(file, str) and file in files,
             f"{where} lives in {file!r}, which 'files' does not list (every file read is checked against its "
             f"recorded size and checksum)")

    need(count(meta["step"]), "'step' must be a non-negative integer")
    files = meta["files"]
    need(isinstance(files, dict) and len(files) > 0,
         f"'files' must list at least one rank file (name: bytes, {CHECKSUM})")
    want = "sha256" if meta["version"] == 1 else CHECKSUM
    for name, record in files.items():
        plain_name(name, where=path, error=CheckpointError)
        need(name != META, f"'files' lists {META} itself")
        need(isinstance(record, dict) and count(record.get("bytes")) and isinstance(record.get(want), str)
             and HEX[want].match(record[want]) is not None, f"files[{name!r}] needs integer 'bytes' and a hex {want!r}")
    tensors = meta["tensors"]
    need(isinstance(tensors, dict) and len(tensors) > 0, "'tensors' must index at least one tensor")
    for name, entry in tensors.items():
        need(isinstance(entry, dict) and isinstance(entry.get("shape"), list) and all(map(count, entry["shape"]))
             and isinstance(entry.get("pieces"), list) and len(entry["pieces"]) > 0
             and (entry.get("partition_dim") is None or (count(entry["partition_dim"])
                                                         and entry["partition_dim"] < len(entry["shape"]))),
             f"tensors[{name!r}] needs 'shape', 'partition_dim' and a non-empty 'pieces' list")
        for piece in entry["pieces"]:
            need(isinstance(piece, dict) and isinstance(piece.get("shape"), list) and all(map(count, piece["shape"]))
                 and len(piece["shape"]) == len(entry["shape"]), f"a piece of tensors[{name!r}] has no valid 'shape'")
            if meta["version"] == 1:
                listed(piece.get("file"), f"a piece of tensors[{name!r}]")
                continue
            frags = piece.get("fragments")
            need(isinstance(frags, list) and len(frags) > 0, f"a piece of tensors[{name!r}] has no 'fragments' list")
            for fr in frags:
                need(isinstance(fr, dict) and count(fr.get("start")) and count(fr.get("numel")),
                     f"a fragment of tensors[{name!r}] needs integer 'start' and 'numel'")
                listed(fr.get("file"), f"a fragment of tensors[{name!r}]")
    config = meta["config"]
    need(isinstance(config, dict) and isinstance(config.get("model"), dict) and isinstance(config.get("train"), dict),
         "'config' must hold the run's 'model' and 'train' sections")
    need(isinstance(meta["layout"], dict) and all(count(meta["layout"].get(k)) for k in ("world", "tensor", "pipeline", "data")),
         "'layout' needs integer world, tensor, pipeline and data")
    need(isinstance(meta["trainer"], dict), "'trainer' must be an object")


def member(ckpt: Path, name: str) -> Path:
    """A file named by meta.json: a regular file inside `ckpt` (FileNotFoundError when absent)."""
    return member_file(ckpt, name, where=ckpt / META, error=CheckpointError)


def verify_file(ckpt: Path, name: str, record: dict, *, hashes: bool = True) -> None:
    """One rank file exists with its recorded size (catches truncation) and checksum (any damage)."""
    f = ckpt / name
    try:
        member(ckpt, name)
    except FileNotFoundError:
        raise CheckpointError(f"{f} is missing; the checkpoint is incomplete ({FALLBACK_HINT})") from None
    size = f.stat().st_size
    if size != record["bytes"]:
        raise CheckpointError(f"{f} has {size} bytes, meta.json records {record['bytes']}: the file is truncated or "
                              f"corrupt (use checkpoint.fallback=true to resume from the previous one)")
    recorded = recorded_checksum(record)
    if hashes and recorded and file_checksum(f, recorded[0]) != recorded[1]:
        raise CheckpointError(f"{f} does not match the {recorded[0]} checksum in meta.json: the file is corrupt (use "
                              f"checkpoint.fallback=true to resume from the previous one)")


def validate(ckpt: Path, *, verify: bool = True, files: list[str] | None = None) -> dict:
    """meta.json parses and every listed file (or those in `files`) is intact; returns the meta."""
    meta = read_meta(ckpt)
    for name in (meta["files"] if files is None else files):
        verify_file(ckpt, name, meta["files"][name], hashes=verify)
    return meta
