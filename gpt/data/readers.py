"""Tasks of a unit (cut by the reading process) and the documents of one task (read by a worker):
paragraphs or whole files of text, jsonl records, Parquet rows, rows of a saved Hugging Face dataset.

Compressed files (.gz, .zst) are decompressed as a stream by the reading process and cut into tasks
of about task_bytes at document boundaries; nothing holds more than a task (or one document).
A bad record is returned as (line, reason, detail) rather than raised, so the caller can either
stop at the first one with its global file:line (on_error=fail) or count them (on_error=skip).
"""

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field, replace
from typing import Iterator, List, Tuple

from gpt.data.inputs import ARROW, BLANK_LINES, JSONL, PARQUET, TEXT, Task, Unit, boundary, find_boundary
from gpt.errors import DataError

Problem = Tuple[int, str, str]  # (line within the task, 1-based, or row; reason; detail)
_LEADING_BLANK = re.compile(rb"(?:[ \t\f\v\r]*\n)+")
_BOM = b"\xef\xbb\xbf"
_READ = 1 << 16
"""Decompressed bytes per read: a stream cut short loses at most this much before the error."""


@dataclass
class TaskDocs:
    texts: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    newlines: int = 0      # newlines in the task's bytes
    empty: int = 0         # documents with no text, dropped


# ---- the reading process: units -> tasks -------------------------------------------------------

def unit_tasks(unit: Unit, task_bytes: int) -> Iterator[Task]:
    """The tasks of a unit, in order; the last one has unit_end=True."""
    previous = None
    for task in _tasks(unit, task_bytes):
        if previous is not None:
            yield previous
        previous = task
    if previous is not None:
        yield replace(previous, unit_end=True)


def _tasks(unit: Unit, task_bytes: int) -> Iterator[Task]:
    spans = list(unit.spans)
    i = 0
    while i < len(spans):
        span, f = spans[i], spans[i].file
        if f.kind in (PARQUET, ARROW):
            # Consecutive row groups / record batches of one file, about task_bytes together.
            j, size = i, 0
            while j < len(spans) and spans[j].file == f and spans[j].start == span.start + (j - i) \
                    and (size < task_bytes or j == i) and (f.kind == ARROW or j == i):
                size += spans[j].nbytes
                j += 1
            yield Task(f, span.start, spans[j - 1].end, first_row=span.first_row, nbytes=size)
            i = j
            continue
        if f.compression:
            yield from _stream_tasks(f, task_bytes)
        elif f.seekable:
            with open(f.path, "rb") as fh:
                start = span.start
                while start < span.end:
                    end = min(span.end, boundary(fh, start + task_bytes, f))
                    if end - start > 4 * task_bytes:  # a huge document: a task of its own (read without copies)
                        before = _boundary_before(fh, start, start + task_bytes, f)
                        if before > start:
                            end = before
                    yield Task(f, start, end, nbytes=end - start)
                    start = end
        else:
            yield Task(f, 0, f.size, nbytes=f.size)
        i += 1


def _boundary_before(fh, start: int, target: int, f) -> int:
    """The last document boundary in (start, target], or start if there is none."""
    lo = max(start, target - (1 << 16))
    fh.seek(lo)
    window = fh.read(target - lo)
    if f.kind == JSONL:
        i = window.rfind(b"\n")
        return lo + i + 1 if i >= 0 else start
    ends = [m.end() for m in BLANK_LINES.finditer(window)]
    return lo + ends[-1] if ends and lo + ends[-1] > start else start


def _open_stream(path: str, compression: str):
    raw = open(path, "rb")
    if compression == "gz":
        return raw, gzip.GzipFile(fileobj=raw, mode="rb")
    import zstandard

    return raw, zstandard.ZstdDecompressor().stream_reader(raw, read_size=_READ)


def _stream_errors():
    errors = (OSError, EOFError, zlib.error)
    try:
        import zstandard

        return errors + (zstandard.ZstdError,)
    except ImportError:
        return errors


def _stream_tasks(f, task_bytes: int) -> Iterator[Task]:
    """Decompress a .gz/.zst file and cut it into tasks of about task_bytes at document boundaries."""
    what = "gzip" if f.compression == "gz" else "zstd"
    whole = f.kind == TEXT and f.split == "file"
    buf = bytearray()
    line, since, consumed = 1, task_bytes, 0
    raw, stream = _open_stream(f.path, f.compression)
    with raw:
        while True:
            try:
                chunk = stream.read(_READ)
            except _stream_errors() as e:
                keep = _last_boundary(buf, f.kind)   # complete documents only: the cut one is lost
                if keep:
                    yield Task(f, data=bytes(buf[:keep]), line=line, nbytes=raw.tell() - consumed)
                    line += buf.count(b"\n", 0, keep)
                reason = str(e).splitlines()[0] if str(e) else "truncated"
                yield Task(f, data=b"", line=line, problem=(1, f"unreadable {what} data",
                                                            f"{type(e).__name__}: {reason}; the rest of the file was skipped"))
                return
            eof = not chunk
            buf += chunk
            while buf and (eof or len(buf) > task_bytes):
                cut = None if whole else find_boundary(buf, since, f.kind, final=eof)
                if cut is None:
                    if not eof:
                        since = len(buf)
                        break
                    cut = len(buf)
                data = bytes(buf[:cut])
                del buf[:cut]
                position = raw.tell()
                yield Task(f, data=data, line=line, nbytes=position - consumed)
                consumed = position
                line += data.count(b"\n")
                since = task_bytes
            if eof:
                return


def _last_boundary(buf: bytearray, kind: str) -> int:
    if kind == JSONL:
        return buf.rfind(b"\n") + 1
    tail = max(0, len(buf) - (1 << 20))
    ends = [m.end() for m in BLANK_LINES.finditer(buf, tail)]
    return ends[-1] if ends else 0


