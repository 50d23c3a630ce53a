"""The tokenizer file a shard directory's metadata.json names (`tokenizer.file`) stays inside it: a
plain file name, a regular file (a FIFO would hang training and generation), not a symlink out."""

import json
import os
import shutil

import pytest
from helpers import no_hang

from gpt.data import load_tokenizer
from gpt.errors import DataError


@pytest.fixture
def bpe_record(shards, tmp_path):
    """A copy of the session's shards whose metadata says: a bpe tokenizer in `file`."""
    d = tmp_path / "shards"
    shutil.copytree(shards, d)

    def record(file: str):
        meta = json.loads((d / "metadata.json").read_text())
        meta["tokenizer"] = {"kind": "bpe", "vocab_size": 300, "eod_id": 0, "eod_token": "<|endoftext|>", "file": file}
        (d / "metadata.json").write_text(json.dumps(meta))
        return d

    return record


@pytest.mark.parametrize("file", ["../../etc/passwd", "/etc/passwd", "..", "a/b.json", ""])
def test_a_tokenizer_file_outside_the_shard_directory_is_refused(bpe_record, file):
    with pytest.raises(DataError, match="not a plain file name inside its directory") as e:
        load_tokenizer(bpe_record(file))
    assert "\n" not in str(e.value)


def test_a_symlinked_or_fifo_tokenizer_file_is_refused_without_reading_it(bpe_record, tmp_path):
    d = bpe_record("tokenizer.json")
    (tmp_path / "elsewhere.json").write_text("{}")
    (d / "tokenizer.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(DataError, match="is a symlink to .*outside"):
        load_tokenizer(d)
    (d / "tokenizer.json").unlink()
    os.mkfifo(d / "tokenizer.json")
    with no_hang(d / "tokenizer.json"), pytest.raises(DataError, match=r"is not a regular file \(a FIFO\)"):
        load_tokenizer(d)
