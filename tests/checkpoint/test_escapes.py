"""Nothing read from a checkpoint escapes its directory: pointers, file names in meta.json, FIFOs,
symlinks (gpt/checkpoint/format.py, load.select, tools.convert).

Before: `latest` holding an absolute path or `..` resumed from another run's checkpoint; with
checkpoint.fallback=true an empty `latest` moved the whole checkpoints/ aside (an absolute one moved
a directory outside the run) and restarted from step 0; a FIFO named by meta.json hung gpt-generate
and resume; piece files were not covered by the checksum check; convert copied a symlink's target.
All in this process, on copies of the session's saved run (step 2 and step 4).
"""

import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from helpers import no_hang

from gpt.checkpoint import format as fmt
from gpt.checkpoint.load import select
from gpt.checkpoint.reader import TensorReader
from gpt.checkpoint.tools import convert
from gpt.errors import CheckpointError

ONE_RANK = SimpleNamespace(layout=SimpleNamespace(world=1), rank=0)


@pytest.fixture
def run(saved_run, tmp_path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(saved_run[0], copy)
    return copy


def one_line(e) -> str:
    message = str(e.value)
    assert "\n" not in message and "Traceback" not in message
    return message


BAD_POINTERS = {
    "absolute": lambda other: str(other / "checkpoints" / "step_00000004"),
    "dotdot": lambda other: "..",
    "relative-escape": lambda other: "../../other/checkpoints/step_00000004",
    "empty": lambda other: "",
    "random-bytes": lambda other: os.urandom(48),
    "step-then-escape": lambda other: "step_00000004/../../..",
}


@pytest.mark.parametrize("kind", sorted(BAD_POINTERS))
@pytest.mark.parametrize("pointer", [fmt.LATEST, fmt.BEST])
def test_a_pointer_is_only_ever_a_step_name_inside_checkpoints(run, tmp_path, kind, pointer):
    other = tmp_path / "other"
    shutil.copytree(run, other)  # another run a pointer could lead to
    root = fmt.checkpoints_dir(run)
    value = BAD_POINTERS[kind](other)
    (root / pointer).write_bytes(value if isinstance(value, bytes) else value.encode())
    target = run if pointer == fmt.LATEST else root / pointer  # a run resumes via latest; best is given by path
    with pytest.raises(CheckpointError) as e:
        fmt.resolve(target)
    message = one_line(e)
    assert f"{root / pointer} holds" in message and "not a checkpoint name (step_NNNNNNNN" in message


@pytest.mark.parametrize("kind", ["fifo", "symlink", "directory"])
def test_a_pointer_that_is_not_a_regular_file_is_refused_without_reading_it(run, kind):
    root = fmt.checkpoints_dir(run)
    (root / fmt.LATEST).unlink()
    if kind == "fifo":
        os.mkfifo(root / fmt.LATEST)
    elif kind == "symlink":
        (root / fmt.LATEST).symlink_to(root / "step_00000004")
    else:
        (root / fmt.LATEST).mkdir()
    with no_hang(root / fmt.LATEST), pytest.raises(CheckpointError, match="is not a regular file") as e:
        fmt.candidates(run)
    one_line(e)


@pytest.mark.parametrize("kind", ["absolute", "empty", "random-bytes", "dotdot"])
def test_fallback_ignores_a_bad_latest_and_moves_nothing(run, tmp_path, kind, gpt_log):
    other = tmp_path / "other"
    shutil.copytree(run, other)
    root = fmt.checkpoints_dir(run)
    value = BAD_POINTERS[kind](other)
    (root / fmt.LATEST).write_bytes(value if isinstance(value, bytes) else value.encode())
    ckpt, meta = select(run, ONE_RANK, fallback=True, verify=True)
    assert ckpt == root / "step_00000004" and meta["step"] == 4  # the newest complete one
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004"]  # nothing moved
    assert fmt.read_pointer(root, fmt.LATEST) == "step_00000004"  # repaired
    assert sorted(p.name for p in fmt.checkpoints_dir(other).iterdir()) == ["latest", "step_00000002", "step_00000004"]
    warnings = [r.getMessage() for r in gpt_log if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "checkpoint.fallback" in warnings[0] and "\n" not in warnings[0]


def test_fallback_moves_only_the_one_damaged_step_directory_and_says_so_once(run, gpt_log):
    root = fmt.checkpoints_dir(run)
    rank = root / "step_00000004" / "rank-00000.safetensors"
    data = bytearray(rank.read_bytes())
    data[-100] ^= 0xFF
    rank.write_bytes(bytes(data))
    ckpt, _ = select(run, ONE_RANK, fallback=True, verify=True)
    assert ckpt == root / "step_00000002"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004.corrupt"]
    warnings = [r.getMessage() for r in gpt_log if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "moved step_00000004 aside to step_00000004.corrupt" in warnings[0]


def test_a_bad_latest_without_any_checkpoint_left_is_an_error_not_a_fresh_start(run):
    root = fmt.checkpoints_dir(run)
    for step in ("step_00000002", "step_00000004"):
        shutil.rmtree(root / step)
    (root / fmt.LATEST).write_text("..\n")
    with pytest.raises(CheckpointError, match="no intact checkpoint left"):
        select(run, ONE_RANK, fallback=True, verify=True)


def edit_meta(ckpt: Path, change) -> None:
    meta = json.loads((ckpt / fmt.META).read_text())
    change(meta)
    (ckpt / fmt.META).write_text(json.dumps(meta))


def _piece(meta) -> dict:
    return next(iter(meta["tensors"].values()))["pieces"][0]


def _fragment(meta) -> dict:
    return _piece(meta)["fragments"][0]


META_DAMAGE = {
    "files-empty-list": (lambda m: m.update(files=[]), "'files' must list at least one rank file"),
    "files-empty-dict": (lambda m: m.update(files={}), "'files' must list at least one rank file"),
    "file-absolute": (lambda m: m.update(files={"/etc/passwd": {"bytes": 1, fmt.CHECKSUM: "0" * 32}}),
                      "names the file '/etc/passwd', which is not a plain file name"),
    "file-dotdot": (lambda m: m["files"].update({"..": {"bytes": 1, fmt.CHECKSUM: "0" * 32}}), "names the file '..'"),
    "file-escape": (lambda m: m.update(files={"../../x": m["files"]["rank-00000.safetensors"]}),
                    "names the file '../../x'"),
    "no-checksum": (lambda m: m["files"]["rank-00000.safetensors"].pop(fmt.CHECKSUM),
                    f"needs integer 'bytes' and a hex {fmt.CHECKSUM!r}"),
    "checksum-short": (lambda m: m["files"]["rank-00000.safetensors"].update({fmt.CHECKSUM: "0" * 31}),
                       f"needs integer 'bytes' and a hex {fmt.CHECKSUM!r}"),
    "fragment-unlisted": (lambda m: _fragment(m).update(file="extra.safetensors"), "which 'files' does not list"),
    "fragment-escape": (lambda m: _fragment(m).update(file="../step_00000002/rank-00000.safetensors"),
                        "which 'files' does not list"),
    "fragment-no-start": (lambda m: _fragment(m).pop("start"), "needs integer 'start' and 'numel'"),
    "fragments-empty": (lambda m: _piece(m).update(fragments=[]), "has no 'fragments' list"),
    "tensors-empty": (lambda m: m.update(tensors={}), "'tensors' must index at least one tensor"),
    "pieces-empty": (lambda m: next(iter(m["tensors"].values())).update(pieces=[]), "non-empty 'pieces' list"),
    "config-no-model": (lambda m: m["config"].pop("model"), "'config' must hold the run's 'model' and 'train'"),
    "layout-string": (lambda m: m.update(layout="tp2"), "'layout' needs integer world"),
    "step-negative": (lambda m: m.update(step=-1), "'step' must be a non-negative integer"),
}
MISSING_KEYS = ("step", "files", "tensors", "config", "layout", "trainer")


@pytest.mark.parametrize("damage", sorted(META_DAMAGE) + [f"missing-{k}" for k in MISSING_KEYS])
def test_a_damaged_meta_json_is_one_line(run, damage):
    ckpt = fmt.checkpoints_dir(run) / "step_00000004"
    if damage.startswith("missing-"):
        key = damage.removeprefix("missing-")
        edit_meta(ckpt, lambda m: m.pop(key))
        expected = f"has no {key!r} entry"
    else:
        change, expected = META_DAMAGE[damage]
        edit_meta(ckpt, change)
    with pytest.raises(CheckpointError) as e:
        fmt.resolve(run, verify=False)  # what gpt-generate does (sizes only)
    assert expected in one_line(e)
    with pytest.raises(CheckpointError):  # and resume
        select(run, ONE_RANK, fallback=False, verify=True)


@pytest.mark.parametrize("what", ["meta", "rank-file", "piece-file"])
def test_a_fifo_never_hangs_generate_or_resume(run, what):
    """A FIFO opened for reading blocks until a writer appears (SIGTERM could not end it)."""
    ckpt = fmt.checkpoints_dir(run) / "step_00000004"
    if what == "meta":
        (ckpt / fmt.META).unlink()
        os.mkfifo(ckpt / fmt.META)
    elif what == "rank-file":
        (ckpt / "rank-00000.safetensors").unlink()
        os.mkfifo(ckpt / "rank-00000.safetensors")
    with no_hang(ckpt / fmt.META, ckpt / "rank-00000.safetensors"):
        if what == "piece-file":  # a reader given a piece in a FIFO (past the checks above)
            meta = fmt.read_meta(ckpt)
            (ckpt / "rank-00000.safetensors").unlink()
            os.mkfifo(ckpt / "rank-00000.safetensors")
            with pytest.raises(CheckpointError, match=r"is not a regular file \(a FIFO\)"):
                TensorReader(ckpt, meta).file("rank-00000.safetensors")
            return
        for check in (lambda: fmt.resolve(run, verify=False), lambda: select(run, ONE_RANK, fallback=False, verify=True)):
            with pytest.raises(CheckpointError, match=r"is not a regular file \(a FIFO\)") as e:
                check()
            one_line(e)


def test_a_rank_file_symlinked_out_of_the_checkpoint_is_refused(run, tmp_path):
    ckpt = fmt.checkpoints_dir(run) / "step_00000004"
    outside = tmp_path / "outside.safetensors"
    shutil.move(ckpt / "rank-00000.safetensors", outside)
    (ckpt / "rank-00000.safetensors").symlink_to(outside)
    with pytest.raises(CheckpointError, match=re.escape(f"is a symlink to {outside}, outside {ckpt}")) as e:
        fmt.resolve(run)
    one_line(e)


def test_convert_never_copies_a_symlinks_target(run, tmp_path):
    ckpt = fmt.checkpoints_dir(run) / "step_00000004"
    secret = tmp_path / "secret.txt"
    secret.write_text("private\n")
    (ckpt / "notes.txt").symlink_to(secret)
    (ckpt / "README").write_text("kept\n")  # a regular extra file is copied
    out = convert(ckpt, tmp_path / "converted", tensor=1)
    assert not (out / "notes.txt").exists() and (out / "README").read_text() == "kept\n"
    assert all(b"private" not in f.read_bytes() for f in out.iterdir())
    fmt.validate(out)
