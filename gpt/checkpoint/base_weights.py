"""A checkpoint as the starting weights of another run (`model.init_from`, gpt-finetune).

Every parameter of the new model is read from the checkpoint, of any layout, as the slice each rank
holds. A checkpoint that was itself fine-tuned with LoRA either continues as it is (the new run
uses LoRA with the same rank, alpha and targets: the factors load too) or has its factors folded
into the base weights first (any other method: the fine-tuned model is the new base). Adapters
cannot be folded; such a checkpoint only continues with the same adapters.
"""

from pathlib import Path

import torch

from gpt.checkpoint.reader import TensorReader, tp_slice
from gpt.config.finetune import lora_targets
from gpt.errors import ConfigError
from gpt.peft import is_peft_name
from gpt.peft.merge import LORA_A, LORA_B, lora_scale

# The PEFT settings that decide the shapes and meaning of the saved PEFT tensors.
SHAPE_KEYS = {"lora": ("rank", "alpha", "targets"), "adapter": ("bottleneck",), "bitfit": (), "none": ()}


def saved_peft(meta: dict) -> dict:
    return meta["config"].get("peft") or {"method": "none"}


def same_peft(saved: dict, peft, activation: str) -> bool:
    """Whether a run with `peft` (a PeftConfig, or None) has exactly the saved PEFT tensors
    (`activation`: the model's, to compare LoRA targets with `attn`/`mlp` expanded)."""
    method = peft.method if peft is not None else "none"

    def same(key):
        if key == "targets":
            return lora_targets(saved.get(key) or [], activation) == lora_targets(peft.targets, activation)
        return saved.get(key) == getattr(peft, key)

    return method == saved["method"] and all(same(k) for k in SHAPE_KEYS[method])


class CheckpointWeights:
    """A slice source (see reader.py) over a checkpoint, LoRA folded in unless the new run keeps it."""

    def __init__(self, ckpt: Path, meta: dict, peft):
        self.reader = TensorReader(ckpt, meta)
        self.meta = meta
        saved = saved_peft(meta)
        self.keep = same_peft(saved, peft, meta["config"]["model"]["activation"])
        if saved["method"] == "adapter" and not self.keep:
            raise ConfigError(f"{ckpt} was fine-tuned with bottleneck adapters (peft.bottleneck={saved.get('bottleneck')}), "
                              f"which cannot be folded into the weights; continue it with peft=adapter "
                              f"peft.bottleneck={saved.get('bottleneck')}, or start from the checkpoint it was fine-tuned from")
        self.scale = lora_scale(saved) if saved["method"] == "lora" and not self.keep else None

    def has(self, name: str) -> bool:
        return self.reader.has(name) and (self.keep or not is_peft_name(name))

    def read(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, key: str | None = None) -> torch.Tensor:
        layer = name.removesuffix(".weight")
        if self.scale is None or key is not None or not self.reader.has(layer + LORA_A):
            return self.reader.read(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size, key=key)
        full = {n: self.reader.read(n, dim=None, tp_rank=0, tp_size=1).float() for n in (name, layer + LORA_A, layer + LORA_B)}
        merged = full[name] + self.scale * (full[layer + LORA_B] @ full[layer + LORA_A])
        return tp_slice(merged, dim, tp_rank, tp_size)
