"""Comparing a run with the one-process run of the same model, step by step.

Used by the parity matrix (tests/engine/test_parity.py) and the precision tests. Every run is the
tiny model of `helpers.tiny_overrides` with 3 blocks (so a 2-stage pipeline can be split unevenly),
10 steps, global batch 8, evaluation at steps 5 and 10; `arch="llama"` swaps in the Llama
architecture (RMSNorm, RoPE, SwiGLU, 2 kv heads for 4 query heads, untied head, no biases).
"""

import re
from dataclasses import dataclass
from pathlib import Path

from helpers import read_metrics, tiny_overrides

# DeepSpeed keeps every tensor of at most stage3_param_persistence_threshold (default 1e5) elements
# whole on every rank; all of the tiny models' tensors are smaller. Every ZeRO-3 test sets this, so
# that ZeRO-3 really partitions, and asserts it with `assert_zero3_partitioned`.
ZERO3_PARTITIONED = "+deepspeed.zero_optimization.stage3_param_persistence_threshold=0"


def run_overrides(shards: Path, run_dir: Path, arch: str, *extra: str) -> list[str]:
    args = tiny_overrides(shards, run_dir)
    if arch == "llama":
        args = ["model=llama-tiny" if a == "model=tiny" else a for a in args]
    # device=cpu: the parity matrix is a CPU/gloo test (several ranks cannot share one GPU under NCCL).
    return [*args, "model.n_layer=3", "device=cpu", *extra]


@dataclass
class Deviation:
    """Worst relative deviation from the reference over all steps / evaluations."""

    loss: float
    grad_norm: float
    val_loss: float

    def __str__(self):
        return f"loss {self.loss:.1e}, grad norm {self.grad_norm:.1e}, val loss {self.val_loss:.1e}"


def deviation(reference_dir: Path, run_dir: Path) -> Deviation:
    (ref_steps, ref_evals), (steps, evals) = read_metrics(reference_dir), read_metrics(run_dir)
    assert [r["step"] for r in steps] == [r["step"] for r in ref_steps]
    assert [r["step"] for r in evals] == [r["step"] for r in ref_evals] and evals

    def worst(a, b, key):
        return max(abs(y[key] - x[key]) / abs(x[key]) for x, y in zip(a, b))

    return Deviation(worst(ref_steps, steps, "loss"), worst(ref_steps, steps, "grad_norm"),
                     worst(ref_evals, evals, "val_loss"))


def assert_zero3_partitioned(stderr: str, data: int) -> int:
    """The start-up report says ZeRO-3 split every parameter tensor over `data` ranks; returns how many."""
    found = re.search(r"ZeRO-3 partitions (\d+) of (\d+) parameter tensors over (\d+) data rank\(s\); (\d+) kept whole",
                      stderr)
    assert found, "no ZeRO-3 line in the start-up report"
    partitioned, total, ranks, whole = map(int, found.groups())
    assert partitioned == total > 0 and whole == 0 and ranks == data, found.group(0)
    return total
