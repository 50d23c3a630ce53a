"""Parameter-efficient fine-tuning, applied to a built model (one-module GPT or pipeline stage).

Nothing in gpt/model/gpt.py knows about it: `apply_peft` walks the module tree after it is built,
replaces the targeted megatron linears by wrappers (`lora.LoRA`, `adapter.Adapter`) that keep the
base parameters under their own names, and freezes everything that should not train. The names of
the new parameters say what they are (`blocks.0.attn.qkv.lora_A.weight`,
`blocks.0.attn.proj.adapter.down.weight`), so checkpoints, export and generation recognise them
with `is_peft_name`.
"""

from gpt.peft.apply import apply_peft, is_peft_name, merge_peft_modules, trainable_counts
from gpt.peft.merge import merge_lora_state

__all__ = ["apply_peft", "is_peft_name", "merge_peft_modules", "merge_lora_state", "trainable_counts"]
