"""Data that goes bad while a 2-rank run trains: a shard truncated in place is a one-line DataError on
every rank (agreed before the next step, so no rank waits in a collective), after a checkpoint of the
last completed step (resuming from it is the ordinary resume of tests/trainer/test_pretrain.py)."""

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import REPO, env_for_subprocess, read_metrics, tiny_overrides

from gpt.checkpoint import format as fmt

pytestmark = pytest.mark.distributed


def test_a_shard_truncated_while_training_stops_every_rank_with_a_checkpoint(shards, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(shards, data)
    run = tmp_path / "run"
    args = tiny_overrides(data, run, "train.steps=100000", "eval.every=0")
    torchrun_bin = Path(sys.executable).parent / "torchrun"
    proc = subprocess.Popen([str(torchrun_bin), "--standalone", "--nproc_per_node=2", "-m", "gpt.pretrain", *args],
                            cwd=REPO, env=env_for_subprocess(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    shard = data / "shard-00000.arrow"
    try:
        deadline = time.time() + 300
        while not ((run / "metrics.jsonl").exists() and (run / "metrics.jsonl").read_text().count("\n") >= 3):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-3000:]
            time.sleep(0.1)
        with open(shard, "r+b") as f:   # in place, as a rewrite or a full disk would: the ranks hold it open
            f.truncate(600)
        _, err = proc.communicate(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    errors = [line for line in err.splitlines() if "gpt-pretrain: error:" in line]
    assert len(errors) == 2, err[-3000:]          # one line per rank, no traceback
    # torchrun reports the failed ranks with a traceback of its own; the ranks print none
    assert "Bus error" not in err and all("ChildFailedError" in block for block in err.split("Traceback")[1:])
    assert any("shard-00000.arrow" in e and "truncated while training" in e for e in errors), errors
    step = fmt.read_meta(fmt.resolve(run))["step"]
    assert all(f"checkpoint step {step} saved" in e for e in errors), errors
    records, _ = read_metrics(run)
    assert records[-1]["step"] == step
