"""gpt-finetune's config: the presets compose, `checkpoint=` is model.init_from, bad PEFT settings are
one-line errors before any process group, and the launcher validates against the base's architecture."""

import pytest
from helpers import launch_env, run_module

from gpt.config import compose, validate_training
from gpt.config.finetune import FinetuneConfig
from gpt.errors import ConfigError

LLAMA = "model=llama-tiny"


@pytest.mark.parametrize("method", ["none", "lora", "adapter", "bitfit"])
def test_each_peft_preset_composes_and_validates(method):
    cfg = compose("finetune", [f"peft={method}", "checkpoint=runs/base", "data.path=data/sft"])
    assert isinstance(cfg, FinetuneConfig) and cfg.peft.method == method
    assert cfg.model.init_from == "runs/base" and cfg.checkpoint.every == 0  # the alias leaves checkpoint.* alone
    validate_training(cfg, world_size=1)


@pytest.mark.parametrize("overrides, message", [
    (["peft=lora", "peft.targets=[attn.q_proj]"], r"peft\.targets: 'attn\.q_proj' is not a linear layer"),
    (["peft=lora", "peft.targets=[mlp.gate]"], r"'mlp\.gate' is not a linear layer of this model \(model\.activation=gelu\)"),
    (["peft=lora", "peft.rank=0"], r"peft\.rank=0 must be at least 1"),
    (["peft=lora", "peft.dropout=1.0"], r"peft\.dropout=1\.0 must be in \[0, 1\)"),
    (["peft=adapter", "peft.bottleneck=0"], r"peft\.bottleneck=0 must be at least 1"),
    (["peft=bitfit", LLAMA], r"peft\.method=bitfit trains only bias terms, and this model has none"),
    (["peft.method=prefix"], r"peft\.method=prefix is not one of none\|lora\|adapter\|bitfit"),
])
def test_bad_peft_settings_name_the_key(overrides, message):
    cfg = compose("finetune", ["checkpoint=runs/base", "data.path=data/sft", *overrides])
    with pytest.raises(ConfigError, match=message):
        validate_training(cfg, world_size=1)


def test_llama_targets_expand_by_branch():
    from gpt.config.finetune import lora_targets

    assert lora_targets(["attn", "mlp"], "swiglu") == ["attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down"]
    assert lora_targets(["mlp", "attn.qkv"], "gelu") == ["mlp.fc", "mlp.proj", "attn.qkv"]


def test_command_line_errors_are_one_line(tmp_path):
    proc = run_module("gpt.finetune", ["data.path=data/sft", f"run.dir={tmp_path}"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "gpt-finetune: error: gpt-finetune needs the weights to start from: checkpoint=" in proc.stderr
    proc = run_module("gpt.finetune", [f"checkpoint={tmp_path / 'nothing'}", "data.path=data/sft", f"run.dir={tmp_path}"])
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0
    assert "is neither a Hugging Face directory (no config.json) nor a gpt checkpoint" in proc.stderr


def test_launcher_validates_the_base_architecture(base_run, sft_shards):
    """The preset (tiny, 4 heads) is replaced by the checkpoint's architecture before the layout is
    checked: the base has 4 heads and an MLP of 256, so tensor=8 is refused naming the head count."""
    proc = run_module("launcher", ["--dry-run", "finetune", f"checkpoint={base_run}", f"data.path={sft_shards}",
                                   "model.n_head=8", "peft=lora", "train.seq_len=32"], env=launch_env(GPT_NPROC_PER_NODE="2"), timeout=120)
    assert proc.returncode == 0, proc.stderr  # model.n_head=8 came from the command line, the base says 4
    assert "-m gpt.finetune" in proc.stdout and "world=2 = tensor 1 x data 2" in proc.stdout
    proc = run_module("launcher", ["--dry-run", "finetune", f"checkpoint={base_run}", f"data.path={sft_shards}",
                                   "parallel.tensor=8", "train.seq_len=32"], env=launch_env(GPT_NPROC_PER_NODE="8"), timeout=120)
    assert proc.returncode == 2 and "parallel.tensor=8 does not divide model.n_head=4" in proc.stderr
