"""Every input kind becomes the documents a user expects, whatever the piece size."""

import gzip
import json
import os
import re
import sysconfig

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from gpt.data.inputs import plan_units, resolve_inputs, stdlib_files
from gpt.data.readers import read_task, unit_tasks
from gpt.errors import DataError

from tests.data.helpers import preprocess, read_rows

PARAGRAPHS = ["First paragraph,\nstill the first.", "  Second, indented.", "Third\r\nwith CRLF.", "Fourth ✓"]
TEXT = "\n\n" + "\n\n".join(PARAGRAPHS[:2]) + "\n \t \n\n" + PARAGRAPHS[2] + "\r\n\r\n" + PARAGRAPHS[3] + "\n\n\n"


def docs_of(path, split="blank_lines", piece_bytes=1 << 20, text_key="text", unit_bytes=1 << 30):
    units = plan_units(resolve_inputs(str(path), split), unit_bytes, text_key)
    tasks = [t for u in units for t in unit_tasks(u, piece_bytes)]
    texts = []
    for t in tasks:
        texts.extend(read_task(t, text_key, stop_at_problem=True).texts)
    return texts, tasks


def decoded(shard_dir):
    return [bytes(r).decode() for r in read_rows(shard_dir)]


@pytest.mark.parametrize("piece_bytes,unit_bytes", [(1 << 20, 1 << 30), (7, 1 << 30), (1, 1 << 30), (1, 1), (7, 20)])
def test_text_splits_on_blank_lines_wherever_the_pieces_are_cut(tmp_path, piece_bytes, unit_bytes):
    f = tmp_path / "a.txt"
    f.write_bytes(("\ufeff" + TEXT).encode())
    texts, pieces = docs_of(f, piece_bytes=piece_bytes, unit_bytes=unit_bytes)
    assert texts == PARAGRAPHS
    if piece_bytes == 1:
        assert len(pieces) == len(PARAGRAPHS) + 1, "cut after every blank-line separator"


def test_split_file_and_source_files_are_one_document_each(tmp_path):
    (tmp_path / "a.txt").write_text(TEXT)
    (tmp_path / "m.py").write_text("import os\n\n\ndef f():\n    return 1\n")
    texts, _ = docs_of(tmp_path / "a.txt", split="file")
    assert texts == [TEXT]
    texts, _ = docs_of(tmp_path / "m.py")
    assert texts == ["import os\n\n\ndef f():\n    return 1\n"], ".py files are never split on blank lines"


def test_jsonl_gz_parquet_dir_glob_and_lists(tmp_path, shakespeare):
    records = [{"text": "one"}, {"text": "two\n\nstill two", "id": 2}, {"text": "drei ✓"}]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text("\n".join(json.dumps(r) for r in records) + "\n\n")
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        f.write("\n".join(json.dumps({"body": r["text"]}) for r in records))
    pq.write_table(pa.table({"text": ["p1", "p2", "p3", "p4"], "n": [1, 2, 3, 4]}), tmp_path / "in" / "c.parquet",
                   row_group_size=3)
    texts = [r["text"] for r in records]

    preprocess(tmp_path / "in" / "a.jsonl", tmp_path / "o1")
    assert decoded(tmp_path / "o1") == texts
    preprocess(tmp_path / "in" / "b.jsonl.gz", tmp_path / "o2", text_key="body")
    assert decoded(tmp_path / "o2") == texts
    preprocess(tmp_path / "in" / "c.parquet", tmp_path / "o3")
    assert decoded(tmp_path / "o3") == ["p1", "p2", "p3", "p4"]
    meta = preprocess([str(tmp_path / "in" / "c.parquet"), str(tmp_path / "in" / "a.jsonl")], tmp_path / "o4")
    assert decoded(tmp_path / "o4") == ["p1", "p2", "p3", "p4"] + texts, "a list keeps its order"
    assert meta["source"]["files"] == 2 and meta["source"]["inputs"][0].endswith("c.parquet")
    preprocess(str(tmp_path / "in" / "*.jsonl*"), tmp_path / "o5", text_key="body", on_error="skip")
    assert decoded(tmp_path / "o5") == texts, "a glob: a.jsonl has no 'body' and is skipped, b.jsonl.gz is read"
    # A directory: its supported files in name order, recursively (the .csv is skipped with a warning).
    (tmp_path / "in" / "sub").mkdir()
    (tmp_path / "in" / "sub" / "d.txt").write_text("para one\n\npara two\n")
    (tmp_path / "in" / "b.jsonl.gz").unlink()
    (tmp_path / "in" / "notes.csv").write_text("ignored")
    preprocess([str(tmp_path / "in"), str(shakespeare)], tmp_path / "o6")
    docs = decoded(tmp_path / "o6")
    assert docs[:9] == texts + ["p1", "p2", "p3", "p4"] + ["para one", "para two"]
    assert docs[9] == "First Citizen:\nBefore we proceed any further, hear me speak."


