"""LoRA on whole (one-process) state dicts: fold the factors into the base weights.

For export (a plain Hugging Face model), for starting a new run from a LoRA fine-tune, and wherever
a checkpoint is read without building the model. W (out, in) += (alpha / r) * B (out, r) @ A (r, in).
"""

import torch

LORA_A, LORA_B = ".lora_A.weight", ".lora_B.weight"


def lora_scale(peft: dict) -> float:
    return float(peft["alpha"]) / int(peft["rank"])


def merge_lora_state(state: dict[str, torch.Tensor], peft: dict) -> dict[str, torch.Tensor]:
    """A new state dict without LoRA tensors, each targeted `<layer>.weight` += scale * B @ A (fp32).

    `peft` is the checkpoint's saved `peft` config section (method, rank, alpha).
    """
    out = {k: v for k, v in state.items() if not (k.endswith(LORA_A) or k.endswith(LORA_B))}
    if peft.get("method") != "lora":
        return out
    scale = lora_scale(peft)
    for key in state:
        if key.endswith(LORA_A):
            layer = key[: -len(LORA_A)]
            a, b = state[key].float(), state[layer + LORA_B].float()
            out[layer + ".weight"] = (state[layer + ".weight"].float() + scale * (b @ a)).to(state[layer + ".weight"].dtype)
    return out
