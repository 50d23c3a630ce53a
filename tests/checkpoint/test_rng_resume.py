"""Dropout under tensor parallelism across a resume onto another layout (Megatron's rule, issue 11.3).

TP=2 with dropout 0.1 trains 6 steps, then resumes at tensor 2 x data 2 (another layout: the
random streams are reseeded there) for 6 more. train.check_replicas_every=1 compares, after every
step, a sha256 of every parameter the tensor ranks each hold whole (norms, row-parallel biases,
positions) across the tensor group and stops the run if any differs: both legs must pass it. Before
the fix the resume reseeded each rank with its global rank, the two tensor ranks then drew
different masks for the replicated residual dropout, and the check stopped the run at step 7.
The check can fail: a checkpoint whose rank-1 random state was changed makes it stop at once.
"""

import json
import shutil

import pytest
import torch
from helpers import read_metrics, run_module, tiny_overrides, torchrun
from safetensors import safe_open

from gpt.checkpoint import format as fmt
from gpt.checkpoint.save import write_rank_file

pytestmark = pytest.mark.distributed

DROPOUT = ("model.dropout=0.1", "train.check_replicas_every=1")


@pytest.fixture(scope="module")
def tp2_dropout_half(shards, tmp_path_factory, twelve_steps):
    run = tmp_path_factory.mktemp("tp2_dropout") / "run"
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *twelve_steps, *DROPOUT, "parallel=tp2", "train.stop_at=6"))
    return run


def test_tensor_ranks_stay_identical_through_a_resume_on_another_layout(shards, tmp_path, tp2_dropout_half,
                                                                          twelve_steps):
    run = tmp_path / "run"
    shutil.copytree(tp2_dropout_half, run)
    proc = torchrun(4, "gpt.pretrain", tiny_overrides(shards, run, *twelve_steps, *DROPOUT, "parallel=tp2"))
    assert "random streams reseeded" in proc.stderr  # the layout did change (2 -> 4 ranks)
    steps, _ = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 13))

    # The same training in one process, with its own dropout masks: the same loss within noise.
    # The masks differ (the attention dropout of each tensor rank's heads has its own stream), so the
    # losses are not equal; measured between the two runs: at most 8e-4 relative per step, 4e-5 on the
    # mean of the 12 steps. We allow 4e-3 and 5e-4. Without dropout the layouts agree to ~1e-7
    # (test_reshard.py); a lost Adam state or a wrong data position moves the loss by more than 1e-3.
    single = tmp_path / "single"
    run_module("gpt.pretrain", tiny_overrides(shards, single, *twelve_steps, *DROPOUT), check=True)
    ref, _ = read_metrics(single)
    for a, b in zip(ref, steps):
        assert b["loss"] == pytest.approx(a["loss"], rel=4e-3), (a["step"], a["loss"], b["loss"])
    mean = sum(r["loss"] for r in steps) / 12
    assert mean == pytest.approx(sum(r["loss"] for r in ref) / 12, rel=5e-4)
    assert any(abs(a["loss"] - b["loss"]) > 1e-5 * a["loss"] for a, b in zip(ref, steps))  # other masks were drawn


def test_the_replica_check_catches_tensor_ranks_that_disagree(shards, tmp_path, tp2_dropout_half, twelve_steps):
    """Resume the same layout from a checkpoint whose rank-1 shared random stream was changed: rank 1
    then draws other residual-dropout masks than rank 0, and the replicas part at the first step."""
    run = tmp_path / "run"
    shutil.copytree(tp2_dropout_half, run)
    ckpt = fmt.resolve(run)
    name = fmt.rank_file(1)
    with safe_open(str(ckpt / name), framework="pt") as f:
        tensors = {k: f.get_tensor(k).clone() for k in f.keys()}  # not views of the file we rewrite
    tensors[fmt.RNG_CPU] = torch.Generator().manual_seed(999).get_state()
    meta = json.loads((ckpt / fmt.META).read_text())
    meta["files"][name] = write_rank_file(ckpt / name, tensors)
    (ckpt / fmt.META).write_text(json.dumps(meta))
    proc = torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *twelve_steps, *DROPOUT, "parallel=tp2"), check=False)
    assert proc.returncode != 0
    assert "step 7: " in proc.stderr and "differs between tensor ranks 0 and 1" in proc.stderr, proc.stderr[-3000:]
