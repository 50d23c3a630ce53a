"""The DeepSpeed config: batch, ZeRO, precision and clipping derived from ours; the rest passed through.

We keep DeepSpeed's schema opaque: `deepspeed.<key>=...` overrides reach DeepSpeed unchanged, except
the keys derived here, which must be set through our config so that the two can never disagree.
"""

import copy

from gpt.config.training import TrainingConfig
from gpt.config.validate import Layout
from gpt.errors import ConfigError

DERIVED = {
    "train_batch_size": "train.global_batch_size",
    "train_micro_batch_size_per_gpu": "train.micro_batch_size",
    "gradient_accumulation_steps": "train.global_batch_size / (train.micro_batch_size * data parallel)",
    "gradient_clipping": "optim.grad_clip",
    "bf16": "train.precision=bf16 train.autocast=false",
    "torch_autocast": "train.precision=bf16 (train.autocast=true)",
    "fp16": "train.precision=fp16",
    "optimizer": "optim.*",
    "scheduler": "optim.* (the schedule is ours)",
}


def bf16_autocast(cfg: TrainingConfig) -> bool:
    """bf16 as torch.autocast over fp32 weights (DeepSpeed's `torch_autocast`), not DeepSpeed's bf16 engine."""
    return cfg.train.precision == "bf16" and cfg.train.autocast


def weight_precision(cfg: TrainingConfig) -> str:
    """The dtype weights, gradients and optimizer state are kept in: bf16 under autocast keeps them in fp32."""
    return "fp32" if bf16_autocast(cfg) else cfg.train.precision


def uses_plain_optimizer(cfg: TrainingConfig) -> bool:
    """True where DeepSpeed steps our optimizer directly (no ZeRO, no mixed-precision wrapper)."""
    return cfg.parallel.zero_stage == 0 and weight_precision(cfg) == "fp32"


def deepspeed_zero_stage(cfg: TrainingConfig) -> int:
    """The ZeRO stage DeepSpeed runs: ours, except bf16 at stage 0, which runs as stage 1.

    DeepSpeed's only bf16 optimizer that keeps fp32 master weights *and* accumulates gradients in
    fp32 (and exposes the masters to our checkpoints) is its BF16_Optimizer, which it selects for
    bf16 + stage 1 and which shards the masters and Adam state over data-parallel ranks. With one
    data rank that is exactly "no ZeRO"; with more it saves memory at the cost of one all-gather.
    """
    if cfg.train.precision == "bf16" and not bf16_autocast(cfg) and cfg.parallel.zero_stage == 0:
        return 1
    return cfg.parallel.zero_stage


def deepspeed_config(cfg: TrainingConfig, layout: Layout, device_type: str = "cpu") -> dict:
    """DeepSpeed's config for this run; `device_type` "cuda" adds the GPU defaults (see below)."""
    for key in cfg.deepspeed:
        if key in DERIVED:
            raise ConfigError(f"deepspeed.{key} is derived from {DERIVED[key]}; set that instead")
    zero = copy.deepcopy(cfg.deepspeed.get("zero_optimization", {}))
    if "stage" in zero:
        raise ConfigError("deepspeed.zero_optimization.stage is derived from parallel.zero_stage; set that instead")
    zero["stage"] = deepspeed_zero_stage(cfg)
    if device_type == "cuda" and zero["stage"] >= 1:
        # Overlap the gradient reduce-scatter with the backward (on DeepSpeed's side stream) and copy
        # gradients into one contiguous buffer as they are produced; deepspeed.zero_optimization.* wins.
        zero.setdefault("overlap_comm", True)
        zero.setdefault("contiguous_gradients", True)
    ds = {
        # DeepSpeed counts context ranks as data ranks (mpu.py): each sees every sample of its data rank.
        "train_batch_size": cfg.train.global_batch_size * layout.context,
        "train_micro_batch_size_per_gpu": cfg.train.micro_batch_size,
        "gradient_accumulation_steps": layout.grad_accum,
        # Plain fp32 without ZeRO: our optimizer clips (and reports the norm) itself.
        "gradient_clipping": 0.0 if uses_plain_optimizer(cfg) else cfg.optim.grad_clip,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**62,
        "wall_clock_breakdown": False,
        "dump_state": False,
    }
    if bf16_autocast(cfg):
        # No lower-precision-safe modules: every gradient is reduced over data ranks in fp32, as
        # Megatron's grad_reduce_in_fp32 (DeepSpeed would otherwise reduce torch.nn.Linear's in bf16).
        ds["torch_autocast"] = {"enabled": True, "dtype": "bfloat16", "lower_precision_safe_modules": []}
    elif cfg.train.precision == "bf16":
        ds["bf16"] = {"enabled": True}
        ds["data_types"] = {"grad_accum_dtype": "fp32"}
    elif cfg.train.precision == "fp16":
        ds["fp16"] = {"enabled": True, "loss_scale": 0, "initial_scale_power": 16, "loss_scale_window": 1000,
                      "hysteresis": 2, "min_loss_scale": 1}
    for key, value in cfg.deepspeed.items():
        if key != "zero_optimization":
            if key in ds:
                _check_replaces(key, ds[key], value)
            ds[key] = copy.deepcopy(value)
    if cfg.parallel.sequence_parallel and layout.tensor > 1:
        # DeepSpeed's pipeline sends 1/tensor of each activation and all-gathers it on the next stage,
        # assuming the tensor ranks hold the same activations; under sequence parallelism each holds
        # its own part of the sequence, so every rank sends its whole (already split) activation.
        pipe = ds.setdefault("pipeline", {})
        if pipe.get("pipe_partitioned") or pipe.get("grad_partitioned"):
            raise ConfigError("deepspeed.pipeline.pipe_partitioned/grad_partitioned cannot be true with "
                              "parallel.sequence_parallel=true (the activations are already split over the tensor group)")
        pipe.update(pipe_partitioned=False, grad_partitioned=False)
    ds["zero_optimization"] = zero
    return ds


def _check_replaces(key: str, default, value) -> None:
    """A pass-through key that replaces one of ours keeps its kind: DeepSpeed reads these unchecked
    (`steps_per_print=abc` would be a TypeError at the first step), so we check against our value."""
    def kind(v) -> str:
        return {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                dict: "a mapping"}.get(type(v), type(v).__name__)

    ok = type(value) is type(default) or (type(default) is float and type(value) is int)
    if ok and isinstance(default, (int, float)) and not isinstance(default, bool) and default > 0:
        ok = value > 0
    if not ok:
        positive = " > 0" if isinstance(default, (int, float)) and not isinstance(default, bool) else ""
        raise ConfigError(f"deepspeed.{key}={value!r} must be {kind(default)}{positive} (it replaces our {default!r})")
