"""Documents of one piece of input: paragraphs or whole files of text, jsonl records, Parquet rows.

A bad record is returned as (line, reason, detail) rather than raised, so the caller can either stop
at the first one with its global file:line (on_error=fail) or count them (on_error=skip).
"""

import gzip
import json
import re
import zlib
from dataclasses import dataclass, field
from typing import List, Tuple

from gpt.data.inputs import BLANK_LINES, JSONL, JSONL_GZ, PARQUET, Piece
from gpt.errors import DataError

Problem = Tuple[int, str, str]  # (line within the piece, 1-based; reason; detail)
_LEADING_BLANK = re.compile(rb"(?:[ \t\f\v\r]*\n)+")
_BOM = b"\xef\xbb\xbf"


@dataclass
class PieceDocs:
    texts: List[str] = field(default_factory=list)
    problems: List[Problem] = field(default_factory=list)
    newlines: int = 0      # newlines in the piece, to number the lines of the next piece of the file
    empty: int = 0         # documents with no text, dropped


def read_piece(piece: Piece, text_key: str, stop_at_problem: bool) -> PieceDocs:
    kind = piece.file.kind
    if kind == PARQUET:
        return _parquet(piece, text_key, stop_at_problem)
    if kind == JSONL_GZ:
        try:
            with gzip.open(piece.file.path, "rb") as f:
                data = f.read()
        except (OSError, EOFError, zlib.error) as e:
            return PieceDocs(problems=[(1, "unreadable gzip data", f"{e}; the whole file was skipped")])
        return _jsonl(data, text_key, stop_at_problem)
    with open(piece.file.path, "rb") as f:
        f.seek(piece.start)
        data = f.read(piece.end - piece.start)
    if kind == JSONL:
        return _jsonl(data, text_key, stop_at_problem)
    return _text(data, piece.start == 0, piece.file.split, stop_at_problem)


def _decode(doc: bytes, line: int, out: PieceDocs) -> None:
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


def _text(data: bytes, file_start: bool, split: str, stop: bool) -> PieceDocs:
    out = PieceDocs(newlines=data.count(b"\n"))
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


def _jsonl(data: bytes, text_key: str, stop: bool) -> PieceDocs:
    lines = data.split(b"\n")
    out = PieceDocs(newlines=len(lines) - 1)
    for i, raw in enumerate(lines, start=1):
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
        if problem:
            out.problems.append((i, *problem))
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


def _parquet(piece: Piece, text_key: str, stop: bool) -> PieceDocs:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.ParquetFile(piece.file.path).read_row_group(piece.row_group, columns=[text_key])
    except Exception as e:  # corrupt pages raise ArrowInvalid/OSError
        return PieceDocs(problems=[(1, "unreadable Parquet data", f"row group {piece.row_group}: {str(e).splitlines()[0]}")])
    column = table.column(text_key)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        raise DataError(f"{piece.file.path}: column {text_key!r} has type {column.type}, not string; set text_key=<text column>")
    out = PieceDocs()
    for i, text in enumerate(column.to_pylist(), start=1):
        if text is None:
            out.problems.append((i, "null text", f"column {text_key!r}"))
            if stop:
                return out
        elif text.strip():
            out.texts.append(text)
        else:
            out.empty += 1
    return out
