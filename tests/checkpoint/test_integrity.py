"""Checkpoints users can trust: interrupted saves are never loaded, damage is caught and named in one
line (or skipped with checkpoint.fallback), pruning keeps what it must, nothing secret or executable
is written or read."""

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO, read_metrics, run_module, tiny_overrides

from gpt.checkpoint import format as fmt
from gpt.checkpoint.save import prune
from gpt.errors import CheckpointError


def _copy(saved_run, tmp_path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(saved_run[0], run)
    return run


def _flip_byte(path: Path, offset_from_end: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[-offset_from_end] ^= 0xFF
    path.write_bytes(bytes(data))


def test_saves_are_complete_and_recorded(saved_run):
    run = saved_run[0]
    root = fmt.checkpoints_dir(run)
    assert [p.name for p in fmt.complete_checkpoints(root)] == ["step_00000002", "step_00000004"]
    assert fmt.read_pointer(root, fmt.LATEST) == "step_00000004"
    assert not list(root.glob(".tmp-*"))
    meta = fmt.validate(root / "step_00000004")  # sizes and checksums of every file
    assert meta["step"] == 4 and meta["trainer"]["consumed_samples"] == 32 and meta["optimizer_steps"] == 4
    assert meta["code"]["gpt"] and meta["config"]["train"]["steps"] == 4 and meta["tokenizer"]["kind"] == "byte"
    assert meta["layout"] == {"world": 1, "tensor": 1, "pipeline": 1, "data": 1, "context": 1, "zero_stage": 0,
                              "precision": "fp32"}


def test_an_interrupted_save_is_never_picked_up(saved_run, tmp_path):
    """What a kill during a save leaves: a .tmp- directory with a partial file and no meta.json."""
    run = _copy(saved_run, tmp_path)
    root = fmt.checkpoints_dir(run)
    tmp = root / ".tmp-step_00000006"
    tmp.mkdir()
    (tmp / "rank-00000.safetensors").write_bytes((root / "step_00000004" / "rank-00000.safetensors").read_bytes()[:5000])
    assert fmt.resolve(run) == root / "step_00000004"
    # A crash between renaming a checkpoint into place and moving `latest`: latest still decides.
    shutil.copytree(root / "step_00000004", root / "step_00000006")
    assert fmt.resolve(run) == root / "step_00000004"
    # No `latest` at all (the first save crashed before writing it): the newest complete one.
    (root / fmt.LATEST).unlink()
    assert fmt.resolve(run) == root / "step_00000006"


@pytest.mark.parametrize("damage, message", [
    ("truncate", r"rank-00000\.safetensors has \d+ bytes, meta\.json records \d+"),
    ("flip", r"rank-00000\.safetensors does not match the xxh3_128 checksum in meta\.json"),
    ("delete", r"rank-00000\.safetensors is missing"),
    ("meta", r"meta\.json is corrupt"),
])
def test_damage_is_named_in_one_line(saved_run, tmp_path, damage, message):
    run = _copy(saved_run, tmp_path)
    ckpt = fmt.checkpoints_dir(run) / "step_00000004"
    rank = ckpt / "rank-00000.safetensors"
    if damage == "truncate":
        rank.write_bytes(rank.read_bytes()[:-10])
    elif damage == "flip":
        _flip_byte(rank)
    elif damage == "delete":
        rank.unlink()
    else:
        (ckpt / fmt.META).write_text('{"format": "gpt-checkpoint", "vers')
    with pytest.raises(CheckpointError, match=message) as e:
        fmt.resolve(run)
    assert "\n" not in str(e.value) and "checkpoint.fallback=true" in str(e.value)


def test_a_corrupt_latest_stops_the_run_with_one_line(saved_run, shards, tmp_path):
    run = _copy(saved_run, tmp_path)
    _flip_byte(fmt.checkpoints_dir(run) / "step_00000004" / "rank-00000.safetensors")
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=6", "eval.every=0"))
    assert proc.returncode == 2
    errors = [line for line in proc.stderr.splitlines() if "error" in line]
    assert len(errors) == 1 and "step_00000004/rank-00000.safetensors" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_fallback_resumes_from_the_previous_good_checkpoint(saved_run, shards, tmp_path):
    run = _copy(saved_run, tmp_path)
    root = fmt.checkpoints_dir(run)
    _flip_byte(root / "step_00000004" / "rank-00000.safetensors")
    (root / ".tmp-step_00000005").mkdir()  # and a save that was interrupted
    proc = run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=6", "eval.every=0", "checkpoint.every=2",
                                                     "checkpoint.keep_last=0", "checkpoint.fallback=true"), check=True)
    assert "checkpoint.fallback" in proc.stderr and "moved" in proc.stderr
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == [1, 2, 3, 4, 5, 6]  # 3 and 4 were trained again from step 2
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step_00000002", "step_00000004",
                                                      "step_00000004.corrupt", "step_00000006"]
    fmt.validate(root / "step_00000004")  # the re-trained step 4 is intact


def test_pruning_keeps_the_newest_latest_and_best(tmp_path):
    root = tmp_path / "checkpoints"
    for s in (1, 2, 3, 4, 5):
        (root / fmt.step_dir_name(s)).mkdir(parents=True)
    (root / fmt.BEST).write_text("step_00000002\n")
    (root / fmt.LATEST).write_text("step_00000005\n")
    removed = prune(root, keep_last=2)
    assert sorted(p.name for p in removed) == ["step_00000001", "step_00000003"]
    assert [p.name for p in fmt.complete_checkpoints(root)] == ["step_00000002", "step_00000004", "step_00000005"]
    assert prune(root, keep_last=0) == []  # 0 keeps everything


def test_keep_last_prunes_during_training(saved_run, shards, tmp_path):
    run = _copy(saved_run, tmp_path)
    run_module("gpt.pretrain", tiny_overrides(shards, run, "train.steps=8", "eval.every=0", "checkpoint.every=2",
                                              "checkpoint.keep_last=2"), check=True)
    assert [p.name for p in fmt.complete_checkpoints(fmt.checkpoints_dir(run))] == ["step_00000006", "step_00000008"]


def test_no_secret_from_the_environment_is_written(saved_run):
    run, output, secret = saved_run
    assert secret not in output
    for f in run.rglob("*"):
        if f.is_file():
            assert secret.encode() not in f.read_bytes(), f
    meta = json.loads((run / "checkpoints" / "step_00000004" / "meta.json").read_text())
    assert meta["config"]["logging"]["wandb"]["entity"] == "<redacted>"


def test_nothing_loaded_from_disk_can_run_code():
    """Every torch.load in the package passes weights_only=True; nothing imports pickle."""
    for path in (REPO / "gpt").rglob("*.py"):
        text = path.read_text()
        for call in re.findall(r"torch\.load\([^)]*\)", text):
            assert "weights_only=True" in call, (path, call)
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import cloudpickle)", text, re.M), path


def test_readers_do_not_import_deepspeed():
    """Generation, export and the checkpoint tools run where DeepSpeed is not installed."""
    code = ("import sys, gpt.checkpoint.reader, gpt.checkpoint.tools, gpt.hf.export, gpt.hf.init_from, "
            "gpt.generation.loading, gpt.export, gpt.checkpoint_cli; assert 'deepspeed' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)
