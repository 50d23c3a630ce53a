"""Resume on the same and on other (tensor, pipeline, data, ZeRO) layouts continues the same training.

Every run trains the tiny model for 12 steps; resumed ones stop after 6 (train.stop_at) and are
re-run, possibly at another layout. The one-process uninterrupted run is the reference for the
cross-layout runs: their weights, Adam moments, step count, LR schedule and data position all come
from the checkpoint, so the only differences left are fp32 round-off from summing in another order
(tensor-parallel matmul halves, all-reduces, pipeline accumulation). Adam's first steps amplify it
where a gradient is mathematically zero but not in fp32 (the key bias: softmax does not see a shift
of all scores), so the update there is round-off divided by epsilon. Measured over these 12 steps
(one OpenMP thread per process, as `make test` runs): at most 6.4e-7 relative on the loss and 3.0e-6
on the gradient norm (tensor 2, step 2). 5e-6 on the loss and 2e-5 on the gradient norm keep a ~7x
margin for other CPUs' rounding, while a lost Adam moment, an off-by-one step count or a wrong data
position moves them by more than 1e-3
(`test_a_lost_optimizer_state_is_caught` checks that the comparison does fail). The same-layout
resume on two processes (ZeRO-3) is held to the same reference and tolerance (its difference from
one process is the data-parallel round-off, not the resume); fp32 one-process resumes are
bit-identical (tests/trainer/test_pretrain.py), and so are bf16 ones at DP=2
(tests/engine/test_precision.py).
"""

import json
import shutil

import pytest
from helpers import read_metrics, run_module, tiny_overrides, torchrun
from parity import assert_zero3_partitioned

from gpt.checkpoint import format as fmt

pytestmark = pytest.mark.distributed

LAYOUTS = {
    "tp2": ["parallel=tp2"],  # tensor 2 (ZeRO-1 over a data group of 1)
    "pp2": ["parallel=pp2"],  # two pipeline stages, ZeRO-1
    "dp2_zero1": ["parallel=zero1"],
    # Threshold 0: DeepSpeed keeps every parameter below 1e5 elements (all of the tiny model's) whole
    # on every rank otherwise, and nothing would be partitioned.
    "dp2_zero3": ["parallel=zero3", "+deepspeed.zero_optimization.stage3_param_persistence_threshold=0"],
    "single": [],
}


def _run(nproc: int, args: list[str]):
    if nproc == 1:
        return run_module("gpt.pretrain", args, check=True)
    return torchrun(nproc, "gpt.pretrain", args)


def assert_close(reference, run, *, loss_rtol=5e-6, norm_rtol=2e-5):
    ref_steps, ref_evals = read_metrics(reference)
    steps, evals = read_metrics(run)
    assert [r["step"] for r in steps] == list(range(1, 13)) == [r["step"] for r in ref_steps]
    for a, b in zip(ref_steps, steps):
        assert b["lr"] == a["lr"] and b["consumed_samples"] == a["consumed_samples"], a["step"]
        assert b["loss"] == pytest.approx(a["loss"], rel=loss_rtol), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=norm_rtol), (a["step"], a["grad_norm"], b["grad_norm"])
    assert [e["step"] for e in evals] == [e["step"] for e in ref_evals] == [6, 12]
    for a, b in zip(ref_evals, evals):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=loss_rtol)


@pytest.fixture(scope="module")
def pp2_half(shards, tmp_path_factory, twelve_steps):
    run = tmp_path_factory.mktemp("pp2_half") / "run"
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *twelve_steps, *LAYOUTS["pp2"], "train.stop_at=6"))
    return run


@pytest.fixture(scope="module")
def zero3_half(shards, tmp_path_factory, twelve_steps):
    run = tmp_path_factory.mktemp("zero3_half") / "run"
    proc = torchrun(2, "gpt.pretrain", tiny_overrides(shards, run, *twelve_steps, *LAYOUTS["dp2_zero3"], "train.stop_at=6"))
    assert_zero3_partitioned(proc.stderr, 2)
    return run


