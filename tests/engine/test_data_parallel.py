"""Data parallelism over 2 processes (torchrun, gloo) trains the very model of one process.

The one-process reference accumulates the same global batch of 8 samples over 4 micro-batches;
DP=2 splits it over two ranks. Tolerances: both compute the same sums in a different order
(all-reduce vs accumulation), i.e. fp32 round-off of ~1e-7 relative per step, which Adam can
amplify over 10 steps for weights with tiny gradients; 1e-5 relative on loss and 1e-4 on the
gradient norm leave two orders of magnitude of margin while any real bug (a missing average, a
wrong sample, a double-counted parameter) shifts them by >1e-2.
"""

import pytest
from helpers import read_metrics, run_module, tiny_overrides, torchrun

pytestmark = pytest.mark.distributed


@pytest.fixture(scope="module")
def reference(shards, tmp_path_factory):
    run = tmp_path_factory.mktemp("ref") / "run"
    run_module("gpt.pretrain", tiny_overrides(shards, run), check=True)
    return read_metrics(run)


def assert_matches(reference, run, loss_rtol=1e-5, norm_rtol=1e-4):
    ref_steps, ref_evals = reference
    steps, evals = read_metrics(run)
    assert [r["step"] for r in steps] == [r["step"] for r in ref_steps]
    for a, b in zip(ref_steps, steps):
        assert b["loss"] == pytest.approx(a["loss"], rel=loss_rtol), (a["step"], a["loss"], b["loss"])
        assert b["grad_norm"] == pytest.approx(a["grad_norm"], rel=norm_rtol), (a["step"], a["grad_norm"], b["grad_norm"])
    for a, b in zip(ref_evals, evals):
        assert b["val_loss"] == pytest.approx(a["val_loss"], rel=loss_rtol)


@pytest.mark.parametrize("zero", [0, 1, 2, 3])
def test_dp2_matches_one_process(shards, tmp_path, reference, zero):
    torchrun(2, "gpt.pretrain", tiny_overrides(shards, tmp_path / "run", f"parallel.zero_stage={zero}"))
    assert_matches(reference, tmp_path / "run")
