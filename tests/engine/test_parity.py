"""The parity matrix: every parallel layout trains the very model of one process (fp32, CPU, gloo).

Each layout runs 10 steps of the tiny model (3 blocks, global batch 8 = 4 micro-batches of 2 in one
process) and must match the one-process run step by step in loss and gradient norm, and at both
evaluations in validation loss. Same seed, same data, same initial weights (per-layer seeded init).

Tolerances: a layout computes the same sums in another order (all-reduces over ranks instead of
local accumulation, split matmuls, a different micro-batch size), i.e. fp32 round-off of ~1e-7
relative per step; Adam can amplify it over 10 steps for weights with tiny gradients. Observed
worst: ~3e-7 on loss, ~3e-7 on grad norm. 1e-5 relative on losses and 1e-4 on the gradient norm
leave 30-300x margin, while any real bug (a missing average, a wrong sample, a double-counted or
missing tied gradient, a wrong tensor slice) moves them by more than 1e-3 within a step or two.
"""

import pytest
from helpers import read_metrics
from parity import deviation

pytestmark = pytest.mark.distributed

LOSS_RTOL, NORM_RTOL = 1e-5, 1e-4

MATRIX = {
    # name: (processes, architecture, overrides)
    "tp2": (2, "gpt2", ("parallel=tp2",)),  # ZeRO-1 over data parallel 1
    "pp2-zero0-blocks1+2": (2, "gpt2", ("parallel=pp2", "parallel.zero_stage=0", "parallel.pipeline_layers=[1,2]")),
    "dp2-zero0-accum4": (2, "gpt2", ("train.micro_batch_size=1",)),  # 4 micro-batches per rank
    "dp2-zero1": (2, "gpt2", ("parallel=zero1",)),  # every dp2 run also accumulates 2 micro-batches
    "dp2-zero2": (2, "gpt2", ("parallel=zero2",)),
    "dp2-zero3": (2, "gpt2", ("parallel=zero3",)),
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


# The speed settings train the same model. torch.compile (inductor) fuses the blocks' pointwise ops and
# may reorder their sums: fp32 round-off again, the same tolerances. Reading the metrics back from the
# device in windows (logging.every) instead of every step changes no computation: bit-identical.
SPEED = {
    "compile": (1, "gpt2", ("train.compile=true",)),
    "tp2-compile": (2, "gpt2", ("parallel=tp2", "train.compile=true")),
}


@pytest.mark.parametrize("name", SPEED)
def test_compiled_blocks_match_one_eager_process(launch, name):
    nproc, arch, overrides = SPEED[name]
    run = launch(nproc, arch, *overrides)
    dev = deviation(launch(1, arch).run_dir, run.run_dir)
    print(f"{name}: {dev}")
    assert dev.loss < LOSS_RTOL and dev.val_loss < LOSS_RTOL and dev.grad_norm < NORM_RTOL, f"{name}: {dev}"
    assert "including torch.compile of the blocks" in run.proc.stderr


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
    over 1 data rank: 4 + 4 + 8 bytes each."""
    err = launch(4, "gpt2", *MATRIX["tp2pp2-ckpt"][2]).proc.stderr
    assert "model tiny: 178,752 parameters" in err
    assert "layout: world=4 = tensor 2 x data 1 x pipeline 2; gradient accumulation 4" in err
    assert "stages hold blocks 2/1" in err and "activation checkpointing;" in err
    assert "66,752 parameters" in err and "= 1.02 MiB" in err
    assert "measured fp32 matmul" in err


def test_mfu_is_tokens_times_flops_over_peak(launch):
    from gpt.config import compose
    from gpt.model.build import model_shape
    from gpt.model.gpt import flops_per_token

    steps, _ = read_metrics(launch(2, "llama", *MATRIX["llama-pp2"][2]).run_dir)
    m = compose("pretrain", ["model=llama-tiny", "model.n_layer=3", "model.n_embd=64", "model.max_seq_len=64"]).model
    shape = model_shape(m, 257)
    fpt = flops_per_token(m, shape.vocab_size, shape.ffn_hidden, 32)  # model FLOPs: the real vocabulary
    for r in steps:
        assert r["mfu"] == pytest.approx(r["tokens_per_s"] * fpt / (1e11 * 2), rel=1e-12)
    measured, _ = read_metrics(launch(4, "gpt2", *MATRIX["tp2pp2-ckpt"][2]).run_dir)
    assert all(0 < r["mfu"] < 1 for r in measured)  # peak measured on this CPU