@pytest.mark.parametrize("first, second, nproc", [
    ("dp2_zero3", "dp2_zero3", 2),  # the same two-process layout, loading into ZeRO-3's partitions
    ("tp2", "dp2_zero1", 2),
    ("pp2", "tp2", 2),
    ("tp2", "pp2", 2),  # into a pipeline: its last stage's copy of the tied embedding must be loaded too
    ("dp2_zero3", "dp2_zero1", 2),  # out of ZeRO-3
    ("tp2", "single", 1),
])
def test_resume_on_any_layout_matches_one_process(request, shards, tmp_path, reference, twelve_steps,
                                                      first, second, nproc):
    half = request.getfixturevalue({"tp2": "tp2_half", "pp2": "pp2_half", "dp2_zero3": "zero3_half"}[first])
    run = tmp_path / "run"
    shutil.copytree(half, run)
    proc = _run(nproc, tiny_overrides(shards, run, *twelve_steps, *LAYOUTS[second]))
    if second == "dp2_zero3":
        assert_zero3_partitioned(proc.stderr, 2)
    assert_close(reference, run)
    meta = json.loads((run / "checkpoints" / "step_00000012" / "meta.json").read_text())
    assert meta["optimizer_steps"] == 12 and meta["trainer"]["consumed_samples"] == 12 * 8


def test_a_lost_optimizer_state_is_caught(shards, tmp_path, tp2_half, reference, twelve_steps):
    """The tolerance above can fail: resuming with the Adam moments stripped (gpt-checkpoint convert
    weights_only=true) is the same run minus its optimizer state, and assert_close rejects it."""
    run = tmp_path / "run"
    shutil.copytree(tp2_half, run)
    ckpt = run / "checkpoints" / "step_00000006"
    stripped = tmp_path / "stripped"  # convert never writes over its input: convert beside, then swap
    run_module("gpt.checkpoint_cli", ["convert", f"checkpoint={ckpt}", f"output={stripped}", "tensor=1",
                                      "weights_only=true"], check=True)
    shutil.rmtree(ckpt)
    shutil.move(stripped, ckpt)
    run_module("gpt.pretrain", tiny_overrides(shards, run, *twelve_steps), check=True)
    with pytest.raises(AssertionError):
        assert_close(reference, run)



def test_each_rank_writes_only_its_partition(zero3_half, tp2_half):
    """ZeRO-3 over 2 data ranks: every tensor is stored as the two partitions, one in each rank's file,
    each element exactly once (no rank gathered a full tensor); TP=2: each slice once, by its tensor rank."""
    meta = fmt.read_meta(fmt.resolve(zero3_half))
    assert sorted(meta["files"]) == ["rank-00000.safetensors", "rank-00001.safetensors"]
    for name, entry in meta["tensors"].items():
        (piece,) = entry["pieces"]
        files = [f["file"] for f in piece["fragments"]]
        assert files == ["rank-00000.safetensors", "rank-00001.safetensors"], (name, piece)
        assert sum(f["numel"] for f in piece["fragments"]) == fmt.numel(entry["shape"])
        assert piece["fragments"][0]["numel"] == -(-fmt.numel(entry["shape"]) // 2)  # ZeRO-3's partition size
    meta = fmt.read_meta(fmt.resolve(tp2_half))
    replicated_by = []
    for entry in meta["tensors"].values():
        split = entry["partition_dim"] is not None
        assert [p["tp_rank"] for p in entry["pieces"]] == ([0, 1] if split else [0])
        for p in entry["pieces"]:
            (fragment,) = p["fragments"]  # a data group of one: the whole slice
            if split:
                assert fragment["file"] == fmt.rank_file(p["tp_rank"])
            else:
                replicated_by.append(fragment["file"])
    assert sorted(set(replicated_by)) == [fmt.rank_file(0), fmt.rank_file(1)]  # spread over the tensor ranks
