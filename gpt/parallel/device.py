"""Device and collective backend, chosen in one place: CUDA + NCCL where a GPU is visible, else CPU + gloo."""

import os

import torch

from gpt.errors import ConfigError
from gpt.parallel import lazy_compile


def choose_device(preference: str = "auto", local_rank: int = 0) -> tuple[torch.device, str]:
    """(device, distributed backend) for this process."""
    if preference == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device=cuda but no CUDA device is visible; use device=auto or device=cpu")
    if preference in ("auto", "cuda") and torch.cuda.is_available():
        return torch.device("cuda", local_rank % torch.cuda.device_count()), "nccl"
    os.environ.setdefault("DS_ACCELERATOR", "cpu")  # tell DeepSpeed before it guesses (and warns)
    return torch.device("cpu"), "gloo"


def cuda_settings(tensor: int) -> None:
    """Environment megatron's tensor-parallel layers rely on, set before CUDA starts in this process.

    With tensor parallelism, megatron overlaps the all-reduce of each column-parallel layer's input
    gradient with the weight-gradient matmul (async_op); the communication kernel must be queued
    before the matmul, which only one hardware work queue per device guarantees
    (CUDA_DEVICE_MAX_CONNECTIONS=1, as Megatron-LM's launch scripts set it). A value the user set is kept.
    """
    if tensor > 1:
        os.environ.setdefault("CUDA_DEVICE_MAX_CONNECTIONS", "1")


def check_precision(preference: str, precision: str) -> None:
    """Refuse, before any process group, a precision this machine has no kernels for.

    DeepSpeed decides this deep inside `deepspeed.initialize` and raises a traceback on every rank;
    we ask its accelerator the same question first. On CPU, fp16 needs oneDNN fp16 kernels
    (AVX512-FP16 or AMX-FP16: recent Intel Xeons, not most AMD or laptop CPUs); bf16 needs Ampere or
    newer on NVIDIA GPUs.
    """
    if precision == "fp32":
        return
    device, _ = choose_device(preference)  # also tells DeepSpeed which accelerator to pick
    from deepspeed.accelerator import get_accelerator

    accelerator = get_accelerator()
    supported = accelerator.is_fp16_supported() if precision == "fp16" else accelerator.is_bf16_supported()
    if not supported:
        other = "bf16" if precision == "fp16" else "fp16"
        raise ConfigError(f"train.precision={precision} is not supported on this {accelerator.device_name()} "
                          f"(DeepSpeed's accelerator reports no {precision} kernels); "
                          f"use train.precision={other} or train.precision=fp32")


def prepare_deepspeed(device: torch.device, backend: str) -> None:
    """Settings DeepSpeed needs before `deepspeed.initialize`.

    On CPU its communication backend JIT-compiles a shared-memory all-reduce kernel (about 30 s, and
    a C++ compiler) that only DeepSpeed's inference path uses; training all-reduces go through
    torch.distributed. We mark it unavailable so the first run on a fresh machine starts at once.
    """
    import logging

    import deepspeed.ops
    from deepspeed.utils import logger

    logger.setLevel(logging.WARNING)  # DeepSpeed logs its whole config at INFO on every rank
    if device.type == "cpu":
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    import deepspeed

    try:  # deepspeed.initialize imports its Muon optimizer (torch.compile'd at import) to check ours
        lazy_compile.import_module("deepspeed.runtime.zero.muon.muon_optimizer")
    except ImportError:  # a DeepSpeed without it
        pass

    deepspeed.init_distributed(dist_backend=backend, verbose=False)  # adopts our torch.distributed group
