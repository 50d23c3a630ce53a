"""Peak FLOP/s for MFU: the GPU table by device name, the CPU measurement, the override."""

import time

import pytest
import torch

from gpt.parallel.peak import device_peak, measure_matmul_peak, table_peak


@pytest.mark.parametrize("name, precision, peak", [
    ("NVIDIA H100 80GB HBM3", "bf16", 989.4e12),
    ("NVIDIA H100 PCIe", "bf16", 756.5e12),
    ("NVIDIA H100 NVL", "fp16", 835.5e12),
    ("NVIDIA H200", "bf16", 989.4e12),
    ("NVIDIA GH200 480GB", "bf16", 989.4e12),  # contains "H200": the GH200 row must win
    ("NVIDIA A100-SXM4-80GB", "bf16", 312e12),
    ("NVIDIA A100 80GB PCIe", "fp32", 19.5e12),
    ("NVIDIA L40S", "bf16", 362.05e12),  # contains "L4": the L40S row must win
    ("NVIDIA L4", "bf16", 121e12),
    ("Tesla V100-SXM2-32GB", "bf16", None),  # no bf16 tensor cores: unknown rather than wrong
    ("NVIDIA GeForce GTX 1080", "fp32", None),
])
def test_table(name, precision, peak):
    assert table_peak(name, precision) == peak


def test_cpu_peak_is_measured_quickly():
    t0 = time.perf_counter()
    peak = measure_matmul_peak(torch.float32, seconds=0.05)
    assert time.perf_counter() - t0 < 1.0
    assert 1e8 < peak < 1e14  # a CPU core or a few: between 0.1 GFLOP/s and 100 TFLOP/s


def test_measurement_leaves_the_global_rng_alone():
    """The peak is measured after a resume restored the RNG state: drawing from it would change dropout."""
    state = torch.get_rng_state()
    measure_matmul_peak(torch.float32, seconds=0.01)
    assert torch.equal(torch.get_rng_state(), state)


def test_override_wins():
    assert device_peak(torch.device("cpu"), "fp32", 123e12) == (123e12, "train.peak_flops")
