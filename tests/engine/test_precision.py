"""Mixed precision trains the same model as fp32, within the distance its rounding explains.

bf16 keeps 8 mantissa bits (relative rounding 2^-9 ~ 2e-3 per value), fp16 11 (~5e-4); the loss
is a mean over 256 tokens and the (master) weights, gradients and Adam state stay fp32, so over 10
steps the loss stays within ~1e-3 of the fp32 run (observed: ~3e-4 bf16, ~3e-5 fp16) and the
gradient norm within ~1e-2 (observed ~3e-3). We allow 2e-2 and 1e-1: a real bug (no fp32
masters, lost loss scale, a gradient not reduced) breaks training outright, and the 10-step loss
drop is ~1 nat. A lower bound (1e-6) proves the run really computed in half precision: fp32
layouts agree to ~1e-7.
"""

import pytest
from helpers import read_metrics, run_module, torchrun
from parity import deviation, run_overrides

pytestmark = pytest.mark.distributed

RUNS = {
    # torch.autocast over fp32 weights (the default bf16): our fused AdamW, gradients all-reduced in fp32
    "bf16-dp2-zero0": (2, ("train.precision=bf16",)),
    "bf16-pp2-zero1": (2, ("parallel=pp2", "train.precision=bf16")),  # pipeline + DeepSpeed's ZeRO-1 optimizer
    # DeepSpeed's bf16 engine: BF16_Optimizer (fp32 masters and gradient accumulation, sharded over 2 data ranks)
    "bf16-engine-dp2-zero0": (2, ("train.precision=bf16", "train.autocast=false")),
    "fp16-dp2-zero2": (2, ("parallel=zero2", "train.precision=fp16")),  # ZeRO-2, dynamic loss scale
}


def fp16_supported() -> bool:
    """DeepSpeed's CPU accelerator has fp16 only where oneDNN does (AVX512-FP16 / AMX-FP16 CPUs)."""
    from gpt.parallel.device import choose_device

    choose_device("cpu")
    from deepspeed.accelerator import get_accelerator

    return get_accelerator().is_fp16_supported()


@pytest.mark.parametrize("name", RUNS)
def test_trains_close_to_fp32(launch, name):
    nproc, overrides = RUNS[name]
    if "train.precision=fp16" in overrides and not fp16_supported():
        pytest.skip("this CPU has no fp16 kernels; test_fp16_is_refused_where_the_cpu_has_no_kernels covers it")
    run = launch(nproc, "gpt2", *overrides)
    dev = deviation(launch(1, "gpt2").run_dir, run.run_dir)
    print(f"{name}: {dev}")
    assert 1e-6 < dev.loss < 2e-2 and dev.val_loss < 2e-2 and dev.grad_norm < 1e-1, f"{name}: {dev}"
    steps, evals = read_metrics(run.run_dir)
    assert steps[-1]["loss"] < steps[0]["loss"] - 0.5 and evals[-1]["val_loss"] < evals[0]["val_loss"]
    assert not any(r["skipped"] for r in steps)


def test_bf16_checkpoint_resume_is_exact(launch, shards, tmp_path):
    """Stop a bf16 DP=2 run after step 5 and run the same command again: identical to 10 straight
    steps, bit for bit (fp32 masters and Adam moments come back from the checkpoint)."""
    straight = launch(2, "gpt2", *RUNS["bf16-dp2-zero0"][1]).run_dir
    run = tmp_path / "run"
    args = run_overrides(shards, run, "gpt2", *RUNS["bf16-dp2-zero0"][1])
    torchrun(2, "gpt.pretrain", [*args, "train.stop_at=5"])
    resumed = torchrun(2, "gpt.pretrain", args)
    assert "resumed from" in resumed.stderr
    a, b = read_metrics(straight), read_metrics(run)
    assert [(r["step"], r["loss"], r["grad_norm"]) for r in a[0]] == [(r["step"], r["loss"], r["grad_norm"]) for r in b[0]]
    assert [r["val_loss"] for r in a[1]] == [r["val_loss"] for r in b[1]]


def test_mixed_precision_is_refused_where_it_cannot_work(shards, tmp_path):
    proc = run_module("gpt.pretrain", run_overrides(shards, tmp_path / "run", "gpt2", "train.precision=fp16"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].endswith(
        "train.precision=fp16 needs parallel.zero_stage>=1 (its fp32 master weights live in the ZeRO optimizer); or use bf16")


def test_fp16_is_refused_where_the_cpu_has_no_kernels(shards, tmp_path):
    """On such CPUs DeepSpeed raises inside `deepspeed.initialize` on every rank; we refuse first."""
    proc = run_module("gpt.pretrain", run_overrides(shards, tmp_path / "run", "gpt2", "train.precision=fp16",
                                                    "parallel.zero_stage=1", "train.steps=1"))
    if fp16_supported():
        assert proc.returncode == 0, proc.stderr[-2000:]
    else:
        assert proc.returncode == 2 and "Traceback" not in proc.stderr
        assert proc.stderr.strip().splitlines()[-1].endswith(
            "train.precision=fp16 is not supported on this cpu (DeepSpeed's accelerator reports no fp16 kernels); "
            "use train.precision=bf16 or train.precision=fp32")
