"""Paths that come from data, made safe: names read from files, and outputs that replace their inputs.

A checkpoint's meta.json, a shard directory's metadata.json and a Hugging Face index name the files
they hold. Such a name is data that anyone who handed over the directory could have written, so it
is only accepted as a plain file name inside that directory, resolving (symlinks followed) inside it,
and naming a regular file: `../x`, `/etc/passwd`, a symlink out, or a FIFO (which would block the
reader forever) are refused in one line.

Commands with `overwrite=true` replace their output directory once the new one is complete; an
output that is, contains or lies inside one of the inputs would destroy what the command reads, so
`refuse_overlap` refuses it before any work.
"""

import os
import stat
from pathlib import Path
from typing import Iterable

from gpt.errors import GptError


def plain_name(name, *, where, error: type[GptError] = GptError) -> str:
    """`name` if it is a plain file name (no directory part, not `.`/`..`, no NUL); else `error`."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name:
        raise error(f"{where} names the file {name!r}, which is not a plain file name inside its directory "
                    f"(no '/', '..' or absolute paths): the file is corrupt or was tampered with")
    return name


def member_file(directory: Path, name, *, where, error: type[GptError] = GptError) -> Path:
    """`directory / name` for a file name recorded in `where`, if it is a regular file inside `directory`.

    Checked without opening it: a plain name (see `plain_name`), resolving inside `directory`, and
    a regular file (not a FIFO, device, socket or directory). A missing file is `FileNotFoundError`
    (callers say what is missing in their own words).
    """
    path = Path(directory) / plain_name(name, where=where, error=error)
    st = os.stat(path)  # follows a symlink; FileNotFoundError when absent or dangling
    if path.is_symlink():
        target = path.resolve()
        if not target.is_relative_to(Path(directory).resolve()):
            raise error(f"{path} (named in {where}) is a symlink to {target}, outside {directory}; "
                        f"copy the file into {directory} instead")
    if not stat.S_ISREG(st.st_mode):
        raise error(f"{path} (named in {where}) is not a regular file ({_kind(st.st_mode)}); "
                    f"replace it with the file itself")
    return path


def is_regular(path: Path) -> bool:
    """Whether `path` exists as a regular file (after symlinks); never opens it."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        return False


def _kind(mode: int) -> str:
    for test, kind in ((stat.S_ISFIFO, "a FIFO"), (stat.S_ISDIR, "a directory"), (stat.S_ISSOCK, "a socket"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device")):
        if test(mode):
            return kind
    return "not a plain file"


def overlap(output, inputs: Iterable) -> tuple[str, str] | None:
    """(input, how) for the first input that `output` is, contains or lies inside (symlinks resolved); None if none."""
    out = Path(os.path.expanduser(str(output))).resolve()
    for given in inputs:
        inp = Path(os.path.expanduser(str(given))).resolve()
        if out == inp:
            return str(given), "is"
        if out in inp.parents:
            return str(given), "contains"
        if inp in out.parents:
            return str(given), "lies inside"
    return None


def refuse_overlap(output, inputs: Iterable, *, input_key: str, error: type[GptError] = GptError) -> None:
    """Refuse (one line) an output directory that is, contains or lies inside one of `inputs`."""
    found = overlap(output, inputs)
    if found is not None:
        inp, how = found
        raise error(f"output={output} {how} the input {input_key}={inp}: writing it would replace or mix with "
                    f"what this command reads; choose an output directory outside the input")
