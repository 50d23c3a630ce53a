"""The memory estimate of the start-up report against the memory a real run takes.

Measured: the peak resident memory of a gpt-pretrain process (one rank, fp32, ZeRO 0) above what it
held just before its engine was built (tests/engine/memory_probe.py), for two model sizes. The
difference between the two runs is what the estimate counts (weights, gradients, Adam moments) for
the extra parameters, plus what it leaves out and what also grows with the model: activations, the
temporaries of a foreach AdamW step and allocator slack. Measured at these sizes: 1.07-1.14x the
estimated difference. Allowed: 0.95x to 1.3x. A wrong count of bytes per parameter moves it out
(12 B of optimizer state instead of 8 gives 0.87x; gradients left out, 1.45x); the fixed costs of
DeepSpeed, gloo and the data loader cancel in the difference.
"""

import json
import sys

from helpers import env_for_subprocess, run_module, tiny_overrides

from gpt.config import compose
from gpt.config.validate import Layout
from gpt.engine.memory import estimate, stage_parameters
from gpt.model.build import model_shape

SIZES = {"small": ("model.n_embd=192",), "large": ("model.n_embd=384",)}  # 1.9M and 7.3M parameters
PROBE = ("model.n_layer=4", "model.n_head=6", "train.global_batch_size=2", "train.micro_batch_size=1",
         "train.steps=2", "eval.every=0", "device=cpu")


def measured_growth(shards, run_dir, *overrides) -> tuple[int, float]:
    """(peak RSS above the RSS before the engine, the estimate's total) of one real run."""
    args = tiny_overrides(shards, run_dir, *PROBE, *overrides)
    # One malloc arena: per-thread arenas (loader, gloo) otherwise add tens of MiB of run-to-run noise.
    proc = run_module("tests.engine.memory_probe", args, check=True, env={**env_for_subprocess(), "MALLOC_ARENA_MAX": "1"})
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    cfg = compose("pretrain", args)
    shape = model_shape(cfg.model, 257)
    return row["peak"] - row["before_engine"], estimate(cfg, shape, Layout(1, 1, 1, 1, 1)).total


def test_estimate_follows_the_measured_peak_of_real_runs(shards, tmp_path):
    (small, est_small), (large, est_large) = (measured_growth(shards, tmp_path / name, *keys)
                                              for name, keys in SIZES.items())
    ratio = (large - small) / (est_large - est_small)
    print(f"measured {(large - small) / 2**20:.1f} MiB more for the larger model; estimated "
          f"{(est_large - est_small) / 2**20:.1f} MiB ({ratio:.2f}x)", file=sys.stderr)
    assert 0.95 < ratio < 1.3, ratio


def test_llama_8b_bf16_zero1_over_8_ranks():
    """8,030,261,248 parameters. DeepSpeed's bf16 engine: 16.06 GB bf16 weights, 32.12 GB fp32
    gradients, 12 B/param / 8; autocast (the default): fp32 weights and gradients, 8 B/param / 8."""
    n = 8_030_261_248
    layout = Layout(world=8, tensor=1, pipeline=1, data=8, grad_accum=1)
    cfg = compose("pretrain", ["model=llama-8b", "train.precision=bf16", "train.autocast=false",
                               "parallel.zero_stage=1"])
    m = estimate(cfg, model_shape(cfg.model, 128256), layout)
    assert m.params == n
    assert (m.weights, m.gradients, m.optimizer) == (2 * n, 4 * n, 12 * n / 8)
    cfg.train.autocast = True
    m = estimate(cfg, model_shape(cfg.model, 128256), layout)
    assert (m.weights, m.gradients, m.optimizer) == (4 * n, 4 * n, 8 * n / 8)


def test_bf16_at_stage_0_is_counted_as_deepspeed_runs_it():
    cfg = compose("pretrain", ["train.precision=bf16", "train.autocast=false", "parallel.zero_stage=0"])
    m = estimate(cfg, model_shape(cfg.model, 256), Layout(world=2, tensor=1, pipeline=1, data=2, grad_accum=1))
    assert m.zero_stage == 1 and m.optimizer == 12 * m.params / 2


def test_pipeline_stages_count_the_tied_embedding_twice():
    """GPT-2 tiny, 2 blocks of 49,984, embedding 26,624 (384x64 + 32x64), final norm 128."""
    cfg = compose("pretrain", ["model.n_layer=2", "model.n_embd=64", "model.max_seq_len=32"])
    shape = model_shape(cfg.model, 257)
    layout = Layout(world=2, tensor=1, pipeline=2, data=1, grad_accum=1)
    assert stage_parameters(cfg, shape, layout) == [26_624 + 49_984, 49_984 + 128 + 26_624]
    assert estimate(cfg, shape, layout).params == 76_736
    cfg.model.tie_embeddings = False  # the head is its own 384x64 matrix on the last stage
    assert stage_parameters(cfg, shape, layout) == [26_624 + 49_984, 49_984 + 128 + 24_576]
