"""The fragment index (format version 2) without DeepSpeed: any flat range of any slice, from files
cut any way, is the same as slicing the full tensor; a bad tiling is refused; the writer's files
are safetensors whose checksum is the one recorded; version 1 checkpoints (sha256) still read."""

import json

import pytest
import torch
import xxhash
from safetensors import safe_open
from safetensors.torch import save_file

from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import TensorReader, full_state_dict
from gpt.checkpoint.save import fragment_record, merge_index, write_rank_file
from gpt.checksums import file_checksum
from gpt.errors import CheckpointError

FULL = {"w0": torch.arange(8 * 6, dtype=torch.float32).view(8, 6),  # split along dim 0
        "w1": torch.arange(4 * 12, dtype=torch.float32).view(4, 12) + 0.5,  # split along dim 1
        "norm": torch.arange(7, dtype=torch.float32) - 3}  # replicated
DIMS = {"w0": 0, "w1": 1, "norm": None}
SHELL = {"config": {"model": {}, "train": {}}, "trainer": {}}  # what meta.json's structure check requires besides the index


def _write(tmp_path, tp: int, dp: int):
    """A checkpoint as tp x dp ranks write it: every tensor-parallel slice cut into dp fragments of
    uneven sizes (as ZeRO partitions fall), each in the file of the rank that holds it."""
    ckpt = tmp_path / f"tp{tp}_dp{dp}"
    ckpt.mkdir()
    gathered = []
    for rank in range(tp * dp):
        tp_rank, dp_rank = rank % tp, rank // tp
        tensors, frags = {}, []
        for name, full in FULL.items():
            dim = DIMS[name]
            if dim is None and tp_rank != 0:
                continue
            piece = full.chunk(tp, dim=dim)[tp_rank].contiguous() if dim is not None else full
            flat = piece.reshape(-1)
            cuts = [0] + [min(len(flat), (d * len(flat)) // dp + d % 2) for d in range(1, dp)] + [len(flat)]
            lo, hi = cuts[dp_rank], cuts[dp_rank + 1]
            tensors[name] = flat[lo:hi].clone()
            tensors[fmt.moment_key(name, "exp_avg")] = -flat[lo:hi]
            frags.append(fragment_record(name, file=fmt.rank_file(rank), start=lo, numel=hi - lo,
                                         tp_rank=tp_rank if dim is not None else 0, tp_size=tp if dim is not None else 1,
                                         shape=list(piece.shape), partition_dim=dim, moments=["exp_avg"], trainable=True))
        gathered.append((rank, write_rank_file(ckpt / fmt.rank_file(rank), tensors), frags))
    files, index = merge_index(gathered)
    meta = {"format": fmt.FORMAT, "version": fmt.VERSION, "step": 1, "files": files, "tensors": index, **SHELL,
            "layout": {"world": tp * dp, "tensor": tp, "pipeline": 1, "data": dp}}
    (ckpt / fmt.META).write_text(json.dumps(meta))
    return ckpt


@pytest.mark.parametrize("saved", [(1, 1), (2, 3), (4, 2)])
def test_any_range_of_any_slice_reads_as_the_full_tensor_sliced(tmp_path, saved):
    ckpt = _write(tmp_path, *saved)
    meta = fmt.validate(ckpt)
    reader = TensorReader(ckpt, meta)
    for name, full in FULL.items():
        dim = DIMS[name]
        for tp in (1, 2, 4) if dim is not None else (1,):
            for r in range(tp):
                want = full.chunk(tp, dim=dim)[r] if dim is not None else full
                assert torch.equal(reader.read(name, dim=dim, tp_rank=r, tp_size=tp), want), (name, tp, r)
                flat = want.reshape(-1)
                for lo, hi in ((0, 1), (1, len(flat) - 1), (len(flat) // 3, len(flat) // 2 + 2), (0, len(flat))):
                    got = reader.read_flat(name, dim=dim, tp_rank=r, tp_size=tp, start=lo, stop=hi,
                                           key=fmt.moment_key(name, "exp_avg"))
                    assert torch.equal(got, -flat[lo:hi]), (name, tp, r, lo, hi)
    assert all(torch.equal(full_state_dict(ckpt)[k], v) for k, v in FULL.items())


def test_a_tiling_with_a_gap_or_overlap_is_not_saved():
    def frag(start, numel, rank):
        return fragment_record("w", file=fmt.rank_file(rank), start=start, numel=numel, tp_rank=0, tp_size=1,
                               shape=[10], partition_dim=None, moments=[], trainable=True)

    record = {"bytes": 1, "sha256": ""}
    merge_index([(0, record, [frag(0, 6, 0)]), (1, record, [frag(6, 4, 1)])])
    with pytest.raises(CheckpointError, match="unwritten or written twice"):
        merge_index([(0, record, [frag(0, 5, 0)]), (1, record, [frag(6, 4, 1)])])
    with pytest.raises(CheckpointError, match="cover 12 of 10"):
        merge_index([(0, record, [frag(0, 6, 0)]), (1, record, [frag(6, 6, 1)])])


def test_the_writer_records_the_files_checksum_and_safetensors_reads_it(tmp_path):
    tensors = {"a": torch.randn(3, 5), "rng": torch.get_rng_state(), "b": torch.randn(4).bfloat16(),
               "big": torch.arange(20_000_000, dtype=torch.float32)}  # several chunks
    record = write_rank_file(tmp_path / "x.safetensors", tensors)
    data = (tmp_path / "x.safetensors").read_bytes()
    assert record == {"bytes": len(data), "xxh3_128": xxhash.xxh3_128(data).hexdigest()}
    with safe_open(str(tmp_path / "x.safetensors"), "pt") as f:
        assert f.metadata() == {"format": fmt.FORMAT, "version": str(fmt.VERSION)}
        assert all(torch.equal(f.get_tensor(k), v) for k, v in tensors.items())


def test_version_1_checkpoints_still_load_and_unknown_versions_are_refused(tmp_path):
    """Version 1: one whole slice per tensor, with its shape, named by `file` in each piece."""
    ckpt = tmp_path / "v1"
    ckpt.mkdir()
    files, tensors = {}, {}
    for r in range(2):
        name = fmt.rank_file(r)
        save_file({"w1": FULL["w1"].chunk(2, dim=1)[r].contiguous()} | ({"norm": FULL["norm"]} if r == 0 else {}),
                  str(ckpt / name))
        files[name] = {"bytes": (ckpt / name).stat().st_size, "sha256": file_checksum(ckpt / name, "sha256")}
    tensors["w1"] = {"shape": [4, 12], "partition_dim": 1, "moments": [], "trainable": True,
                     "pieces": [{"file": fmt.rank_file(r), "tp_rank": r, "tp_size": 2, "shape": [4, 6]} for r in range(2)]}
    tensors["norm"] = {"shape": [7], "partition_dim": None, "moments": [], "trainable": True,
                       "pieces": [{"file": fmt.rank_file(0), "tp_rank": 0, "tp_size": 1, "shape": [7]}]}
    meta = {"format": fmt.FORMAT, "version": 1, "step": 3, "files": files, "tensors": tensors, **SHELL,
            "layout": {"world": 1, "tensor": 1, "pipeline": 1, "data": 1}}
    (ckpt / fmt.META).write_text(json.dumps(meta))
    state = full_state_dict(ckpt, fmt.validate(ckpt))
    assert torch.equal(state["w1"], FULL["w1"]) and torch.equal(state["norm"], FULL["norm"])
    reader = TensorReader(ckpt, fmt.read_meta(ckpt))
    assert torch.equal(reader.read_flat("w1", dim=1, tp_rank=1, tp_size=3, start=1, stop=7),
                       FULL["w1"].chunk(3, dim=1)[1].reshape(-1)[1:7])
    data = bytearray((ckpt / fmt.rank_file(1)).read_bytes())
    data[-3] ^= 1
    (ckpt / fmt.rank_file(1)).write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match the sha256 checksum in meta.json"):
        fmt.validate(ckpt)
    (ckpt / fmt.META).write_text(json.dumps(dict(meta, version=9)))
    with pytest.raises(CheckpointError, match=r"format version 9; this gpt reads versions 1, 2 \(a newer gpt"):
        fmt.read_meta(ckpt)
