"""From config to model: resolve vocab/MLP sizes, then build the GPT for this rank's tensor slice.

`build_model` builds on the meta device (no memory, no init) and `materialize`s this rank's slices
where they will live, in their dtype, drawing each tensor tile-wise (see slots.py) or, for a model
a checkpoint is about to fill, not at all.
"""

from dataclasses import dataclass, replace

import torch
import torch.nn as nn

from gpt.config.training import ModelConfig
from gpt.config.validate import ffn_hidden, padded_vocab_size
from gpt.errors import ConfigError
from gpt.model.gpt import GPT
from gpt.model.slots import Slots, fill


@dataclass(frozen=True)
class ModelShape:
    """Sizes that depend on config and tokenizer but never on the parallel layout."""

    vocab_size: int  # the tokenizer's
    padded_vocab: int  # rows of the embedding table
    ffn_hidden: int


def model_shape(cfg: ModelConfig, tokenizer_vocab: int | None) -> ModelShape:
    vocab = cfg.vocab_size or tokenizer_vocab
    if vocab is None:
        raise ConfigError("model.vocab_size is null and no tokenizer is known; set model.vocab_size or data.path")
    if tokenizer_vocab is not None and vocab < tokenizer_vocab:
        raise ConfigError(f"model.vocab_size={vocab} is smaller than the tokenizer's vocabulary {tokenizer_vocab}")
    return ModelShape(vocab, padded_vocab_size(vocab, cfg.vocab_multiple), ffn_hidden(cfg))


def build_model(cfg: ModelConfig, shape: ModelShape, *, seed: int, tp_size: int = 1, tp_group=None,
                slots: Slots | None = None, device="cpu", dtype: torch.dtype = torch.float32,
                init: bool = True) -> GPT:
    """This tensor rank's GPT (`slots`: its layers, default plain tensor parallelism over tp_group).
    `device`: where its parameters live ("meta": nowhere, for planning); None builds in the caller's
    context instead (e.g. under deepspeed.zero.Init), drawing each slot as it is built.
    `init=False`: zeros, nothing drawn (a checkpoint will set every weight)."""
    slots = replace(slots or Slots(tp_size, tp_group), draw=init, params_dtype=dtype)
    sizes = dict(vocab=shape.padded_vocab, vocab_size=shape.vocab_size, ffn_hidden=shape.ffn_hidden, seed=seed)
    if device is None:
        return GPT(cfg, slots, **sizes)
    with torch.device("meta"):
        model = GPT(cfg, slots, **sizes)
    if torch.device(device).type != "meta":
        materialize(model, device=device, dtype=dtype, init=init)
    return model


# Modules whose own reset_parameters() is deterministic (gains 1, biases 0): they need no recipe.
_SELF_INITIALISING = (nn.LayerNorm, nn.RMSNorm)


@torch.no_grad()
def materialize(module: nn.Module, *, device, dtype: torch.dtype, init: bool = True,
                values: dict[str, torch.Tensor] | None = None) -> nn.Module:
    """Allocate every meta parameter of `module` on `device` in `dtype` (this rank's slice only, as
    built) and give it its recipe's value (`init=False`: zeros, nothing drawn), or take `values[name]`
    as it is (a checkpoint's tensor becomes the parameter: no copy when device and dtype agree).
    Meta buffers are recomputed there, others moved. Parameters keep their attributes (tensor-parallel split, ...)
    and their sharing."""
    done: dict[int, nn.Parameter] = {}
    for prefix, m in module.named_modules():
        fresh = False
        for name, p in list(m._parameters.items()):
            if p is None or not p.is_meta:
                continue
            if id(p) not in done:
                full_name = f"{prefix}.{name}" if prefix else name
                value = None if values is None else values.get(full_name)
                if value is not None:
                    if tuple(value.shape) != tuple(p.shape):
                        raise ValueError(f"{full_name}: shape {tuple(value.shape)}, the model's is {tuple(p.shape)}")
                    data = value.to(device=device, dtype=dtype)
                else:  # zeros without init: finite for the optimizer's state-creating step before a load
                    data = (torch.empty if init else torch.zeros)(p.shape, device=device, dtype=dtype)
                new = nn.Parameter(data, requires_grad=p.requires_grad)
                attrs = dict(p.__dict__)
                pending = attrs.pop("gpt_init", None)
                new.__dict__.update(attrs)
                if value is None and init:
                    if pending is not None:
                        fill(new.data, pending.init, dim=pending.dim, rank=pending.rank, size=pending.size)
                    elif not isinstance(m, _SELF_INITIALISING):
                        raise TypeError(f"{type(m).__name__}.{name} has no init recipe; build it through a slot "
                                        f"(gpt/model/slots.py initialize)")
                    else:
                        fresh = True
                done[id(p)] = new
            m._parameters[name] = done[id(p)]
        if fresh:
            m.reset_parameters()
        buffers = {k: b for k, b in m._buffers.items() if b is not None}
        if any(b.is_meta for b in buffers.values()):
            m.reset_buffers(device)
        else:
            for k, b in buffers.items():
                m._buffers[k] = b.to(device)
    return module
