"""The parity matrix: every parallel layout trains the very model of one process (fp32, CPU, gloo).

Each layout runs 10 steps of the tiny model (3 blocks, global batch 8 = 4 micro-batches of 2 in one
process) and must match the one-process run step by step in loss and gradient norm, and at both
evaluations in validation loss. Same seed, same data, same initial weights (per-layer seeded init).
Each layout runs once per session (the `launch` fixture); the report and MFU tests read those runs.

Tolerances: a layout computes the same sums in another order (all-reduces over ranks instead of
local accumulation, split matmuls, a different micro-batch size), i.e. fp32 round-off of ~1e-7
relative per step; Adam can amplify it over 10 steps for weights with tiny gradients. Observed
worst: ~3e-7 on loss, ~3e-7 on grad norm. 1e-5 relative on losses and 1e-4 on the gradient norm
leave 30-300x margin, while any real bug (a missing average, a wrong sample, a double-counted or
missing tied gradient, a wrong tensor slice) moves them by more than 1e-3 within a step or two.

ZeRO-3 layouts set stage3_param_persistence_threshold=0 and check that the start-up report says
every parameter tensor was partitioned (by default DeepSpeed keeps tensors this small whole).
"""

import re

import pytest
from helpers import read_metrics
from parity import ZERO3_PARTITIONED, assert_zero3_partitioned, deviation

pytestmark = pytest.mark.distributed

LOSS_RTOL, NORM_RTOL = 1e-5, 1e-4

MATRIX = {
    # name: (processes, architecture, overrides)
    "pp2-zero0-blocks1+2": (2, "gpt2", ("parallel=pp2", "parallel.zero_stage=0", "parallel.pipeline_layers=[1,2]")),
    "dp2-zero0-accum4": (2, "gpt2", ("train.micro_batch_size=1",)),  # 4 micro-batches per rank
    "dp2-zero1": (2, "gpt2", ("parallel=zero1",)),  # every dp2 run also accumulates 2 micro-batches
    # GPT-2's tied embedding/head: one partitioned tensor used by the first and the last layer.
    "dp2-zero3-tied": (2, "gpt2", ("parallel=zero3", ZERO3_PARTITIONED)),
    "tp2dp2-zero2": (4, "gpt2", ("parallel.tensor=2", "parallel.zero_stage=2")),
    "tp2dp2-zero3": (4, "gpt2", ("parallel.tensor=2", "parallel.zero_stage=3", ZERO3_PARTITIONED)),
    "tp2pp2-ckpt": (4, "gpt2", ("parallel=tp2pp2", "train.activation_checkpointing=true")),
    "llama-tp2-ckpt": (2, "llama", ("parallel=tp2", "train.activation_checkpointing=true")),
    "llama-pp2": (2, "llama", ("parallel=pp2", "train.peak_flops=1e11")),  # blocks 2+1; MFU from a fixed peak
}


@pytest.mark.parametrize("name", MATRIX)
def test_layout_matches_one_process(launch, name):
    nproc, arch, overrides = MATRIX[name]
    reference = launch(1, arch)
    run = launch(nproc, arch, *overrides)
    dev = deviation(reference.run_dir, run.run_dir)
    print(f"{name}: {dev}")
    assert dev.loss < LOSS_RTOL and dev.val_loss < LOSS_RTOL and dev.grad_norm < NORM_RTOL, f"{name}: {dev}"
    if ZERO3_PARTITIONED in overrides:
        # 3 blocks x 12 tensors + 2 embeddings + the final norm's 2 (the tied head has none of its own)
        assert assert_zero3_partitioned(run.proc.stderr, data=2) == 40


# The speed settings train the same model. torch.compile (inductor) fuses the blocks' pointwise ops and
# may reorder their sums: fp32 round-off again, the same tolerances. Reading the metrics back from the
# device in windows (logging.every) instead of every step changes no computation: bit-identical.
SPEED = {  # one process compiles the whole model (embedding to final norm), tensor 2 each block
    "compile": (1, "gpt2", ("train.compile=true",), "the model"),
    "tp2-compile": (2, "gpt2", ("parallel=tp2", "train.compile=true"), "the blocks"),
}


@pytest.mark.parametrize("name", SPEED)
def test_compiled_models_and_blocks_match_one_eager_process(launch, name):
    nproc, arch, overrides, scope = SPEED[name]
    run = launch(nproc, arch, *overrides)
    dev = deviation(launch(1, arch).run_dir, run.run_dir)
    print(f"{name}: {dev}")
    assert dev.loss < LOSS_RTOL and dev.val_loss < LOSS_RTOL and dev.grad_norm < NORM_RTOL, f"{name}: {dev}"
    assert f"including torch.compile of {scope}" in run.proc.stderr


