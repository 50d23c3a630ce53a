"""Every shard is checked (on open, on first use, on every read); damage is a one-line DataError naming the file.

Format version 2 records each shard's largest token id and a chunk index, version 3 XXH3-128 checksums
instead of sha256; version 1 and 2 directories still open and give exactly the same batches.
"""

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from gpt.checksums import file_checksum
from gpt.config.training import DataConfig
from gpt.data import build_loaders, read_metadata
from gpt.data.format import SCHEMA_METADATA, fingerprint, schema_metadata
from gpt.data.shards import ShardSet
from gpt.data.writer import write_token_shards
from gpt.errors import DataError

from tests.data.helpers import AddressTokenizer, write_address_shards

LENGTHS = [30, 1, 200, 57, 12] * 20


@pytest.fixture
def shards(tmp_path):
    d = tmp_path / "shards"
    write_address_shards(d, LENGTHS, shard_tokens=2000)
    return d


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg
    return msg


def open_error(d, **kw) -> str:
    with pytest.raises(DataError) as e:
        ShardSet(d, **kw)
    return one_line(e)


def first_batch(d, **kw):
    train, _ = build_loaders(DataConfig(path=str(d), val_fraction=0.0, **kw), seq_len=16, global_batch_size=8,
                             micro_batch_size=8, dp_rank=0, dp_size=1, seed=1)
    return train, train.global_batch(0)


def test_a_good_set_opens_and_reads_back_every_document(shards):
    s = ShardSet(shards, verify=True)
    meta = read_metadata(shards)
    assert meta["version"] == 3 and len(meta["shards"]) > 1 and s.num_documents == len(LENGTHS)
    assert np.array_equal(s.doc_lengths(np.arange(len(LENGTHS))), LENGTHS)
    starts = np.concatenate([[0], np.cumsum(LENGTHS)])
    for d in (0, 1, 2, 57, len(LENGTHS) - 1):
        assert np.array_equal(s.document(d), np.arange(starts[d], starts[d + 1]))
    assert s.granularity == 1 and np.array_equal(s.chunk_tokens, LENGTHS), "one chunk per document"
    for entry in meta["shards"]:
        rows = pa.ipc.open_file(pa.memory_map(str(shards / entry["file"]))).read_all().column("tokens")
        assert entry["max_token_id"] == pc.max(pc.list_flatten(rows)).as_py()


def test_truncated_shard_is_named(shards):
    f = shards / "shard-00001.arrow"
    f.write_bytes(f.read_bytes()[:-100])
    msg = open_error(shards)
    assert "shard-00001.arrow" in msg and "truncated" in msg


def test_a_shard_truncated_while_training_is_a_one_line_error_not_sigbus(shards):
    train, _ = first_batch(shards)
    for f in shards.glob("shard-*.arrow"):
        f.write_bytes(f.read_bytes()[:600])    # every shard cut in place while the loader holds it open
    with pytest.raises(DataError) as e:
        for k in range(1, 20):
            train.global_batch(k * 8)
    msg = one_line(e)
    assert "shard-0000" in msg and "truncated while training" in msg


def corrupt_footer(f):
    data = bytearray(f.read_bytes())
    data[-40:-10] = b"\xff" * 30
    f.write_bytes(bytes(data))


