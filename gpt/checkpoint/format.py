"""On-disk checkpoint format, version 1: layout-free, sharded, safetensors only.

    <run.dir>/checkpoints/
      latest                      text: name of the newest complete checkpoint (written last)
      step_00000012/
        meta.json                 format, version, step, trainer state, resolved config, layout it
                                  was written with, tokenizer, code version, tensor index
        rank-00000.safetensors    one file per rank: the tensors this rank was assigned, plus its RNG
        tokenizer.json            when the tokenizer needs files

Each parameter is stored under its one-process name (e.g. `blocks.3.attn.qkv.weight`) as the
tensor-parallel slices it had when saved, in fp32, with its Adam moments beside it
(`<name>#exp_avg`, `<name>#exp_avg_sq`). The index in meta.json says, for every name, its full shape,
the dimension its slices split along and which file holds each slice — enough to rebuild any slice
for any other layout. Nothing is pickled: loading a checkpoint cannot run code.
"""

import json
import os
import re
from pathlib import Path

from gpt.errors import CheckpointError

FORMAT = "gpt-checkpoint"
VERSION = 1
META = "meta.json"
LATEST = "latest"
BEST = "best"
MOMENTS = ("exp_avg", "exp_avg_sq")
_STEP_DIR = re.compile(r"^step_(\d{8})$")


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


def complete_checkpoints(root: Path) -> list[Path]:
    """Step directories that were renamed into place (temporary ones never match), oldest first."""
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _STEP_DIR.match(p.name)]
    return sorted(found, key=lambda p: int(_STEP_DIR.match(p.name).group(1)))


def resolve(path: str | Path) -> Path | None:
    """A run.dir, its checkpoints/ dir, a checkpoint dir, or a pointer file (`checkpoints/latest`,
    `checkpoints/best`) -> the checkpoint dir to load (None: the run has no checkpoint yet)."""
    path = Path(path)
    if (path / META).is_file():
        return path
    if path.is_file():
        return _follow(path)
    root = path if path.name == "checkpoints" else checkpoints_dir(path)
    latest = root / LATEST
    return _follow(latest) if latest.is_file() else None


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
    try:
        meta = json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {ckpt} is not a complete checkpoint") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{path} is corrupt ({e}); use checkpoint.fallback=true to resume from the previous one") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a gpt checkpoint (format={meta.get('format')!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {meta.get('version')}; this gpt reads version {VERSION}")
    return meta


def verify_files(ckpt: Path, meta: dict) -> None:
    """Every rank file listed in meta.json exists with its recorded size (catches truncation)."""
    for name, size in meta["files"].items():
        f = ckpt / name
        if not f.is_file():
            raise CheckpointError(f"{f} is missing; the checkpoint is incomplete")
        if f.stat().st_size != size:
            raise CheckpointError(f"{f} has {f.stat().st_size} bytes, meta.json records {size}: the file is truncated or corrupt")
