"""Parallel layout and precision rules: refused before any process starts, with the fix in one line."""

import pytest

from gpt.config import compose, validate_training
from gpt.errors import ConfigError


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.pipeline=2", "parallel.zero_stage=2"], 4,
     r"parallel\.zero_stage=2 cannot be combined with parallel\.pipeline=2 .*use parallel\.zero_stage=1 with pipelines"),
    (["parallel.pipeline=2", "parallel.zero_stage=3"], 2, r"or parallel\.pipeline=1 for ZeRO-3"),
    (["model=llama-tiny", "parallel.tensor=4"], 4, r"parallel\.tensor=4 does not divide the key/value heads model\.n_kv_head=2"),
    (["model.ffn_hidden=100", "parallel.tensor=8", "model.n_head=8"], 8, r"does not divide the MLP size 100"),
    (["model.vocab_multiple=100", "parallel.tensor=8", "model.n_head=8"], 8, r"does not divide model\.vocab_multiple=100"),
    (["parallel.pipeline=2", "parallel.pipeline_layers=[3,2]"], 2, r"pipeline_layers=\[3, 2\] must list 2 positive counts summing to model\.n_layer=4"),
    (["parallel.pipeline=2", "parallel.pipeline_layers=[4,0]"], 2, r"must list 2 positive counts"),
    (["parallel.tensor=2", "parallel.pipeline=2"], 6, r"world size 6 is not divisible by parallel\.tensor\*parallel\.pipeline\*parallel\.context=2\*2\*1"),
    (["train.precision=fp16", "parallel.zero_stage=0"], 1, r"fp16 needs parallel\.zero_stage>=1"),
    (["train.peak_flops=0"], 1, r"train\.peak_flops=0\.0 must be a positive FLOP/s"),
])
def test_refused_with_the_fix(overrides, world, message):
    with pytest.raises(ConfigError, match=message) as err:
        validate_training(compose("pretrain", overrides), world_size=world)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("overrides, world, layout", [
    (["train.precision=bf16"], 1, (1, 1, 1)),  # bf16 without ZeRO (runs DeepSpeed's BF16 optimizer)
    (["train.precision=bf16", "parallel=pp2", "parallel.zero_stage=0"], 2, (1, 2, 1)),
    (["train.precision=fp16", "parallel=tp2pp2"], 8, (2, 2, 2)),  # fp16 + ZeRO-1 + pipeline
    (["train.precision=fp16", "parallel=zero3"], 4, (1, 1, 4)),
    (["model=llama-8b", "parallel.tensor=8", "parallel.pipeline=4", "train.global_batch_size=64"], 64, (8, 4, 2)),
    (["model=llama-1b", "parallel.pipeline=2", "parallel.pipeline_layers=[9,7]", "train.activation_checkpointing=true"],
     2, (1, 2, 1)),
])
def test_accepted(overrides, world, layout):
    got = validate_training(compose("pretrain", overrides), world_size=world)
    assert (got.tensor, got.pipeline, got.data) == layout


def test_llama_presets_compose_from_one_architecture_file():
    for preset in ("llama-tiny", "llama-1b", "llama-8b"):
        m = compose("pretrain", [f"model={preset}"]).model
        assert (m.norm, m.activation, m.position, m.bias) == ("rmsnorm", "swiglu", "rope", False), preset
    one, eight = compose("pretrain", ["model=llama-1b"]).model, compose("pretrain", ["model=llama-8b"]).model
    assert (one.n_layer, one.n_embd, one.n_head, one.n_kv_head, one.ffn_hidden, one.tie_embeddings) == \
           (16, 2048, 32, 8, 8192, True)
    assert (eight.n_layer, eight.n_embd, eight.n_head, eight.n_kv_head, eight.ffn_hidden, eight.tie_embeddings) == \
           (32, 4096, 32, 8, 14336, False)
    assert one.rope_theta == eight.rope_theta == 500000.0 and one.vocab_size is None  # vocab: the tokenizer's
