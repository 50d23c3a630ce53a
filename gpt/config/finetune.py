"""Typed configuration of gpt-finetune: a training run plus the parameter-efficient method.

The starting weights are `model.init_from` (a run.dir, checkpoint directory or pointer file of ours,
or a local Hugging Face directory); on the command line `checkpoint=<path>` is the same key (see
`store.ALIASES`), since `checkpoint.*` already holds the checkpoint-saving settings.
"""

from dataclasses import dataclass, field
from typing import List

from gpt.config.training import TrainingConfig

METHODS = ("none", "lora", "adapter", "bitfit")
# Linear layers of a block that LoRA can target, by their path inside the block.
GELU_TARGETS = ("attn.qkv", "attn.proj", "mlp.fc", "mlp.proj")
SWIGLU_TARGETS = ("attn.qkv", "attn.proj", "mlp.gate", "mlp.up", "mlp.down")


@dataclass(kw_only=True)
class PeftConfig:
    method: str = "none"
    """none (full fine-tuning: every weight trains) | lora | adapter | bitfit (only bias terms train)."""
    rank: int = 8
    """LoRA: rank r of the low-rank update B@A added to each targeted weight."""
    alpha: float = 16.0
    """LoRA: the update B@A is scaled by alpha/rank."""
    dropout: float = 0.0
    """LoRA: dropout on the input of the low-rank branch (0: none)."""
    targets: List[str] = field(default_factory=lambda: ["attn.qkv"])
    """LoRA: the linear layers of every block to adapt: attn.qkv, attn.proj, mlp.fc, mlp.proj (GPT-2 MLP), mlp.gate, mlp.up, mlp.down (SwiGLU MLP); `attn` and `mlp` name all of a branch."""
    bottleneck: int = 32
    """Adapters: hidden size of the bottleneck adapter (down-projection, GELU, up-projection, residual) after the attention and after the MLP of every block."""


@dataclass(kw_only=True)
class FinetuneConfig(TrainingConfig):
    """What gpt-finetune composes from conf/finetune.yaml: a training run from given weights."""

    peft: PeftConfig = field(default_factory=PeftConfig)
    """Which parameters train: all of them (none), LoRA factors, bottleneck adapters, or biases (bitfit)."""


def lora_targets(targets, activation: str) -> list[str]:
    """Expand `attn`/`mlp` and check every name against the model's MLP; raises ValueError naming the bad one."""
    valid = SWIGLU_TARGETS if activation == "swiglu" else GELU_TARGETS
    out: list[str] = []
    for t in targets:
        names = [v for v in valid if v.startswith(t + ".")] if t in ("attn", "mlp") else [t]
        for n in names:
            if n not in valid:
                raise ValueError(f"peft.targets: {t!r} is not a linear layer of this model (model.activation="
                                 f"{activation}); choose from {', '.join(valid)}, attn, mlp")
            if n not in out:
                out.append(n)
    return out
