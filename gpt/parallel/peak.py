"""Peak FLOP/s of the devices a run uses: the denominator of MFU (model FLOPs utilisation).

MFU = achieved model FLOP/s / peak FLOP/s of all devices. A number is only comparable across
hardware when its peak is the right one, so we take it, in order, from
  1. `train.peak_flops` (per device), for hardware not in the table or non-default settings (TF32);
  2. on CUDA, a table of vendors' dense (no 2:4 sparsity) peaks by device name and precision;
  3. on CPU, a short matmul measured once at start-up in the run's compute dtype (a CPU has no
     datasheet number that means anything for a process sharing cores with others).
fp32 on GPU means plain FP32 (PyTorch leaves TF32 matmuls off by default); set train.peak_flops if
you enable TF32.
"""

import time

import torch

from gpt.parallel import collectives

# Dense peaks in FLOP/s per device. First matching substring of torch.cuda.get_device_name() wins,
# so more specific names come first ("GH200" contains "H200", "L40S" contains "L4").
GPU_PEAKS: list[tuple[str, dict[str, float]]] = [
    ("GH200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),
    ("H200 NVL", {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12}),
    ("H200", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),
    ("H100 NVL", {"bf16": 835.5e12, "fp16": 835.5e12, "fp32": 60.0e12}),
    ("H100 PCIe", {"bf16": 756.5e12, "fp16": 756.5e12, "fp32": 51.2e12}),
    ("H100", {"bf16": 989.4e12, "fp16": 989.4e12, "fp32": 66.9e12}),  # SXM5
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "fp32": 75.0e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362.05e12, "fp16": 362.05e12, "fp32": 91.6e12}),
    ("L40", {"bf16": 181.05e12, "fp16": 181.05e12, "fp32": 90.5e12}),
    ("L4", {"bf16": 121e12, "fp16": 121e12, "fp32": 30.3e12}),
    ("A6000", {"bf16": 154.8e12, "fp16": 154.8e12, "fp32": 38.7e12}),  # RTX A6000
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),  # no bf16 tensor cores
]

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def table_peak(device_name: str, precision: str) -> float | None:
    """Dense peak FLOP/s of a GPU from its name, or None when the table does not know it."""
    for key, peaks in GPU_PEAKS:
        if key in device_name:
            return peaks.get(precision)
    return None


def measure_matmul_peak(dtype: torch.dtype, device: torch.device | None = None, *, n: int = 512,
                        seconds: float = 0.2) -> float:
    """FLOP/s of back-to-back n x n matmuls for about `seconds` (after one warm-up product)."""
    device = device or torch.device("cpu")
    gen = torch.Generator(device).manual_seed(0)  # a private stream: the run's RNG (dropout, resume) is untouched
    a = torch.randn(n, n, device=device, generator=gen).to(dtype)
    b = torch.randn(n, n, device=device, generator=gen).to(dtype)
    a @ b
    count, t0 = 0, time.perf_counter()
    while True:
        a @ b
        count += 1
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds:
            return 2.0 * n**3 * count / elapsed


def device_peak(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """(peak FLOP/s of this rank's device, where the number comes from); None when unknown."""
    if override:
        return float(override), "train.peak_flops"
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak = table_peak(name, precision)
        if peak is None:
            return None, f"{name} ({precision}) is not in gpt/parallel/peak.py; set train.peak_flops for MFU"
        return peak, f"{name} datasheet, dense {precision}"
    return measure_matmul_peak(DTYPES[precision]), f"measured {precision} matmul on this CPU share"


def job_peak(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """Sum of every rank's peak (a collective). On CPU all ranks measure at the same time, so each
    measures its share of cores it really has when several ranks share a machine."""
    collectives.barrier()
    peak, source = device_peak(device, precision, override)
    if collectives.world_size() == 1:
        return peak, source
    total = torch.tensor([peak if peak is not None else float("nan")], dtype=torch.float64)
    collectives.all_reduce(total)
    value = float(total)
    return (value if value == value else None), source