def test_corrupt_footer_is_named_at_first_use_and_by_verify(shards, tmp_path):
    corrupt_footer(shards / "shard-00000.arrow")
    assert "shard-00000.arrow" in open_error(shards), "shard 0 is opened at once (its schema says if there is a mask)"
    other = tmp_path / "other"
    write_address_shards(other, LENGTHS, shard_tokens=2000)
    corrupt_footer(other / "shard-00002.arrow")       # the right size: only opening it can tell
    ShardSet(other)                                    # shards are opened on first use
    assert "shard-00002.arrow" in open_error(other, verify=True)
    with pytest.raises(DataError) as e:
        train, _ = first_batch(other)
        for k in range(train.samples_per_epoch // 8):
            train.global_batch(k * 8)
    assert "shard-00002.arrow" in one_line(e) and "not a readable Arrow IPC file" in str(e.value)


def test_flipped_token_bytes_are_caught_by_the_checksum(shards):
    f = shards / "shard-00002.arrow"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF
    f.write_bytes(bytes(data))
    ShardSet(shards)  # sizes, schema and counts are intact: only the checksum can tell
    msg = open_error(shards, verify=True)
    assert "shard-00002.arrow" in msg and "xxh3_128" in msg


def test_missing_shard_index_and_metadata(shards, tmp_path):
    (shards / "shard-00001.arrow").unlink()
    assert "shard-00001.arrow" in open_error(shards) and "missing" in open_error(shards)
    empty = tmp_path / "half-written"
    empty.mkdir()
    assert "metadata.json" in open_error(empty)
    assert "no such directory" in open_error(tmp_path / "nowhere")


def test_a_damaged_index_is_named(tmp_path):
    d = tmp_path / "shards"
    write_address_shards(d, LENGTHS, shard_tokens=2000)
    (d / "index.arrow").write_bytes((d / "index.arrow").read_bytes()[:-8])
    assert "index.arrow" in open_error(d)
    # An index of the right size that disagrees with the shards
    write_address_shards(tmp_path / "other", LENGTHS[::-1], shard_tokens=2000)
    (d / "index.arrow").write_bytes((tmp_path / "other" / "index.arrow").read_bytes())
    assert "chunk index does not match" in open_error(d)


@pytest.mark.parametrize("change,expect", [
    ({"version": 4}, "version 4 is not supported"),
    ({"format": "megatron-mmap"}, "format 'megatron-mmap'"),
    ({"num_tokens": 5}, "do not add up"),
    ({"dtype": "int8"}, "'dtype'"),
    ({"index": None}, "'index' must have"),
])
def test_metadata_is_validated(shards, change, expect):
    path = shards / "metadata.json"
    meta = json.loads(path.read_text())
    meta.update(change)
    path.write_text(json.dumps(meta))
    msg = open_error(shards)
    assert expect in msg and "metadata.json" in msg


def test_token_ids_outside_the_vocabulary_fail_at_open_naming_the_shard(tmp_path):
    lengths = np.array([50, 60, 70])
    tokens = np.arange(lengths.sum(), dtype=np.uint32)
    tokens[130] = 1000                                   # in the third document, hence the second shard
    write_token_shards(tmp_path / "s", AddressTokenizer(vocab_size=500), [(tokens, lengths, None)],
                       source={"test": True}, shard_tokens=100)
    msg = open_error(tmp_path / "s")
    assert "shard-00001.arrow" in msg and "token id 1000" in msg and "500 ids" in msg


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


def write_version_1(directory, lengths, *, shard_docs, vocab_size: int = 1 << 24, tokens=None):
    """A shard directory exactly as gpt 0.1 wrote it (format version 1: no index, no max_token_id), with
    shard_docs documents per shard (a number, or a list)."""
    directory.mkdir()
    lengths = np.asarray(lengths)
    tokens = np.arange(lengths.sum(), dtype=np.uint32) if tokens is None else tokens
    item = pa.list_(pa.field("item", pa.uint32(), nullable=False))
    schema = pa.schema([pa.field("tokens", item, nullable=False)], metadata=schema_metadata(1))
    shards, start = [], 0
    counts = shard_docs if isinstance(shard_docs, list) else [shard_docs] * -(-len(lengths) // shard_docs)
    firsts = np.concatenate([[0], np.cumsum(counts)[:-1]])
    for i, (first, count) in enumerate(zip(firsts, counts)):
        part = lengths[first:first + count]
        offsets = np.concatenate([[0], np.cumsum(part)]).astype(np.int32)
        values = tokens[start:start + int(part.sum())]
        start += int(part.sum())
        path = directory / f"shard-{i:05d}.arrow"
        with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, schema) as w:
            w.write_batch(pa.RecordBatch.from_arrays([pa.ListArray.from_arrays(pa.array(offsets), pa.array(values),
                                                                               type=item)], schema=schema))
        shards.append({"file": path.name, "documents": len(part), "tokens": int(part.sum()),
                       "bytes": path.stat().st_size, "sha256": file_checksum(path, "sha256")})
    meta = {"format": "gpt-token-shards", "version": 1, "created_by": "gpt 0.1.0",
            "tokenizer": {"kind": "test-addresses", "vocab_size": vocab_size, "eod_id": vocab_size - 1},
            "dtype": "uint32", "num_documents": len(lengths), "num_tokens": int(lengths.sum()), "shards": shards,
            "source": {"test": True}}
    (directory / "metadata.json").write_text(json.dumps(meta))


def test_version_1_directories_open_and_give_the_same_batches(tmp_path):
    meta = write_address_shards(tmp_path / "v2", LENGTHS, shard_tokens=2000)
    write_version_1(tmp_path / "v1", LENGTHS, shard_docs=[s["documents"] for s in meta["shards"]])
    for k in range(5):
        a = build_loaders(DataConfig(path=str(tmp_path / "v1")), seq_len=16, global_batch_size=8, micro_batch_size=4,
                          dp_rank=0, dp_size=1, seed=3)
        b = build_loaders(DataConfig(path=str(tmp_path / "v2")), seq_len=16, global_batch_size=8, micro_batch_size=4,
                          dp_rank=0, dp_size=1, seed=3)
        for loader_a, loader_b in zip(a, b):
            for x, y in zip(loader_a.global_batch(k * 8), loader_b.global_batch(k * 8)):
                assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.labels, y.labels)