def test_metrics_read_in_windows_are_those_of_every_step(launch):
    """logging.every=4: the device is read at steps 4, 5 (evaluation), 8 and 10 only; every step's
    record is still written, with the very numbers of the reference, which reads every step."""
    (ref, ref_evals), (steps, evals) = read_metrics(launch(1, "gpt2").run_dir), \
        read_metrics(launch(1, "gpt2", "logging.every=4").run_dir)
    assert [(r["step"], r["loss"], r["grad_norm"], r["skipped"]) for r in steps] == \
        [(r["step"], r["loss"], r["grad_norm"], r["skipped"]) for r in ref]
    assert [r["val_loss"] for r in evals] == [r["val_loss"] for r in ref_evals]
    assert len({r["step_time_s"] for r in steps[:4]}) == 1  # one timing per window


def test_startup_report_of_tensor_and_pipeline(launch):
    """Rank 0's report for TP=2 x PP=2: 3 blocks split 2/1; the busiest rank is stage 0's tensor half:
    embedding 384x64/2 + positions 64x64 + 2 blocks of 25,184 = 66,752 parameters; fp32 ZeRO-1
    over 1 data rank as DeepSpeed allocates it (gpt/engine/memory.py's table): weights 4, gradients 8
    (the module's and the flat partition's), optimizer 12 (fp32 partition copy + Adam's two moments)
    bytes each = 24 x 66,752 B = 1.53 MiB."""
    err = launch(4, "gpt2", *MATRIX["tp2pp2-ckpt"][2]).proc.stderr
    assert "model tiny: 178,752 parameters" in err
    assert "layout: world=4 = tensor 2 x data 1 x pipeline 2; gradient accumulation 4" in err
    assert "stages hold blocks 2/1" in err and "activation checkpointing;" in err
    assert "66,752 parameters" in err and "= 1.53 MiB" in err
    assert "measured fp32 matmul" in err


def counted_flops_per_token(arch: str) -> float:
    """FLOPs of one training forward+backward of the one-process model (the head fused with the loss,
    which leaves the padding rows of the vocabulary out), counted by PyTorch (math attention, so that
    its matmuls are counted), per token: what MFU must put over the peak."""
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils import flop_counter
    from torch.utils.flop_counter import FlopCounterMode

    from gpt.config import compose
    from gpt.config.validate import Layout
    from gpt.model.build import build_model, model_shape
    from gpt.parallel import context as parallel

    m = compose("pretrain", ["model=llama-tiny" if arch == "llama" else "model=tiny", "model.n_layer=3",
                             "model.n_embd=64", "model.n_head=4", "model.max_seq_len=64"]).model
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    try:
        model = build_model(m, model_shape(m, 257), seed=1, tp_group=ctx.tp_group)
        # torch's table lacks the in-place addmm_ with which the fused loss accumulates the head's gradient
        addmm_ = {torch.ops.aten.addmm_: flop_counter.addmm_flop.__wrapped__}  # addmm's formula, unwrapped
        with FlopCounterMode(display=False, custom_mapping=addmm_) as counter, sdpa_kernel(SDPBackend.MATH):
            idx = torch.randint(0, 257, (2, 33))
            model(idx[:, :-1], labels=idx[:, 1:], weights=torch.ones(2, 32)).backward()
    finally:
        parallel.destroy()
    return counter.get_total_flops() / (2 * 32)


def test_mfu_is_counted_flops_over_the_peak(launch):
    """MFU = tokens/s x FLOPs/token / peak, with the FLOPs counted by PyTorch on the model, the rate
    from the step's own measured time, and the peak either fixed (train.peak_flops=1e11 per rank, 2
    ranks) or the one measured at start-up and printed in the report (4 ranks sharing this CPU)."""
    fixed = launch(2, "llama", *MATRIX["llama-pp2"][2])
    fpt = counted_flops_per_token("llama")
    for r in read_metrics(fixed.run_dir)[0]:
        assert r["tokens_per_s"] == pytest.approx(8 * 32 / r["step_time_s"], rel=1e-9)
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / (1e11 * 2), rel=1e-9)
    measured = launch(4, "gpt2", *MATRIX["tp2pp2-ckpt"][2])
    peak = float(re.search(r"peak (\S+) FLOP/s over 4 rank\(s\) \(measured fp32 matmul", measured.proc.stderr).group(1))
    fpt = counted_flops_per_token("gpt2")
    for r in read_metrics(measured.run_dir)[0]:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / peak, rel=1e-3)  # the report prints 4 digits
