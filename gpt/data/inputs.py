"""Which files an `input=` spec names, and how they are cut into units and tasks of work.

A **unit** is a run of consecutive input (whole files, byte ranges of large text/jsonl files cut at
document boundaries, Parquet row groups, record batches of a Hugging Face dataset) of about
`unit_bytes`; units depend only on the input listing, the file sizes and `unit_bytes`. Every unit
becomes its own shards, so a job array can give each task a slice of the units and the merged
result is byte-identical to one process doing them all. A **task** is what one worker reads and
tokenises at a time (about `task_bytes`); tasks never change the output. Compressed files cannot be
cut: they are one unit piece each, decompressed as a stream into tasks by the reading process.
"""

import glob
import json
import os
import re
import sysconfig
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, List, Optional

from gpt import log
from gpt.errors import DataError

TEXT, JSONL, PARQUET, ARROW = "text", "jsonl", "parquet", "arrow"
EXTENSIONS = {".txt": TEXT, ".text": TEXT, ".md": TEXT, ".py": TEXT, ".jsonl": JSONL, ".parquet": PARQUET}
COMPRESSED_EXTENSIONS = {".txt": TEXT, ".text": TEXT, ".md": TEXT, ".jsonl": JSONL, ".json": JSONL}
"""Inside .gz / .zst: `x.json.gz` is JSON lines, as Dolma names its files; a bare `x.zst` or `x.gz` is text."""
COMPRESSIONS = {".gz": "gz", ".zst": "zst"}
CODE_EXTENSIONS = (".py",)
"""Source files are one document per file: a blank line inside a function is not a document break."""
STDLIB_SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
"""Test suites are 60% of the standard library's bytes and mostly repetitive; leaving them out keeps
`input=stdlib` near 12 MB (seconds to preprocess) while keeping every module's source."""
HF_STATE = "state.json"
HF_INFO = "dataset_info.json"
HF_DICT = "dataset_dict.json"

# A line end followed by one or more blank (whitespace-only) lines separates two documents.
BLANK_LINES = re.compile(rb"\r?\n(?:[ \t\f\v\r]*\n)+")
_WINDOW = 1 << 16


@dataclass(frozen=True)
class InputFile:
    path: str
    kind: str                     # TEXT | JSONL | PARQUET | ARROW
    split: str                    # blank_lines | file (TEXT only)
    size: int
    compression: Optional[str] = None   # None | gz | zst

    @property
    def seekable(self) -> bool:
        return self.compression is None and self.kind in (TEXT, JSONL) and self.split != "file"


@dataclass(frozen=True)
class Span:
    """Part of one file in a unit: bytes [start, end) of plain text/jsonl, the whole of a compressed
    file, row groups [start, end) of a Parquet file, or record batches [start, end) of an Arrow file."""

    file: InputFile
    start: int
    end: int
    first_row: int = 0     # Parquet/Arrow: rows of the file before this span
    nbytes: int = 0        # input bytes, for sizing units and the progress bar


@dataclass(frozen=True)
class Unit:
    index: int
    spans: tuple

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.spans)

    def describe(self) -> str:
        first, last = self.spans[0], self.spans[-1]
        if len(self.spans) == 1 and first.file.seekable:
            return f"{first.file.path} bytes {first.start}-{first.end}"
        if first.file.path == last.file.path:
            return first.file.path
        return f"{first.file.path} .. {last.file.path} ({len({s.file.path for s in self.spans})} files)"


@dataclass(frozen=True)
class Task:
    """One worker's read: a byte range (plain files), given bytes (decompressed), a Parquet row group or
    record batches of an Arrow file. `line`: number of the first line of `data` (when known)."""

    file: InputFile
    start: int = 0
    end: int = 0
    data: Optional[bytes] = None
    line: int = 1
    first_row: int = 0
    nbytes: int = 0
    unit_end: bool = False       # the last task of its unit
    problem: Optional[tuple] = None   # (1, reason, detail): the rest of a compressed file is unreadable


def kind_of(path: str) -> Optional[tuple]:
    """(kind, compression) of a file name, or None if it is not a supported input."""
    name = path.lower()
    compression = next((c for ext, c in COMPRESSIONS.items() if name.endswith(ext)), None)
    if compression:
        inner = name[: name.rfind(".")]
        for ext, kind in COMPRESSED_EXTENSIONS.items():
            if inner.endswith(ext):
                return kind, compression
        return TEXT, compression
    for ext in sorted(EXTENSIONS, key=len, reverse=True):
        if name.endswith(ext):
            return EXTENSIONS[ext], None
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


