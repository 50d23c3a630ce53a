"""A checkpoint of any parallel layout -> the one-process model and its tokenizer (no DeepSpeed)."""

from dataclasses import dataclass
from pathlib import Path

import torch
from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import full_state_dict
from gpt.config.finetune import PeftConfig
from gpt.config.text import structured
from gpt.config.training import ModelConfig
from gpt.data import tokenizer_from_dict
from gpt.errors import CheckpointError
from gpt.model.build import ModelShape, build_model, materialize, model_shape
from gpt.model.gpt import GPT
from gpt.model.slots import Slots
from gpt.parallel.device import choose_device
from gpt.peft import apply_peft, merge_peft_modules


@dataclass
class LoadedModel:
    model: GPT
    tokenizer: object
    shape: ModelShape
    meta: dict
    checkpoint: Path

    @property
    def context_length(self) -> int:
        """Longest context the model was trained on (learned positions beyond it are untrained)."""
        trained = self.meta["config"].get("train", {}).get("seq_len") or self.model.cfg.max_seq_len
        return min(int(trained), self.model.cfg.max_seq_len)


def model_config(meta: dict) -> ModelConfig:
    """The checkpoint's saved model config (its strings are data: `${...}` in them is never resolved)."""
    return structured(ModelConfig, meta["config"]["model"])


def peft_config(meta: dict):
    """The PeftConfig a checkpoint was fine-tuned with (None: a plain model)."""
    saved = meta["config"].get("peft")
    if not saved or saved.get("method", "none") == "none":
        return None
    return structured(PeftConfig, saved)


def load_model(path: str | Path, device: str = "auto", *, merge_peft: bool = False) -> LoadedModel:
    """The checkpoint's model in one process; a fine-tuned one with its PEFT modules rebuilt (the
    layers its config records), or with LoRA folded into the weights when `merge_peft`."""
    # Sizes only: hashing every file (moments included) would cost a large model minutes per start;
    # resume and export check the checksums.
    ckpt = fmt.resolve(path, verify=False)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint under {path} (expected a run.dir with checkpoints/latest, or a checkpoint directory)")
    meta = fmt.read_meta(ckpt)
    if meta.get("tokenizer") is None:
        raise CheckpointError(f"{ckpt / fmt.META} records no tokenizer")
    tokenizer = tokenizer_from_dict(meta["tokenizer"], ckpt)
    cfg = model_config(meta)
    shape = model_shape(cfg, tokenizer.vocab_size)
    target, _ = choose_device(device)  # one process, tensor size 1: no process group, no megatron
    # Built on the meta device: the checkpoint's tensors become the parameters (no random init is
    # drawn, no second copy is made).
    model = build_model(cfg, shape, seed=0, device="meta")
    peft = peft_config(meta)
    if peft is not None:
        with torch.device("meta"):
            apply_peft(model, peft, cfg, slots=Slots(1), seed=0)
    state = full_state_dict(ckpt, meta)
    names = {name for name, _ in model.named_parameters()}
    missing, unexpected = sorted(names - state.keys()), sorted(state.keys() - names)
    if missing or unexpected:
        raise CheckpointError(f"{ckpt} does not match the model it records: missing {missing[:3]}, unexpected {unexpected[:3]}")
    materialize(model, device=target, dtype=torch.float32, values=state)
    if peft is not None and merge_peft:
        merge_peft_modules(model)
    model.requires_grad_(False)
    model.eval()
    return LoadedModel(model, tokenizer, shape, meta, ckpt)


def release() -> None:
    """Loading starts no process group any more (tensor size 1 needs none): nothing to free. Kept so
    that callers pairing it with load_model need not change."""


__all__ = ["LoadedModel", "load_model", "release", "model_config", "torch"]
