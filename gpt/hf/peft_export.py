"""The PEFT tensors of a fine-tuned checkpoint on their own, for Hugging Face users.

LoRA becomes the `peft` library's format (`adapter_config.json` + `adapter_model.safetensors`), which
`peft.PeftModel.from_pretrained(base, dir)` loads onto the exported base model:

    ours (one-process names)            GPT-2 (Conv1D, fan_in_fan_out)      Llama
    blocks.i.attn.qkv.lora_A/B          transformer.h.i.attn.c_attn         model.layers.i.self_attn.{q,k,v}_proj
    blocks.i.attn.proj                  transformer.h.i.attn.c_proj         model.layers.i.self_attn.o_proj
    blocks.i.mlp.fc / mlp.proj          transformer.h.i.mlp.c_fc / c_proj   -
    blocks.i.mlp.gate / up / down       -                                   model.layers.i.mlp.{gate,up,down}_proj

each key prefixed `base_model.model.` and ending `.lora_A.weight` (r, in) / `.lora_B.weight` (out, r):
peft keeps nn.Linear's orientation for the factors even where the base is a transposed Conv1D. Our
fused qkv has one A and one B whose rows are grouped per kv head; B's rows are permuted exactly like
the base weight's (split_qkv). For Llama's separate q/k/v_proj every projection gets the shared A and
its rows of B: q = s * B_q @ A, the same function at the same rank and scale.

Bottleneck adapters have no `peft` equivalent: their tensors are written under our names with a
`gpt_peft.json` saying where they go.
"""

import torch

from gpt.hf.config import GPT2, family
from gpt.hf.weights import split_qkv
from gpt.peft.merge import LORA_A, LORA_B

ADAPTER_CONFIG, ADAPTER_WEIGHTS, GPT_PEFT = "adapter_config.json", "adapter_model.safetensors", "gpt_peft.json"
_GPT2 = {"attn.proj": "attn.c_proj", "mlp.fc": "mlp.c_fc", "mlp.proj": "mlp.c_proj"}
_LLAMA = {"attn.proj": "self_attn.o_proj", "mlp.gate": "mlp.gate_proj", "mlp.up": "mlp.up_proj",
          "mlp.down": "mlp.down_proj"}


def lora_to_peft(state: dict[str, torch.Tensor], m: dict, peft: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """Our full state dict (LoRA tensors in it) -> (adapter_model tensors, adapter_config.json)."""
    fam = family(m)
    prefix = "base_model.model." + ("transformer.h" if fam == GPT2 else "model.layers")
    out: dict[str, torch.Tensor] = {}
    modules: set[str] = set()
    for key in sorted(state):
        if not key.endswith(LORA_A):
            continue
        layer = key[: -len(LORA_A)]  # blocks.i.<path>
        _, i, path = layer.split(".", 2)
        a, b = state[key], state[layer + LORA_B]
        if path == "attn.qkv":
            q, k, v = split_qkv(b, m)
            if fam == GPT2:
                targets = {"attn.c_attn": torch.cat([q, k, v])}
            else:
                targets = {f"self_attn.{p}_proj": t for p, t in zip("qkv", (q, k, v))}
        else:
            targets = {(_GPT2 if fam == GPT2 else _LLAMA)[path]: b}
        for hf, b_rows in targets.items():
            out[f"{prefix}.{i}.{hf}.lora_A.weight"] = a.clone()  # q/k/v each own a copy (safetensors shares nothing)
            out[f"{prefix}.{i}.{hf}.lora_B.weight"] = b_rows.contiguous()
            modules.add(hf)
    config = {"peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(peft["rank"]), "lora_alpha": peft["alpha"],
              "lora_dropout": peft.get("dropout", 0.0), "target_modules": sorted(modules), "bias": "none",
              "fan_in_fan_out": fam == GPT2, "inference_mode": True, "init_lora_weights": True,
              "base_model_name_or_path": None}
    return out, config
