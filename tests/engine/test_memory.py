"""The memory estimate of the start-up report, against numbers worked out by hand."""

import pytest

from gpt.config import compose
from gpt.config.validate import Layout
from gpt.engine.memory import estimate, stage_parameters, zero_memory
from gpt.model.build import model_shape


@pytest.mark.parametrize("precision, stage, data, expected", [
    # 1000 parameters: (weights, gradients, optimizer state) bytes.
    ("fp32", 0, 4, (4000, 4000, 8000)),  # fp32 weights, fp32 grads, Adam m+v
    ("fp32", 1, 4, (4000, 4000, 2000)),  # optimizer state / 4
    ("fp32", 3, 2, (2000, 2000, 4000)),  # everything / 2
    ("bf16", 1, 4, (2000, 4000, 3000)),  # bf16 weights, fp32-accumulated grads, 12 bytes / 4
    ("bf16", 2, 4, (2000, 1000, 3000)),  # + gradients / 4
    ("fp16", 3, 8, (250, 250, 1500)),  # ZeRO paper: (2 + 2 + 12) * Psi / N_d
])
def test_zero_formulas(precision, stage, data, expected):
    m = zero_memory(1000, precision, stage, data)
    assert (m.weights, m.gradients, m.optimizer) == expected
    assert m.total == sum(expected)


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
