"""Peak FLOP/s for MFU: the GPU table by device name, the CPU measurement, the override."""

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


def test_cpu_peak_counts_the_flops_torch_counts(monkeypatch):
    """With a clock that advances 1 ms per reading, the peak is (FLOPs per product) / 1 ms; the FLOPs
    per product must be those PyTorch's FLOP counter sees for the products measure_matmul_peak runs."""
    from torch.utils.flop_counter import FlopCounterMode

    from gpt.parallel import peak as peak_module

    class Clock:
        now = 0.0

        @classmethod
        def perf_counter(cls):
            cls.now += 1e-3
            return cls.now

    monkeypatch.setattr(peak_module, "time", Clock)
    n = 64
    with FlopCounterMode(display=False) as counter:
        peak = measure_matmul_peak(torch.float32, n=n, seconds=0.01)
    products = 1 + 10  # the warm-up, then one per clock reading until 10 ms have passed
    assert peak == pytest.approx(counter.get_total_flops() / products / 1e-3, rel=1e-12)


def test_cpu_peak_agrees_with_torch_benchmark():
    """The same quantity measured by torch.utils.benchmark (its own timer and repetition), interleaved
    three times on this (shared) machine: the medians agree within 3x either way. Another unit (GFLOP/s),
    a missing factor of n, or timing the setup instead of the products is off by far more."""
    import statistics

    from torch.utils.benchmark import Timer

    n = 256
    a, b = torch.randn(n, n), torch.randn(n, n)
    ours, theirs = [], []
    for _ in range(3):
        ours.append(measure_matmul_peak(torch.float32, n=n, seconds=0.1))
        t = Timer("a @ b", globals={"a": a, "b": b}).blocked_autorange(min_run_time=0.1)
        theirs.append(2 * n**3 / t.median)
    ratio = statistics.median(ours) / statistics.median(theirs)
    assert 1 / 3 < ratio < 3, (ours, theirs)


def test_measurement_leaves_the_global_rng_alone():
    """The peak is measured after a resume restored the RNG state: drawing from it would change dropout."""
    state = torch.get_rng_state()
    measure_matmul_peak(torch.float32, seconds=0.01)
    assert torch.equal(torch.get_rng_state(), state)


def test_override_wins():
    assert device_peak(torch.device("cpu"), "fp32", 123e12) == (123e12, "train.peak_flops")