# ---- a worker: task -> documents ---------------------------------------------------------------

def read_task(task: Task, text_key: str, stop_at_problem: bool) -> TaskDocs:
    f = task.file
    if task.problem is not None:  # a compressed stream that could not be read further
        return TaskDocs(problems=[task.problem])
    if f.kind == PARQUET:
        return _parquet(task, text_key, stop_at_problem)
    if f.kind == ARROW:
        return _arrow(task, text_key, stop_at_problem)
    if task.data is not None:
        data, first = task.data, task.line == 1
    else:
        with open(f.path, "rb") as fh:
            fh.seek(task.start)
            data = fh.read(task.end - task.start)
        first = task.start == 0
    if f.kind == JSONL:
        return _jsonl(data, text_key, stop_at_problem)
    return _text(data, first, f.split, stop_at_problem)


def _decode(doc: bytes, line: int, out: TaskDocs) -> None:
    try:
        text = doc.decode("utf-8")
    except UnicodeDecodeError as e:
        bad_line = line + doc.count(b"\n", 0, e.start)
        out.problems.append((bad_line, "invalid UTF-8", f"byte 0x{doc[e.start]:02x}"))
        return
    if text.strip():
        out.texts.append(text)
    else:
        out.empty += 1


def _text(data: bytes, file_start: bool, split: str, stop: bool) -> TaskDocs:
    out = TaskDocs(newlines=data.count(b"\n"))
    if file_start and data.startswith(_BOM):
        data = data[len(_BOM):]
    if split == "file":
        _decode(data, 1, out)
        return out
    pos, line = 0, 1
    ends = [(m.start(), m.end()) for m in BLANK_LINES.finditer(data)] + [(len(data), len(data))]
    for doc_end, next_start in ends:
        lead = _LEADING_BLANK.match(data, pos, doc_end)
        start = lead.end() if lead else pos
        line += data.count(b"\n", pos, start)
        doc = data[start:doc_end].rstrip()
        if doc:
            _decode(doc, line, out)
            if stop and out.problems:
                return out
        line += data.count(b"\n", start, next_start)
        pos = next_start
    return out


def _jsonl(data: bytes, text_key: str, stop: bool) -> TaskDocs:
    out = TaskDocs(newlines=data.count(b"\n"))
    line, pos, n = 0, 0, len(data)
    while pos < n:
        end = data.find(b"\n", pos)
        end = n if end < 0 else end
        raw = data if pos == 0 and end >= n - 1 else data[pos:end]  # a task of one (huge) line: no copy
        line += 1
        pos = end + 1
        if not raw.strip():
            continue
        problem = None
        try:
            record = json.loads(raw)
        except UnicodeDecodeError as e:
            problem = ("invalid UTF-8", f"byte 0x{raw[e.start]:02x}")
        except json.JSONDecodeError as e:
            problem = ("invalid JSON", e.msg + f" at column {e.colno}")
        else:
            if not isinstance(record, dict):
                problem = ("not a JSON object", type(record).__name__)
            elif text_key not in record:
                problem = (f"no {text_key!r} field", f"fields: {', '.join(list(record)[:5])}; set text_key=<field>")
            elif not isinstance(record[text_key], str):
                problem = (f"{text_key!r} is not a string", type(record[text_key]).__name__)
            elif (b"\\ud" in raw or b"\\uD" in raw) and not _is_unicode(record[text_key]):
                problem = ("invalid Unicode", "a lone UTF-16 surrogate escape")
        del raw
        if problem:
            out.problems.append((line, *problem))
            if stop:
                return out
        elif record[text_key].strip():
            out.texts.append(record[text_key])
        else:
            out.empty += 1
    return out


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
        return True
    except UnicodeEncodeError:
        return False


def _texts_of_column(column, where: str, text_key: str, out: TaskDocs, row0: int, stop: bool) -> bool:
    import pyarrow as pa

    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{where}: column {text_key!r} has type {column.type}, not string; set text_key=<text column>")
    for i, text in enumerate(column.to_pylist(), start=row0):
        if text is None:
            out.problems.append((i, "null text", f"column {text_key!r}"))
            if stop:
                return False
        elif text.strip():
            out.texts.append(text)
        else:
            out.empty += 1
    return True


def _parquet(task: Task, text_key: str, stop: bool) -> TaskDocs:
    import pyarrow.parquet as pq

    out = TaskDocs()
    try:
        pf = pq.ParquetFile(task.file.path)
        columns = [pf.read_row_group(g, columns=[text_key]).column(text_key) for g in range(task.start, task.end)]
    except Exception as e:  # corrupt pages raise ArrowInvalid/OSError
        return TaskDocs(problems=[(1, "unreadable Parquet data", f"row group {task.start}: {str(e).splitlines()[0]}")])
    row = 1
    for column in columns:
        if not _texts_of_column(column, task.file.path, text_key, out, row, stop):
            return out
        row += len(column)
    return out


def _arrow(task: Task, text_key: str, stop: bool) -> TaskDocs:
    import pyarrow as pa

    out = TaskDocs()
    row = 1
    try:
        with pa.memory_map(task.file.path, "r") as mm:
            reader = pa.ipc.open_stream(mm)
            for i, batch in enumerate(reader):
                if i < task.start:
                    continue
                if i >= task.end:
                    break
                column = batch.column(text_key)
                if not _texts_of_column(column, task.file.path, text_key, out, row, stop):
                    return out
                row += batch.num_rows
    except pa.ArrowException as e:
        out.problems.append((row, "unreadable Arrow data", f"record batch {task.start}: {str(e).splitlines()[0]}"))
    return out
