"""Which files an `input=` spec names, and how they are cut into pieces of work.

Pieces are cut at document boundaries by byte size alone, so the documents (and hence the shards)
are the same whatever the number of workers or the piece size; line numbers are recovered from
the newline counts of earlier pieces.
"""

import glob
import os
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, List

from gpt import log
from gpt.errors import DataError

TEXT, JSONL, JSONL_GZ, PARQUET = "text", "jsonl", "jsonl.gz", "parquet"
EXTENSIONS = {".txt": TEXT, ".text": TEXT, ".md": TEXT, ".py": TEXT, ".jsonl": JSONL, ".jsonl.gz": JSONL_GZ,
              ".parquet": PARQUET}
CODE_EXTENSIONS = (".py",)
"""Source files are one document per file: a blank line inside a function is not a document break."""
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
"""Test suites are 60% of the standard library's bytes and mostly repetitive; leaving them out keeps
`input=stdlib` near 12 MB (seconds to preprocess) while keeping every module's source."""

# A line end followed by one or more blank (whitespace-only) lines separates two documents.
BLANK_LINES = re.compile(rb"\r?\n(?:[ \t\f\v\r]*\n)+")
_WINDOW = 1 << 16


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str          # TEXT | JSONL | JSONL_GZ | PARQUET
    split: str         # blank_lines | file (TEXT only)
    size: int


@dataclass(frozen=True)
class Piece:
    """Bytes [start, end) of a text/jsonl file, a whole .jsonl.gz file, or one Parquet row group."""

    file: InputFile
    start: int = 0
    end: int = 0
    row_group: int = -1
    first_row: int = 0     # Parquet: rows before this row group
    nbytes: int = 0        # input bytes, for sizing tasks and the progress bar


def kind_of(path: str) -> str | None:
    name = path.lower()
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext]
    return None


def stdlib_files() -> List[str]:
    """This Python's standard-library sources, without test suites and installed packages."""
    root = Path(sysconfig.get_paths()["stdlib"])
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in STDLIB_SKIP_DIRS and not d.startswith("."))
        found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if f.endswith(".py"))
    if not found:
        raise DataError(f"input=stdlib: no .py files under {root} (is this Python's standard library installed?)")
    return found


def _walk(directory: str, skipped: Counter) -> List[str]:
    found = []
    for dirpath, dirnames, filenames in os.walk(directory):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if f.startswith("."):
                continue
            if kind_of(f):
                found.append(os.path.join(dirpath, f))
            else:
                skipped[Path(f).suffix or f] += 1
    return found


def resolve_inputs(spec: Any, split: str) -> List[InputFile]:
    """Files named by `input=` (a path, directory, glob, `stdlib`, or a list of those), in order."""
    if spec is None or spec == "" or spec == []:
        raise DataError("input is not set: pass input=<file|dir|glob|stdlib> (or a list input=[a,b])")
    specs = [str(s) for s in (spec if isinstance(spec, (list, tuple)) else [spec])]
    paths: List[str] = []
    skipped: Counter = Counter()
    for s in specs:
        if s == "stdlib":
            paths.extend(stdlib_files())
        elif any(c in s for c in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                raise DataError(f"input={s}: the pattern matches no files")
            for m in matches:
                paths.extend(_walk(m, skipped) if os.path.isdir(m) else [m])
        else:
            p = os.path.expanduser(s)
            if os.path.isdir(p):
                found = _walk(p, skipped)
                if not found:
                    raise DataError(f"input={s}: the directory holds no .txt, .md, .py, .jsonl, .jsonl.gz or .parquet files")
                paths.extend(found)
            elif os.path.isfile(p):
                paths.append(p)
            else:
                raise DataError(f"input={s}: no such file or directory")
    if skipped:
        log.get("data").warning("skipped %d files of unsupported types in input directories (%s)", sum(skipped.values()),
                                ", ".join(f"{n} {ext}" for ext, n in skipped.most_common(5)))
    files = []
    for p in paths:
        kind = kind_of(p) or TEXT  # a file named explicitly is read as text whatever its extension
        file_split = "file" if p.lower().endswith(CODE_EXTENSIONS) else split
        files.append(InputFile(path=p, kind=kind, split=file_split, size=os.path.getsize(p)))
    return files


def plan_pieces(files: List[InputFile], piece_bytes: int, text_key: str) -> List[Piece]:
    """Cut large text/jsonl files at document boundaries near every piece_bytes."""
    pieces: List[Piece] = []
    for f in files:
        if f.kind == PARQUET:
            pieces.extend(_parquet_pieces(f, text_key))
        elif f.kind == JSONL_GZ or (f.kind == TEXT and f.split == "file") or f.size <= piece_bytes:
            pieces.append(Piece(f, 0, f.size, nbytes=f.size))
        else:
            start = 0
            with open(f.path, "rb") as fh:
                while start < f.size:
                    end = _boundary(fh, start + piece_bytes, f)
                    pieces.append(Piece(f, start, end, nbytes=end - start))
                    start = end
    return pieces


def _boundary(fh, target: int, f: InputFile) -> int:
    """The first document boundary at or after `target`: after a newline (jsonl) or a blank line (text)."""
    if target >= f.size:
        return f.size
    fh.seek(target)
    buf = bytearray()
    while True:
        chunk = fh.read(_WINDOW)
        # Search only what can hold a new match: the new chunk, and for text from the last line end
        # before it (a separator starts with a line end), so a long document costs linear time.
        since = len(buf)
        buf += chunk
        if f.kind == JSONL:
            i = buf.find(b"\n", since)
            if i >= 0:
                return target + i + 1
        else:
            m = BLANK_LINES.search(buf, max(0, buf.rfind(b"\n", 0, since) - 1))
            # A match that touches the end of the buffer may continue in the next chunk.
            if m and (m.end() < len(buf) or not chunk):
                return target + m.end()
        if not chunk:
            return f.size


def _parquet_pieces(f: InputFile, text_key: str) -> List[Piece]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f.path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a long message
        raise DataError(f"{f.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if text_key not in names:
        raise DataError(f"{f.path}: no column {text_key!r} (columns: {', '.join(names)}); set text_key=<column>")
    pieces, rows = [], 0
    for i in range(pf.num_row_groups):
        rg = pf.metadata.row_group(i)
        pieces.append(Piece(f, row_group=i, first_row=rows, nbytes=rg.total_byte_size))
        rows += rg.num_rows
    return pieces


def group_tasks(pieces: List[Piece], task_bytes: int) -> List[List[Piece]]:
    """Consecutive pieces, about task_bytes of input each (small files travel together)."""
    tasks: List[List[Piece]] = []
    current: List[Piece] = []
    size = 0
    for p in pieces:
        current.append(p)
        size += p.nbytes
        if size >= task_bytes:
            tasks.append(current)
            current, size = [], 0
    if current:
        tasks.append(current)
    return tasks

