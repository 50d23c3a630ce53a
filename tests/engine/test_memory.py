"""The one memory model (gpt/engine/memory.py) against the memory a real run takes, and its counts.

Measured (tests/engine/step_memory_probe.py): the growth of one rank's peak RSS (VmHWM reset right
before its engine is built, after a warm-up run of a minute model, glibc told to return freed blocks)
while it builds its engine and trains 2 steps, for two model sizes in one process. The difference
between the two is compared with the difference of `estimate_step` (model states as DeepSpeed
allocates them, its buffers, the activations autograd saves): the fixed costs of DeepSpeed, gloo and
the libraries cancel. Measured at these sizes: 0.95x. Allowed: 0.85x to 1.15x (the issue's 15%). A
wrong count of bytes per parameter moves it out (12 B of optimizer state instead of 8: 0.79x; gradients
left out: 1.19x). The former probe read the process's lifetime peak (ru_maxrss), which anything
before the engine (data, imports) could set for both sizes alike: a ratio of ~0 in CI.
"""

import sys

import pytest
from helpers import env_for_subprocess, tagged_records, torchrun

from gpt.config import compose
from gpt.config.validate import Layout, validate_training
from gpt.engine.memory import estimate, estimate_step, stage_parameters
from gpt.model.build import model_shape

SIZES = {"small": ("model.n_embd=192",), "large": ("model.n_embd=384",)}  # 1.9M and 7.3M parameters
PROBE = ("model=tiny", "model.n_layer=4", "model.n_head=6", "model.vocab_size=257", "model.max_seq_len=64",
         "train.seq_len=64", "train.global_batch_size=2", "train.micro_batch_size=1")


@pytest.mark.distributed
def test_estimate_follows_the_measured_peak_of_real_runs():
    args = ["2", *PROBE]
    for keys in SIZES.values():
        args += ["--", *keys]
    # See tests/engine/test_plan.py; one malloc arena: per-thread arenas (gloo) add run-to-run noise.
    env = {**env_for_subprocess(), "MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_ARENA_MAX": "1"}
    proc = torchrun(1, "tests.engine.step_memory_probe", args, env=env)
    rows = tagged_records(proc.stdout, "PROBE")
    small, large = (r["measured"] for r in sorted(rows, key=lambda r: r["group"]))
    est_small, est_large = (estimate_step(c, model_shape(c.model, 257), validate_training(c, world_size=1))
                            for c in (compose("pretrain", [*PROBE, *keys]) for keys in SIZES.values()))
    ratio = (large - small) / (est_large - est_small)
    print(f"measured {(large - small) / 2**20:.1f} MiB more for the larger model; estimated "
          f"{(est_large - est_small) / 2**20:.1f} MiB ({ratio:.2f}x)", file=sys.stderr)
    assert 0.85 < ratio < 1.15, ratio


def test_llama_8b_bf16_zero1_over_8_ranks():
    """8,030,261,248 parameters. DeepSpeed's bf16 engine: 16.06 GB bf16 weights, 32.12 GB fp32
    gradients, 12 B/param / 8; autocast: fp32 weights and gradients (plus the fp32 partition at the
    step, 4 B/param / 8) and, as for fp32, DeepSpeed's fp32 partition plus Adam state, 12 B/param / 8."""
    n = 8_030_261_248
    layout = Layout(world=8, tensor=1, pipeline=1, data=8, grad_accum=1)
    cfg = compose("pretrain", ["model=llama-8b", "train.precision=bf16", "train.autocast=false",
                               "parallel.zero_stage=1"])
    m = estimate(cfg, model_shape(cfg.model, 128256), layout)
    assert m.params == n
    assert (m.weights, m.gradients, m.optimizer) == (2 * n, 4 * n, 12 * n / 8)
    cfg.train.autocast = True
    m = estimate(cfg, model_shape(cfg.model, 128256), layout)
    assert (m.weights, m.gradients, m.optimizer) == (4 * n, 4 * n + 4 * n / 8, 12 * n / 8)


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
