"""The DeepSpeed config we derive for each precision and ZeRO stage."""

import pytest

from gpt.config import compose, validate_training
from gpt.engine.deepspeed_config import deepspeed_config
from gpt.errors import ConfigError


def derive(*overrides, world=2):
    cfg = compose("pretrain", list(overrides))
    return deepspeed_config(cfg, validate_training(cfg, world_size=world))


@pytest.mark.parametrize("stage", [0, 1, 2, 3])
def test_bf16_is_autocast_over_fp32_weights(stage):
    """The default bf16: fp32 to DeepSpeed (weights, gradients, optimizer), torch.autocast in its
    forward, every gradient reduced in fp32 (no lower-precision modules); ZeRO as configured."""
    ds = derive("train.precision=bf16", f"parallel.zero_stage={stage}")
    assert ds["torch_autocast"] == {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    assert "bf16" not in ds and "fp16" not in ds and ds["zero_optimization"]["stage"] == stage
    assert ds["gradient_clipping"] == (0.0 if stage == 0 else 1.0)  # stage 0: our optimizer clips


@pytest.mark.parametrize("stage, ds_stage", [(0, 1), (1, 1), (2, 2), (3, 3)])
def test_bf16_engine_keeps_fp32_gradients_and_masters(stage, ds_stage):
    ds = derive("train.precision=bf16", "train.autocast=false", f"parallel.zero_stage={stage}")
    assert ds["bf16"] == {"enabled": True} and ds["data_types"] == {"grad_accum_dtype": "fp32"}
    assert ds["zero_optimization"]["stage"] == ds_stage  # stage 0 runs DeepSpeed's BF16_Optimizer
    assert "fp16" not in ds and "torch_autocast" not in ds


def test_gpu_defaults_overlap_the_gradient_reduction():
    cfg = compose("pretrain", ["parallel.zero_stage=2", "+deepspeed.zero_optimization={overlap_comm:false}"])
    zero = deepspeed_config(cfg, validate_training(cfg, world_size=2), "cuda")["zero_optimization"]
    assert zero == {"overlap_comm": False, "contiguous_gradients": True, "stage": 2}  # the user's value wins
    assert "overlap_comm" not in derive("parallel.zero_stage=2")["zero_optimization"]  # CPU: no side streams


def test_fp16_uses_dynamic_loss_scaling():
    ds = derive("train.precision=fp16", "parallel.zero_stage=2")
    assert ds["fp16"]["enabled"] and ds["fp16"]["loss_scale"] == 0  # 0 = dynamic
    assert ds["zero_optimization"]["stage"] == 2 and "bf16" not in ds


def test_fp32_without_zero_clips_in_our_optimizer():
    ds = derive("optim.grad_clip=0.5")
    assert ds["gradient_clipping"] == 0.0 and ds["zero_optimization"]["stage"] == 0
    assert derive("optim.grad_clip=0.5", "parallel.zero_stage=1")["gradient_clipping"] == 0.5


def test_batch_fields_are_derived():
    ds = derive("train.global_batch_size=16", "train.micro_batch_size=2", world=4)
    assert (ds["train_batch_size"], ds["train_micro_batch_size_per_gpu"], ds["gradient_accumulation_steps"]) == (16, 2, 2)


@pytest.mark.parametrize("override, key", [("+deepspeed.bf16={enabled:true}", "bf16"),
                                           ("+deepspeed.zero_optimization={stage:2}", "zero_optimization.stage")])
def test_derived_keys_cannot_be_passed_through(override, key):
    with pytest.raises(ConfigError, match=f"deepspeed.{key} is derived"):
        derive(override)


def test_other_keys_pass_through():
    ds = derive("+deepspeed.zero_optimization={reduce_bucket_size:1000}", "+deepspeed.comms_logger={enabled:true}")
    assert ds["zero_optimization"] == {"reduce_bucket_size": 1000, "stage": 0}
    assert ds["comms_logger"] == {"enabled": True}
