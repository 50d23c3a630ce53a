"""Every shard is checked on open; damage is a one-line DataError naming the file."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gpt.data import read_metadata
from gpt.data.format import SCHEMA_METADATA
from gpt.data.shards import ShardSet
from gpt.errors import DataError

from tests.data.helpers import write_address_shards

LENGTHS = [30, 1, 200, 57, 12] * 20


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "shards"
    write_address_shards(d, LENGTHS, shard_tokens=2000)
    return d


def open_error(d, **kw) -> str:
    with pytest.raises(DataError) as e:
        ShardSet(d, **kw)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_a_good_set_opens_and_reads_back_every_document(shards):
    s = ShardSet(shards, verify=True)
    meta = read_metadata(shards)
    assert len(meta["shards"]) > 1 and s.num_documents == len(LENGTHS)
    assert np.array_equal(s.doc_len, LENGTHS)
    for d in (0, 1, 2, 57, len(LENGTHS) - 1):
        assert np.array_equal(s.document(d), np.arange(s.doc_start[d], s.doc_start[d + 1]))


def test_truncated_shard_is_named(shards):
    f = shards / "shard-00001.arrow"
    f.write_bytes(f.read_bytes()[:-100])
    msg = open_error(shards)
    assert "shard-00001.arrow" in msg and "truncated" in msg


def test_corrupt_footer_is_named_even_at_the_right_size(shards):
    f = shards / "shard-00000.arrow"
    data = bytearray(f.read_bytes())
    data[-40:-10] = b"\xff" * 30
    f.write_bytes(bytes(data))
    assert "shard-00000.arrow" in open_error(shards)


def test_flipped_token_bytes_are_caught_by_the_checksum(shards):
    f = shards / "shard-00002.arrow"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    ShardSet(shards)  # sizes, schema and counts are intact: only the checksum can tell
    msg = open_error(shards, verify=True)
    assert "shard-00002.arrow" in msg and "sha256" in msg


def test_missing_shard_and_missing_metadata(shards, tmp_path):
    (shards / "shard-00001.arrow").unlink()
    assert "shard-00001.arrow" in open_error(shards) and "missing" in open_error(shards)
    empty = tmp_path / "half-written"
    empty.mkdir()
    assert "metadata.json" in open_error(empty)
    assert "no such directory" in open_error(tmp_path / "nowhere")


@pytest.mark.parametrize("change,expect", [
    ({"version": 2}, "version 2 is not supported"),
    ({"format": "megatron-mmap"}, "format 'megatron-mmap'"),
    ({"num_tokens": 5}, "do not add up"),
    ({"dtype": "int8"}, "'dtype'"),
])
def test_metadata_is_validated(shards, change, expect):
    path = shards / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(change)
    path.write_text(json.dumps(meta))
    msg = open_error(shards)
    assert expect in msg and "metadata.json" in msg


def test_schema_must_match_metadata(shards):
    """A shard whose column type or format tag disagrees with metadata.json is rejected by name."""
    f = shards / "shard-00000.arrow"
    meta_path = shards / "metadata.json"
    meta = json.loads(meta_path.read_text())
    table = pa.ipc.open_file(pa.memory_map(str(f))).read_all()
    for schema_meta, expect in ((SCHEMA_METADATA, "expected list<uint32>"),
                                ({b"gpt.format": b"gpt-token-shards", b"gpt.version": b"7"}, "gpt.version=7")):
        tokens = table.column("tokens").cast(pa.list_(pa.field("item", pa.uint16(), nullable=False))) \
            if expect.startswith("expected") else table.column("tokens")
        bad = pa.table({"tokens": tokens}).replace_schema_metadata(schema_meta)
        with pa.OSFile(str(f), "wb") as sink, pa.ipc.new_file(sink, bad.schema) as w:
            w.write_table(bad)
        meta["shards"][0]["bytes"] = f.stat().st_size
        meta_path.write_text(json.dumps(meta))
        msg = open_error(shards)
        assert "shard-00000.arrow" in msg and expect in msg


def test_shards_are_readable_without_this_package(shards):
    """The documented recipe: pyarrow alone, memory-mapped."""
    meta = json.loads((shards / "metadata.json").read_text())
    total = 0
    for entry in meta["shards"]:
        reader = pa.ipc.open_file(pa.memory_map(str(shards / entry["file"])))
        assert reader.schema.metadata[b"gpt.format"] == b"gpt-token-shards"
        table = reader.read_all()
        assert table.num_rows == entry["documents"]
        total += pc.sum(pc.list_value_length(table.column("tokens"))).as_py()
    assert total == meta["num_tokens"] == sum(LENGTHS)
