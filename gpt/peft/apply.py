"""Turn a built model (a GPT or a pipeline stage) into a parameter-efficient one, in place.

`apply_peft` finds every transformer `Block` in the module tree, wraps the targeted linears, and
leaves `requires_grad` set on exactly the parameters that train. The optimizer (engine/optim.py)
only ever sees those, so frozen weights get no gradients and no Adam state.
"""

import re
from typing import Callable, Iterable

import torch
import torch.nn as nn

from gpt.config.finetune import PeftConfig, lora_targets
from gpt.model.gpt import Block, Embedding
from gpt.model.slots import is_column
from gpt.peft.adapter import Adapter
from gpt.peft.bitfit import BiasOutside
from gpt.peft.lora import LoRA

_PEFT_NAME = re.compile(r"\.(lora_A|lora_B|adapter)\.")
# The output projection of each branch, where adapters go (GPT-2 MLP: proj, SwiGLU MLP: down).
ADAPTER_SITES = {"gelu": ("attn.proj", "mlp.proj"), "swiglu": ("attn.proj", "mlp.down")}


def is_peft_name(name: str) -> bool:
    """True for parameters that PEFT added (LoRA factors, adapters); the base model has none of them."""
    return bool(_PEFT_NAME.search(name))


def _blocks(module: nn.Module) -> list[tuple[str, Block]]:
    return [(name, m) for name, m in module.named_modules() if isinstance(m, Block)]


def _replace(block: Block, path: str, new: nn.Module) -> None:
    parent, _, child = path.rpartition(".")
    setattr(block.get_submodule(parent), child, new)


def apply_peft(module: nn.Module, peft: PeftConfig, model_cfg, *, slots, seed: int,
               canonical: Callable[[str], str] = lambda name: name) -> nn.Module:
    """Wrap/freeze `module`'s layers for `peft.method`; `canonical(name)` maps a parameter name of this
    module to its one-process name (pipelines number their layers differently), which seeds the init."""
    if peft.method == "none":
        return module
    for p in module.parameters():
        p.requires_grad_(False)
    for block_name, block in _blocks(module):
        prefix = f"{block_name}." if block_name else ""
        if peft.method == "lora":
            for path in lora_targets(peft.targets, model_cfg.activation):
                base = block.get_submodule(path)
                kind = "column" if is_column(base) else "row"
                name = canonical(f"{prefix}{path}.weight").removesuffix(".weight")
                _replace(block, path, LoRA(base, kind=kind, rank=peft.rank, alpha=peft.alpha, dropout=peft.dropout,
                                           slots=slots, seed=seed, name=name))
        elif peft.method == "adapter":
            for path in ADAPTER_SITES[model_cfg.activation]:
                base = block.get_submodule(path)
                name = canonical(f"{prefix}{path}.adapter.down.weight").removesuffix(".weight")
                _replace(block, path, Adapter(base, bottleneck=peft.bottleneck, seed=seed, name=name,
                                              std=model_cfg.init_std))
        elif peft.method == "bitfit":
            for path, m in list(block.named_modules()):
                if is_column(m) and m.bias is not None:
                    _replace(block, path, BiasOutside(m))
    for name, p in module.named_parameters():
        if is_peft_name(name) or (peft.method == "bitfit" and name.endswith(".bias")):
            p.requires_grad_(True)
    for m in module.modules():
        if isinstance(m, Embedding) and not any(p.requires_grad for p in m.parameters()):
            # A frozen embedding's output needs no gradient, but reentrant activation checkpointing
            # (DeepSpeed's, in pipelines) only back-propagates into a block whose input requires one:
            # without this the checkpointed blocks' LoRA/adapter gradients are never computed (and
            # DeepSpeed's pipeline fails in backward; tests/peft/test_lora_parallel.py).
            m.register_forward_hook(_require_grad)
    return module


def _require_grad(module, inputs, output: torch.Tensor) -> torch.Tensor:
    return output.requires_grad_(True) if torch.is_grad_enabled() and not output.requires_grad else output


def trainable_counts(params: Iterable[nn.Parameter], tp_rank: int) -> tuple[int, int]:
    """(trainable, total) parameters of this rank's part of the model, counted as one process would:
    tensor-parallel slices on every tensor rank, replicated parameters on tensor rank 0 only, a
    pipeline's second copy of tied weights not at all. Sum the result over the model-parallel group."""
    trainable = total = 0
    for p in params:
        if getattr(p, "ds_pipe_replicated", False) or not (tp_rank == 0 or getattr(p, "tensor_model_parallel", False)):
            continue
        n = getattr(p, "ds_numel", None) or p.numel()  # ZeRO-3 partitions hold a slice; ds_numel is the whole
        total += n
        trainable += n if p.requires_grad else 0
    return trainable, total


@torch.no_grad()
def merge_peft_modules(module: nn.Module) -> int:
    """Fold every LoRA wrapper into its base weight (W += s * B @ A, this rank's slice) and put the base
    layer back in its place (BitFit's wrappers too); returns how many were merged. Adapters are
    nonlinear and stay."""
    merged = 0
    for block_name, block in _blocks(module):
        for path, m in list(block.named_modules()):
            if isinstance(m, (LoRA, BiasOutside)):
                base = m.unwrap()
                if isinstance(m, LoRA):
                    base.weight.add_(m.delta().to(base.weight.dtype))
                _replace(block, path, base)
                merged += 1
    return merged