def hf_dataset_files(directory: str) -> Optional[List[str]]:
    """The Arrow files of a Hugging Face dataset saved with `save_to_disk`, in order; None if it is not one."""
    d = Path(directory)
    if (d / HF_DICT).is_file():
        try:
            splits = json.loads((d / HF_DICT).read_text()).get("splits", [])
        except (OSError, ValueError, AttributeError):
            splits = []
        raise DataError(f"input={directory} is a Hugging Face DatasetDict; pass one split, e.g. "
                        f"input={d / (splits[0] if splits else 'train')} (splits: {', '.join(map(str, splits)) or '?'})")
    if not ((d / HF_STATE).is_file() and (d / HF_INFO).is_file()):
        return None
    try:
        state = json.loads((d / HF_STATE).read_text())
        names = [f["filename"] for f in state["_data_files"]]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DataError(f"{d / HF_STATE}: not the state.json of a dataset saved with save_to_disk ({e}); "
                        f"re-save it with datasets' save_to_disk") from None
    files = []
    for name in names:
        if "/" in name or name.startswith("."):
            raise DataError(f"{d / HF_STATE}: data file {name!r} is not a file name inside {d}")
        files.append(str(d / name))
    return files


def _walk(directory: str, skipped: Counter) -> List[str]:
    """Supported files under directory, recursively in name order; a saved dataset is its Arrow files."""
    hf = hf_dataset_files(directory)
    if hf is not None:
        return hf
    found = []
    for entry in sorted(os.scandir(directory), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            found.extend(_walk(entry.path, skipped))
        elif kind_of(entry.name):
            found.append(entry.path)
        else:
            skipped[Path(entry.name).suffix or entry.name] += 1
    return found


def resolve_inputs(spec: Any, split: str) -> List[InputFile]:
    """Files named by `input=` (a path, directory, glob, `stdlib`, or a list of those), in order."""
    if spec is None or spec == "" or spec == []:
        raise DataError("input is not set: pass input=<file|dir|glob|stdlib> (or a list input=[a,b])")
    specs = [str(s) for s in (spec if isinstance(spec, (list, tuple)) else [spec])]
    paths: List[tuple] = []   # (path, kind or None)
    skipped: Counter = Counter()
    for s in specs:
        if s == "stdlib":
            paths.extend((p, None) for p in stdlib_files())
        elif any(c in s for c in "*?["):
            matches = sorted(glob.glob(os.path.expanduser(s), recursive=True))
            if not matches:
                raise DataError(f"input={s}: the pattern matches no files")
            for m in matches:
                paths.extend(_from_directory(m, skipped) if os.path.isdir(m) else [(m, None)])
        else:
            p = os.path.expanduser(s)
            if os.path.isdir(p):
                found = _from_directory(p, skipped)
                if not found:
                    raise DataError(f"input={s}: the directory holds no .txt, .md, .py, .jsonl, .parquet files "
                                    f"(plain, .gz or .zst) nor a dataset saved with save_to_disk")
                paths.extend(found)
            elif os.path.isfile(p):
                paths.append((p, (ARROW, None) if p.endswith(".arrow") else None))  # a saved dataset's file
            else:
                raise DataError(f"input={s}: no such file or directory")
    if skipped:
        log.get("data").warning("skipped %d files of unsupported types in input directories (%s)", sum(skipped.values()),
                                ", ".join(f"{n} {ext}" for ext, n in skipped.most_common(5)))
    files = []
    for p, forced in paths:
        kind, compression = forced or kind_of(p) or (TEXT, None)  # a file named explicitly is read as text
        file_split = "file" if p.lower().endswith(CODE_EXTENSIONS) else split
        files.append(InputFile(path=p, kind=kind, split=file_split if kind == TEXT else "lines",
                               size=os.path.getsize(p), compression=compression))
    return files


def _from_directory(directory: str, skipped: Counter) -> List[tuple]:
    return [(p, (ARROW, None) if p.endswith(".arrow") else None) for p in _walk(directory, skipped)]


def plan_units(files: List[InputFile], unit_bytes: int, text_key: str) -> List[Unit]:
    """Consecutive input of about unit_bytes each; large plain files are cut at document boundaries."""
    units: List[Unit] = []
    spans: List[Span] = []
    size = 0

    def close() -> None:
        nonlocal spans, size
        if spans:
            units.append(Unit(len(units), tuple(spans)))
        spans, size = [], 0

    for f in files:
        for atom in _atoms(f, text_key):
            if atom.file.seekable and size + atom.nbytes > unit_bytes:
                # Cut the file where this unit is full, at a document boundary.
                start = atom.start
                with open(f.path, "rb") as fh:
                    while start < atom.end and size + (atom.end - start) > unit_bytes:
                        cut = boundary(fh, start + max(1, unit_bytes - size), f)
                        spans.append(Span(f, start, cut, nbytes=cut - start))
                        close()
                        start = cut
                if start < atom.end:
                    spans.append(Span(f, start, atom.end, nbytes=atom.end - start))
                    size += atom.end - start
            else:
                spans.append(atom)
                size += atom.nbytes
            if size >= unit_bytes:
                close()
    close()
    return units


def _atoms(f: InputFile, text_key: str) -> Iterator[Span]:
    """The smallest pieces of a file a unit may start or end at (besides document boundaries)."""
    if f.kind == PARQUET:
        yield from _parquet_spans(f, text_key)
    elif f.kind == ARROW:
        yield from _arrow_spans(f, text_key)
    else:
        yield Span(f, 0, f.size, nbytes=f.size)


def boundary(fh, target: int, f: InputFile) -> int:
    """The first document boundary at or after `target`: after a newline (jsonl) or a blank line (text)."""
    if target >= f.size:
        return f.size
    fh.seek(target)
    buf = bytearray()
    while True:
        chunk = fh.read(_WINDOW)
        since = len(buf)
        buf += chunk
        found = find_boundary(buf, since, f.kind, final=not chunk)
        if found is not None:
            return target + found
        if not chunk:
            return f.size


def find_boundary(buf, since: int, kind: str, final: bool) -> Optional[int]:
    """End of the first document separator in buf that may end at or after `since` (new bytes), or None.

    Search only what can hold a new match: the new bytes, and for text from the last line end before
    them (a separator starts with a line end), so a long document costs linear time."""
    if kind == JSONL:
        i = buf.find(b"\n", since)
        return i + 1 if i >= 0 else None
    m = BLANK_LINES.search(buf, max(0, buf.rfind(b"\n", 0, since) - 1))
    # A match that touches the end of the buffer may continue in the next chunk.
    if m and (m.end() < len(buf) or final):
        return m.end()
    return None


def _parquet_spans(f: InputFile, text_key: str) -> Iterator[Span]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f.path)
    except Exception as e:  # pyarrow raises ArrowInvalid/OSError with a long message
        raise DataError(f"{f.path}: not a readable Parquet file ({str(e).splitlines()[0]})") from None
    names = pf.schema_arrow.names
    if text_key not in names:
        raise DataError(f"{f.path}: no column {text_key!r} (columns: {', '.join(names)}); set text_key=<column>")
    rows = 0
    for i in range(pf.num_row_groups):
        rg = pf.metadata.row_group(i)
        size = sum(rg.column(j).total_compressed_size for j in range(rg.num_columns))
        yield Span(f, i, i + 1, first_row=rows, nbytes=size)
        rows += rg.num_rows


def _arrow_spans(f: InputFile, text_key: str) -> Iterator[Span]:
    import pyarrow as pa

    try:
        with pa.memory_map(f.path, "r") as mm:
            reader = pa.ipc.open_stream(mm)
            names = reader.schema.names
            if text_key not in names:
                raise DataError(f"{f.path}: no column {text_key!r} (columns: {', '.join(names)}); set text_key=<column>")
            rows, i = 0, 0
            for batch in reader:  # memory-mapped: only the batch headers are read
                yield Span(f, i, i + 1, first_row=rows, nbytes=batch.nbytes)
                rows += batch.num_rows
                i += 1
    except pa.ArrowException as e:
        raise DataError(f"{f.path}: not a readable Arrow stream file of a saved dataset ({str(e).splitlines()[0]})") from None


def slice_of(units: List[Unit], task: int, tasks: int) -> List[Unit]:
    """The units of array task `task` of `tasks`: a contiguous, deterministic slice."""
    n = len(units)
    return units[task * n // tasks:(task + 1) * n // tasks]
