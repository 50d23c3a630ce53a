"""Config composition and validation: typed, unknown keys rejected, impossible layouts caught early."""

import pytest
from helpers import run_module

from gpt.config import compose, validate_training
from gpt.config.training import TrainingConfig
from gpt.errors import ConfigError

PRESETS = ["tiny", "gpt2-124m", "gpt2-350m", "gpt2-774m", "gpt2-1.5b"]


def test_defaults_compose_to_typed_config():
    cfg = compose("pretrain")
    assert isinstance(cfg, TrainingConfig)
    assert cfg.model.name == "tiny" and cfg.logging.wandb.mode == "offline"


@pytest.mark.parametrize("preset", PRESETS)
def test_model_presets(preset):
    cfg = compose("pretrain", [f"model={preset}"])
    assert cfg.model.name == preset
    validate_training(cfg, world_size=1)


def test_gpt2_124m_shape():
    m = compose("pretrain", ["model=gpt2-124m"]).model
    assert (m.n_layer, m.n_head, m.n_embd, m.max_seq_len, m.tie_embeddings) == (12, 12, 768, 1024, True)


@pytest.mark.parametrize("override, key", [("model.n_heads=4", "model.n_heads"), ("trian.steps=3", "trian"),
                                           ("optim.learning_rate=1", "optim.learning_rate")])
def test_unknown_key_is_named(override, key):
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        compose("pretrain", [override])


def test_wrong_type_names_key_and_value():
    with pytest.raises(ConfigError, match=r"model\.n_layer=abc: expected integer"):
        compose("pretrain", ["model.n_layer=abc"])


def test_unknown_preset_lists_choices():
    with pytest.raises(ConfigError, match="gpt2-124m"):
        compose("pretrain", ["model=gpt9"])


@pytest.mark.parametrize("overrides, world, message", [
    (["parallel.tensor=3"], 3, r"parallel\.tensor=3 does not divide model\.n_head=4"),
    (["parallel.tensor=2"], 3, r"world size 3 is not divisible"),
    (["train.global_batch_size=10", "train.micro_batch_size=4"], 1, r"global_batch_size=10 is not divisible"),
    (["train.global_batch_size=8", "train.micro_batch_size=2"], 3, r"micro_batch_size\*data_parallel=2\*3"),
    (["parallel.pipeline=2", "parallel.zero_stage=3"], 2, r"zero_stage=3 cannot be combined with parallel\.pipeline=2"),
    (["parallel.pipeline=8"], 8, r"exceeds model\.n_layer=4"),
    (["model.n_head=3"], 1, r"model\.n_head=3 does not divide model\.n_embd=128"),
    (["train.seq_len=512"], 1, r"train\.seq_len=512 exceeds model\.max_seq_len=256"),
    (["train.precision=fp8"], 1, r"train\.precision=fp8 is not one of"),
    (["train.precision=fp16"], 1, r"fp16 needs parallel\.zero_stage>=1"),
])
def test_impossible_combinations(overrides, world, message):
    with pytest.raises(ConfigError, match=message):
        validate_training(compose("pretrain", overrides), world_size=world)


def test_layout_arithmetic():
    cfg = compose("pretrain", ["parallel.tensor=2", "parallel.pipeline=2", "train.global_batch_size=32",
                               "train.micro_batch_size=2"])
    layout = validate_training(cfg, world_size=16)
    assert (layout.tensor, layout.pipeline, layout.data, layout.grad_accum) == (2, 2, 4, 4)


def test_cli_error_is_one_line_without_traceback(tmp_path):
    proc = run_module("gpt.pretrain", ["model.n_heads=4", f"run.dir={tmp_path}"])
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.strip().splitlines() if line.strip()]
    assert lines[-1].startswith("gpt-pretrain: error: unknown config key 'model.n_heads'")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "metrics.jsonl").exists()


def test_cli_prints_resolved_config():
    proc = run_module("gpt.pretrain", ["--cfg", "model=gpt2-124m"])
    assert proc.returncode == 0 and "n_embd: 768" in proc.stdout