def test_directory_input_with_mixed_text_keys_fails_clearly(tmp_path):
    # b.jsonl.gz has "body", not "text": the error names the file and line and the option to change.
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"text": "x"}\n')
    with gzip.open(tmp_path / "in" / "b.jsonl.gz", "wt") as f:
        f.write('{"body": "y"}\n')
    with pytest.raises(DataError, match=r"b\.jsonl\.gz:1: no 'text' field.*text_key"):
        preprocess(tmp_path / "in", tmp_path / "out")


def test_stdlib_is_the_standard_library_without_tests(tmp_path):
    files = stdlib_files()
    root = sysconfig.get_paths()["stdlib"]
    names = {os.path.relpath(f, root) for f in files}
    assert "os.py" in names and os.path.join("json", "decoder.py") in names
    assert not any(re.search(r"(^|/)(tests?|site-packages|idle_test)/", n) for n in names)
    assert all(n.endswith(".py") for n in names)
    meta = preprocess("stdlib", tmp_path / "stdlib")   # the demo's corpus, end to end
    assert meta["num_documents"] >= len(files) - 10 and meta["source"]["stdlib"] == root
    contents = [open(f, "rb").read() for f in files]
    assert meta["num_tokens"] == sum(len(c) for c in contents if c.strip()), "byte tokens = source bytes"


def test_missing_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(DataError, match="no such file or directory"):
        resolve_inputs(str(tmp_path / "nope.txt"), "blank_lines")
    with pytest.raises(DataError, match="matches no files"):
        resolve_inputs(str(tmp_path / "*.jsonl"), "blank_lines")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x.bin").write_bytes(b"\0")
    with pytest.raises(DataError, match="holds no .txt"):
        resolve_inputs(str(tmp_path / "d"), "blank_lines")
    with pytest.raises(DataError, match="input is not set"):
        resolve_inputs(None, "blank_lines")
    pq.write_table(pa.table({"content": ["a"]}), tmp_path / "p.parquet")
    with pytest.raises(DataError, match=r"no column 'text' \(columns: content\); set text_key"):
        plan_units(resolve_inputs(str(tmp_path / "p.parquet"), "blank_lines"), 1 << 20, "text")


def test_compressed_streams_and_saved_datasets_with_the_same_bad_record_handling(tmp_path):
    import datasets
    import zstandard

    datasets.disable_progress_bars()
    src = tmp_path / "in"
    src.mkdir()
    good = [json.dumps({"text": f"record {i}"}) for i in range(5)]
    lines = good[:2] + ['{"text": broken'] + good[2:]
    (src / "a.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(("\n".join(lines) + "\n").encode()))
    with gzip.open(src / "b.json.gz", "wt") as f:       # Dolma names its jsonl files .json.gz
        f.write("\n".join(good) + "\n")
    datasets.Dataset.from_dict({"text": ["one", None, "three"]}).save_to_disk(str(src / "hf"))
    with pytest.raises(DataError, match=r"a\.jsonl\.zst:3: invalid JSON"):
        preprocess(src / "a.jsonl.zst", tmp_path / "o1")
    with pytest.raises(DataError, match=r"data-00000-of-00001\.arrow:row 2: null text"):
        preprocess(src / "hf", tmp_path / "o1")
    meta = preprocess(src, tmp_path / "o2", on_error="skip", task_bytes=20)
    assert decoded(tmp_path / "o2") == [f"record {i}" for i in range(5)] * 2 + ["one", "three"]
    assert meta["source"]["skipped_records"] == {"invalid JSON": 1, "null text": 1}
    # A DatasetDict must be given one split; a .gz cut short is a bad record at its line.
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["x"]})}).save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(DataError, match=r"is a Hugging Face DatasetDict; pass one split, e\.g\. input=.*dd/train"):
        preprocess(tmp_path / "dd", tmp_path / "o3")
    assert decoded(preprocess(tmp_path / "dd" / "train", tmp_path / "o3") and tmp_path / "o3") == ["x"]
    data = gzip.compress(("\n".join(good * 20000) + "\n").encode())
    (tmp_path / "cut.jsonl.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut\.jsonl\.gz:\d+: unreadable gzip data .*the rest of the file was skipped"):
        preprocess(tmp_path / "cut.jsonl.gz", tmp_path / "o4")
    meta = preprocess(tmp_path / "cut.jsonl.gz", tmp_path / "o4", on_error="skip")
    assert 0 < meta["num_documents"] < 100_000 and meta["source"]["skipped_records"] == {"unreadable gzip data": 1}


def test_text_gz_and_bare_zst_split_like_plain_text(tmp_path):
    import zstandard

    (tmp_path / "a.txt.gz").write_bytes(gzip.compress(TEXT.encode()))
    (tmp_path / "b.zst").write_bytes(zstandard.ZstdCompressor().compress(TEXT.encode()))
    for name in ("a.txt.gz", "b.zst"):
        for task_bytes in (1, 1 << 20):
            texts, _ = docs_of(tmp_path / name, piece_bytes=task_bytes)
            assert texts == PARAGRAPHS, (name, task_bytes)
