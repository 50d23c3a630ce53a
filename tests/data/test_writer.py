"""The shard writer: bytes depend only on the documents (not on how they arrive, in parts or whole),
one record batch and one document at most are held, and the chunk index coarsens exactly."""

import filecmp
import json
import os

import numpy as np
import pyarrow as pa

from gpt.data import format as fmt
from gpt.data.format import coarsen
from gpt.data.writer import ShardWriter, finish_directory

from tests.data.helpers import AddressTokenizer, preprocess, read_rows

RNG = np.random.default_rng(0)
LENGTHS = RNG.integers(1, 300, size=400)
TOKENS = np.arange(LENGTHS.sum(), dtype=np.uint32)


def write(directory, feed, **kw):
    directory.mkdir()
    w = ShardWriter(directory, "uint32", kw.pop("shard_tokens", 9_000), batch_tokens=kw.pop("batch_tokens", 2_500))
    for tokens, lengths, open_end in feed:
        w.add(tokens, lengths, open_end=open_end)
    shards = w.close()
    return finish_directory(directory, AddressTokenizer().to_dict(), "uint32", shards,
                            [(c, w.granularity) for c in w.chunks], {"test": True})


def in_parts(rng):
    """The documents cut at random places, documents continued across calls (open_end)."""
    cuts = np.sort(rng.choice(np.arange(1, len(TOKENS)), size=60, replace=False))
    ends = np.cumsum(LENGTHS)
    start = 0
    for cut in list(cuts) + [len(TOKENS)]:
        # documents ending inside [start, cut], plus the open one
        first_doc = int(np.searchsorted(ends, start, side="right"))
        last_doc = int(np.searchsorted(ends, cut, side="left"))
        lengths = []
        for d in range(first_doc, min(last_doc + 1, len(LENGTHS))):
            lo, hi = max(start, ends[d] - LENGTHS[d]), min(cut, ends[d])
            if hi > lo:
                lengths.append(hi - lo)
        open_end = cut < len(TOKENS) and cut not in set(ends.tolist())
        yield TOKENS[start:cut], np.array(lengths), open_end
        start = cut


def test_the_bytes_do_not_depend_on_how_documents_arrive(tmp_path):
    whole = write(tmp_path / "whole", [(TOKENS, LENGTHS, False)])
    parts = write(tmp_path / "parts", in_parts(np.random.default_rng(1)))
    assert whole == parts and len(whole["shards"]) > 3
    for name in os.listdir(tmp_path / "whole"):
        assert filecmp.cmp(tmp_path / "whole" / name, tmp_path / "parts" / name, shallow=False), name
    rows = read_rows(tmp_path / "whole")
    assert [len(r) for r in rows] == LENGTHS.tolist()
    for entry in whole["shards"]:
        reader = pa.ipc.open_file(pa.memory_map(str(tmp_path / "whole" / entry["file"])))
        sizes = [reader.get_batch(i).column(0).values.__len__() for i in range(reader.num_record_batches)]
        assert all(s < 2_500 + 300 for s in sizes), "a batch closes after the document reaching batch_tokens"


def test_a_document_larger_than_a_batch_is_its_own_batch_and_arrives_in_pieces(tmp_path):
    lengths = np.array([10, 50_000, 10])
    tokens = np.arange(lengths.sum(), dtype=np.uint32)
    pieces = [(tokens[:1010], np.array([10, 1000]), True)] + \
             [(tokens[k:k + 1000], np.array([1000]), True) for k in range(1010, 50_010, 1000)] + \
             [(tokens[50_010:], np.array([0, 10]), False)]
    meta = write(tmp_path / "d", pieces, shard_tokens=100_000)
    assert [len(r) for r in read_rows(tmp_path / "d")] == lengths.tolist()
    assert read_rows(tmp_path / "d")[1] == list(range(10, 50_010))
    assert meta["shards"][0]["max_token_id"] == int(tokens.max())


def test_the_chunk_index_coarsens_to_the_granularity_of_the_whole_set(tmp_path, monkeypatch):
    monkeypatch.setattr(fmt, "MAX_CHUNKS", 16)               # 400 documents: 32 per chunk
    meta = write(tmp_path / "d", [(TOKENS[:a.sum()], a, False) for a in np.array_split(LENGTHS, 7)])
    g = meta["index"]["documents_per_chunk"]
    assert g == 32 == fmt.documents_per_chunk(len(LENGTHS))
    index = pa.ipc.open_file(pa.memory_map(str(tmp_path / "d" / "index.arrow"))).read_all().column(0).to_numpy()
    expected, first = [], 0
    for entry in meta["shards"]:
        docs = LENGTHS[first:first + entry["documents"]]
        expected += [int(docs[i:i + g].sum()) for i in range(0, len(docs), g)]
        first += entry["documents"]
    assert index.tolist() == expected and meta["index"]["chunks"] == len(expected)
    assert coarsen(np.array([1, 2, 3, 4, 5], dtype=np.uint64), 4).tolist() == [10, 5]


def test_a_huge_document_goes_through_preprocessing_in_pieces(tmp_path):
    doc = " ".join(f"word{i}" for i in range(600_000))       # 5.3 MB: encoded and sent in ~1 MB pieces
    (tmp_path / "in.jsonl").write_text("\n".join(json.dumps({"text": t}) for t in ["short one", doc, "last"]) + "\n")
    preprocess(tmp_path / "in.jsonl", tmp_path / "out", workers=2)
    assert [bytes(r).decode() for r in read_rows(tmp_path / "out")] == ["short one", doc, "last"]