def test_version_2_directories_keep_their_sha256_records_and_fingerprint(tmp_path):
    """Version 3 changed only the checksum (sha256 -> xxh3_128): a version 2 set opens, gives the
    same batches, is verified against its sha256 sums, and keeps the fingerprint its runs recorded."""
    meta = write_address_shards(tmp_path / "v3", LENGTHS, shard_tokens=2000)
    v2 = tmp_path / "v2"
    v2.mkdir()
    for s in meta["shards"]:
        table = pa.ipc.open_file(str(tmp_path / "v3" / s["file"])).read_all()
        table = table.replace_schema_metadata(schema_metadata(2))
        with pa.OSFile(str(v2 / s["file"]), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
            w.write_table(table)
        del s["xxh3_128"]
        s.update(bytes=(v2 / s["file"]).stat().st_size, sha256=file_checksum(v2 / s["file"], "sha256"))
    (v2 / "index.arrow").write_bytes((tmp_path / "v3" / "index.arrow").read_bytes())
    meta["index"]["sha256"] = file_checksum(v2 / "index.arrow", "sha256")
    del meta["index"]["xxh3_128"]
    meta["version"] = 2
    (v2 / "metadata.json").write_text(json.dumps(meta))
    a = build_loaders(DataConfig(path=str(v2), verify=True), seq_len=16, global_batch_size=8, micro_batch_size=4,
                      dp_rank=0, dp_size=1, seed=3)
    b = build_loaders(DataConfig(path=str(tmp_path / "v3"), verify=True), seq_len=16, global_batch_size=8,
                      micro_batch_size=4, dp_rank=0, dp_size=1, seed=3)
    for loader_a, loader_b in zip(a, b):
        for x, y in zip(loader_a.global_batch(8), loader_b.global_batch(8)):
            assert np.array_equal(x.tokens, y.tokens) and np.array_equal(x.labels, y.labels)
    from gpt.data.tokenizer import identity  # the body version 2 fingerprints were computed from

    body = {"tokenizer": identity(meta["tokenizer"]), "dtype": meta["dtype"],
            "shards": [{k: s[k] for k in ("file", "documents", "tokens", "bytes", "sha256")} for s in meta["shards"]]}
    assert fingerprint(read_metadata(v2)) == hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()
    assert fingerprint(read_metadata(v2)) != fingerprint(read_metadata(tmp_path / "v3"))
    data = bytearray((v2 / "shard-00001.arrow").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (v2 / "shard-00001.arrow").write_bytes(bytes(data))
    msg = open_error(v2, verify=True)
    assert "shard-00001.arrow" in msg and "sha256 does not match" in msg
    meta["shards"][0]["sha256"] = "not-hex"
    (v2 / "metadata.json").write_text(json.dumps(meta))
    assert "a hex sha256" in open_error(v2)


def test_version_1_token_ids_outside_the_vocabulary_fail_when_read(tmp_path):
    tokens = np.arange(sum(LENGTHS), dtype=np.uint32) % 400
    tokens[-5] = 450                                     # in the last shard
    write_version_1(tmp_path / "v1", LENGTHS, shard_docs=30, vocab_size=401, tokens=tokens)
    train, _ = build_loaders(DataConfig(path=str(tmp_path / "v1"), val_fraction=0.0), seq_len=16,
                             global_batch_size=64, micro_batch_size=64, dp_rank=0, dp_size=1, seed=0)
    with pytest.raises(DataError) as e:
        for k in range(0, train.samples_per_epoch, 64):
            train.global_batch(k)
    msg = one_line(e)
    assert "shard-00003.arrow" in msg and "token id 450" in msg


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

