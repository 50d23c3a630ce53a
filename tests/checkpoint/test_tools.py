"""gpt-checkpoint inspect | verify | convert, as a user runs them (one process, no DeepSpeed)."""

import json

import pytest
import torch
from helpers import run_module

from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import TensorReader, full_state_dict


def _moments(ckpt):
    meta = fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    return {(n, m): reader.read(n, dim=None, tp_rank=0, tp_size=1, key=fmt.moment_key(n, m))
            for n, e in meta["tensors"].items() for m in e["moments"]}


def test_inspect_summarises(tp2_half):
    out = json.loads(run_module("gpt.checkpoint_cli", ["inspect", f"checkpoint={tp2_half}"], check=True).stdout)
    assert out["step"] == 6 and out["optimizer_steps"] == 6 and out["layout"]["tensor"] == 2
    assert out["files"] == 2 and out["optimizer_state"] and out["model"]["n_layer"] == 2
    # tiny: 384 vocab rows x 64 + 64 positions x 64 + 2 blocks + final norm
    assert out["parameters"] == 384 * 64 + 64 * 64 + 2 * (4 * 64 + 64 * 192 + 192 + 64 * 64 + 64 + 64 * 256 + 256
                                                           + 256 * 64 + 64) + 2 * 64


@pytest.mark.parametrize("tensor", [1, 4])
def test_convert_resplits_without_changing_a_bit(tp2_half, tmp_path, tensor):
    src = fmt.resolve(tp2_half)
    out = tmp_path / "converted"
    run_module("gpt.checkpoint_cli", ["convert", f"checkpoint={tp2_half}", f"output={out}", f"tensor={tensor}"], check=True)
    meta = fmt.validate(out)
    assert meta["layout"]["tensor"] == tensor and len(meta["files"]) == tensor and meta["step"] == 6
    assert meta["converted_from"]["layout"]["tensor"] == 2 and meta["rng"] is False
    a, b = full_state_dict(src), full_state_dict(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = _moments(src), _moments(out)
    assert ma.keys() == mb.keys() and len(ma) == 2 * len(a) and all(torch.equal(ma[k], mb[k]) for k in ma)
    qkv = meta["tensors"]["blocks.0.attn.qkv.weight"]
    assert [pc["shape"] for pc in qkv["pieces"]] == [[192 // tensor, 64]] * tensor


def test_verify_passes_then_names_a_damaged_file(tp2_half, tmp_path):
    out = tmp_path / "copy"
    run_module("gpt.checkpoint_cli", ["convert", f"checkpoint={tp2_half}", f"output={out}", "tensor=2",
                                      "weights_only=true"], check=True)
    ok = json.loads(run_module("gpt.checkpoint_cli", ["verify", f"checkpoint={out}"], check=True).stdout)
    pieces = sum(len(e["pieces"]) for e in fmt.read_meta(out)["tensors"].values())
    assert ok["ok"] and ok["tensors_checked"] == pieces > len(fmt.read_meta(out)["tensors"])
    assert fmt.read_meta(out)["optimizer_steps"] == 0 and not _moments(out)
    rank = out / "rank-00001.safetensors"
    data = bytearray(rank.read_bytes())
    data[-7] ^= 1
    rank.write_bytes(bytes(data))
    proc = run_module("gpt.checkpoint_cli", ["verify", f"checkpoint={out}"])
    assert proc.returncode == 2 and "rank-00001.safetensors does not match the xxh3_128 checksum" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_unknown_command_is_one_line():
    proc = run_module("gpt.checkpoint_cli", ["squash", "checkpoint=x"])
    assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1
