"""gpt-preprocess end to end: shards and metadata, tokenizer kinds, workers, bad records, atomicity."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pytest
import xxhash

from gpt.config.commands import TokenizerConfig
from gpt.config.training import DataConfig
from gpt.data import build_loaders, load_tokenizer, read_metadata
from gpt.errors import ConfigError, DataError

from tests.data.helpers import REPO, fake_tiktoken_cache, preprocess, read_rows


def paragraphs(text):
    return [p.strip() for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def test_byte_shards_of_shakespeare(shakespeare, tmp_path):
    out = tmp_path / "shakespeare"
    meta = preprocess(shakespeare, out, shard_tokens=300_000)
    expected = paragraphs(shakespeare.read_text())
    assert meta == read_metadata(out)
    assert meta["tokenizer"] == {"kind": "byte", "vocab_size": 257, "eod_id": 256}
    assert meta["dtype"] == "uint16" and meta["num_documents"] == len(expected)
    assert meta["num_tokens"] == sum(len(p.encode()) for p in expected), "no end-of-document tokens are stored"
    assert len(meta["shards"]) == 4 and all(s["tokens"] >= 300_000 for s in meta["shards"][:-1])
    for s in meta["shards"]:
        f = out / s["file"]
        assert s["bytes"] == f.stat().st_size and s["xxh3_128"] == xxhash.xxh3_128(f.read_bytes()).hexdigest()
        reader = pa.ipc.open_file(pa.memory_map(str(f)))
        assert reader.schema.field("tokens").type == pa.list_(pa.field("item", pa.uint16(), nullable=False))
        assert reader.schema.metadata == {b"gpt.format": b"gpt-token-shards", b"gpt.version": b"3"}
        assert s["max_token_id"] == max(max(r) for r in pa.ipc.open_file(pa.memory_map(str(f))).read_all()
                                        .column("tokens").to_pylist())
    assert [bytes(r).decode() for r in read_rows(out)] == expected
    assert sorted(os.listdir(out)) == ["index.arrow", "metadata.json"] + [f"shard-{i:05d}.arrow" for i in range(4)]
    # One chunk per document (fewer than 4M of them): the index holds every document's length.
    assert meta["index"]["documents_per_chunk"] == 1 and meta["index"]["chunks"] == len(expected)
    index = pa.ipc.open_file(pa.memory_map(str(out / "index.arrow"))).read_all().column("chunk_tokens").to_pylist()
    assert index == [len(p.encode()) for p in expected]


def test_output_is_identical_whatever_the_workers_and_pieces(shakespeare, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    text = shakespeare.read_text()
    (src / "a.txt").write_text(text[:300_000])
    with open(src / "b.jsonl", "w") as f:
        for p in paragraphs(text[300_000:600_000]):
            f.write(json.dumps({"text": p}) + "\n")
    one = preprocess(src, tmp_path / "one", shard_tokens=100_000)
    two = preprocess(src, tmp_path / "two", shard_tokens=100_000, workers=2, task_bytes=20_000)
    assert one == two and len(one["shards"]) > 2
    for s in one["shards"]:
        assert (tmp_path / "one" / s["file"]).read_bytes() == (tmp_path / "two" / s["file"]).read_bytes()


def test_bpe_hf_and_tiktoken_round_trip_through_shards(shakespeare, tmp_path, monkeypatch):
    text = shakespeare.read_text()[:150_000]
    (tmp_path / "in.txt").write_text(text)
    expected = paragraphs(text)

    def check(out):
        tok = load_tokenizer(out)
        docs = [tok.decode(r) for r in read_rows(out)]
        assert docs == expected
        return tok

    meta = preprocess(tmp_path / "in.txt", tmp_path / "bpe", TokenizerConfig(kind="bpe", vocab_size=500))
    assert meta["tokenizer"]["kind"] == "bpe" and meta["tokenizer"]["vocab_size"] == 500
    assert (tmp_path / "bpe" / "tokenizer.json").is_file()
    assert meta["num_tokens"] < len(text) / 1.5, "a trained BPE compresses"
    check(tmp_path / "bpe")
    # Training batches decode with the tokenizer recorded in the shards.
    train, _ = build_loaders(DataConfig(path=str(tmp_path / "bpe")), seq_len=64, global_batch_size=4,
                             micro_batch_size=4, dp_rank=0, dp_size=1, seed=0)
    tok = train.tokenizer
    for row in train.global_batch(0)[0].tokens.tolist():
        cuts = [-1] + [i for i, t in enumerate(row) if t == tok.eod_id] + [len(row)]
        for a, b in zip(cuts[:-1], cuts[1:]):
            assert tok.decode(iter(row[a + 1:b])) in text

    meta = preprocess(tmp_path / "in.txt", tmp_path / "hf",
                      TokenizerConfig(kind="hf", path=str(tmp_path / "bpe" / "tokenizer.json")), workers=2)
    assert meta["tokenizer"]["kind"] == "hf" and meta["num_tokens"] == read_metadata(tmp_path / "bpe")["num_tokens"]
    check(tmp_path / "hf")

    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path / "tiktoken"))
    fake_tiktoken_cache(tmp_path / "tiktoken")
    meta = preprocess(tmp_path / "in.txt", tmp_path / "tt", TokenizerConfig(kind="tiktoken", name="cl100k_base"))
    assert meta["tokenizer"]["name"] == "cl100k_base" and meta["dtype"] == "uint32", "100277 ids need uint32"
    assert check(tmp_path / "tt").eod_id == 100257


BAD_JSONL = "\n".join([
    '{"text": "good one"}',
    '{"text": "good two"',
    '["a list"]',
    '{"title": "no text"}',
    '{"text": 42}',
    '{"text": "lone \\ud800 surrogate"}',
    '{"text": "good three"}',
]) + "\n"


def test_bad_records_fail_with_file_and_line_or_are_skipped_and_counted(tmp_path, caplog):
    f = tmp_path / "bad.jsonl"
    f.write_text(BAD_JSONL)
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON .*on_error=skip"):
        preprocess(f, tmp_path / "fail")
    assert not (tmp_path / "fail").exists() and not list(tmp_path.glob(".fail.tmp-*")), "nothing is left behind"
    with pytest.raises(DataError, match=r"bad\.jsonl:2: invalid JSON"):   # already while training a BPE on it
        preprocess(f, tmp_path / "fail", TokenizerConfig(kind="bpe", vocab_size=300))

    meta = preprocess(f, tmp_path / "skip", on_error="skip")
    assert [bytes(r).decode() for r in read_rows(tmp_path / "skip")] == ["good one", "good three"]
    assert meta["source"]["skipped_records"] == {"invalid JSON": 1, "not a JSON object": 1, "no 'text' field": 1,
                                                 "'text' is not a string": 1, "invalid Unicode": 1}
    assert "skipped 5 bad records" in caplog.text and "bad.jsonl:4" in caplog.text

    txt = tmp_path / "bad.txt"
    txt.write_bytes(b"fine\n\nline one\nbroken \xff here\n\nfine again\n")
    with pytest.raises(DataError, match=r"bad\.txt:4: invalid UTF-8 \(byte 0xff\)"):
        preprocess(txt, tmp_path / "t1")
    # The error names the right line even when the file is cut into pieces read by worker processes.
    with pytest.raises(DataError, match=r"bad\.txt:4: invalid UTF-8"):
        preprocess(txt, tmp_path / "t1", task_bytes=3, workers=2)
    assert not list(tmp_path.glob(".t1.tmp-*"))


def test_empty_input_existing_output_and_options_are_one_line_errors(tmp_path):
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    with pytest.raises(DataError, match="holds no documents"):
        preprocess(tmp_path / "empty.txt", tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (tmp_path / "a.txt").write_text("hello")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("precious")
    with pytest.raises(DataError, match="exists and is not empty; pass overwrite=true"):
        preprocess(tmp_path / "a.txt", tmp_path / "out")
    assert (tmp_path / "out" / "keep.txt").read_text() == "precious"
    preprocess(tmp_path / "a.txt", tmp_path / "out", overwrite=True)
    assert sorted(os.listdir(tmp_path / "out")) == ["index.arrow", "metadata.json", "shard-00000.arrow"]
    (tmp_path / "empty_dir").mkdir()
    preprocess(tmp_path / "a.txt", tmp_path / "empty_dir")
    with pytest.raises(ConfigError, match="on_error=maybe"):
        preprocess(tmp_path / "a.txt", tmp_path / "o2", on_error="maybe")
    with pytest.raises(ConfigError, match="tokenizer.path"):
        preprocess(tmp_path / "a.txt", tmp_path / "o2", TokenizerConfig(kind="hf"))
    with pytest.raises(DataError, match="tokenizer.json"):
        preprocess(tmp_path / "a.txt", tmp_path / "o2", TokenizerConfig(kind="hf", path=str(tmp_path / "no.json")))
    assert not (tmp_path / "o2").exists()


def test_a_killed_preprocess_leaves_no_directory_that_looks_complete(shakespeare, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text(shakespeare.read_text() * 24)          # ~27 MB: seconds of work
    out = tmp_path / "out"
    code = (f"from tests.data.helpers import preprocess; "
            f"preprocess({str(big)!r}, {str(out)!r}, shard_tokens=200_000)")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while not list(tmp_path.glob(".out.tmp-*/shard-00002.arrow")):   # killed in the middle of writing
        assert proc.poll() is None and time.time() < deadline, "preprocess ended before it could be killed"
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not out.exists()
    with pytest.raises(DataError, match="no such directory"):
        read_metadata(out)
    leftovers = list(tmp_path.glob(".out.tmp-*"))
    assert leftovers and not (leftovers[0] / "metadata.json").exists()
    # The next run cleans up after the dead one and completes.
    (tmp_path / "small.txt").write_text("a\n\nb\n")
    preprocess(tmp_path / "small.txt", out)
    assert read_metadata(out)["num_documents"] == 2 and not list(tmp_path.glob(".out.tmp-*"))


def test_an_output_that_is_an_input_file_is_refused(tmp_path):
    """(Outputs over input directories: tests/test_paths.py.)"""
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "a.txt").write_text("one\n\ntwo\n")
    with pytest.raises(DataError, match="is a file, not a directory"):
        preprocess(corpus / "a.txt", corpus / "a.txt", overwrite=True)
