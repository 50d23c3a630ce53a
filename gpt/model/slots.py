"""Which class fills each slot of the model: plain fused torch ops at tensor size 1, megatron-core's
tensor-parallel layers above.

The transformer in `gpt.py` is written as if for one device; tensor parallelism enters only here.
Column-parallel layers split their output features over the tensor group, row-parallel layers their
input features (followed by an all-reduce), the vocab-parallel embedding and head their rows. At
tensor size 1 there is nothing to split, and the slots are `F.linear` / `F.embedding` modules with
megatron's parameter names, shapes, init and tensor-parallel attributes (`partition_dim`, which the
checkpoints record), so a checkpoint is the same whichever class wrote it, and PEFT wraps both.

Weight init uses one generator per layer, seeded by (train.seed, layer index), and builds the full
(unsplit) matrix before taking this rank's slice, so every layout — any tensor size, any pipeline
split — starts from the same weights as one process.
"""

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import (ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding,
                                           copy_to_tensor_model_parallel_region)
from megatron.core.tensor_parallel.layers import set_tensor_model_parallel_attributes

from gpt.model.context_parallel import ContextParallelAttention, local_positions
from gpt.model.loss import linear_cross_entropy
from gpt.model.sequence_parallel import (SequenceParallelColumn, SequenceParallelLayerNorm, SequenceParallelRMSNorm,
                                         SequenceParallelRow, SequenceScatter, gather_sequence)
from gpt.parallel import collectives


class LayerInit:
    """Normal(0, std) init drawn from a generator private to one layer."""

    def __init__(self, seed: int, layer_index: int, std: float, n_layer: int):
        self.generator = torch.Generator().manual_seed(seed * 100_003 + layer_index)
        self.std = std
        self.residual_std = std / math.sqrt(2 * n_layer)  # GPT-2: scale residual projections

    def normal(self, std: float | None = None):
        std = self.std if std is None else std

        def init_(w: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return w.normal_(0.0, std, generator=self.generator)

        return init_


def _weight(rows: int, cols: int, init, partition_dim: int) -> nn.Parameter:
    """A whole (rows, cols) fp32 matrix drawn by `init`, marked like megatron's (this rank holds all of it)."""
    w = nn.Parameter(torch.empty(rows, cols))
    init(w)
    set_tensor_model_parallel_attributes(w, True, partition_dim, 1)
    return w


class Linear(nn.Module):
    """y = x W^T + b as one F.linear: a column- or row-parallel slot at tensor size 1.

    Returns (y, None), or (x W^T, b) with `skip_bias_add`, like megatron's layers (PEFT relies on it).
    """

    partition_dim = 0

    def __init__(self, n_in: int, n_out: int, *, bias: bool, init, tied: bool = False):
        super().__init__()
        self.input_size, self.output_size = n_in, n_out
        self.skip_bias_add = False
        self.weight = None if tied else _weight(n_out, n_in, init, self.partition_dim)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.zeros(n_out))
            if self.partition_dim == 0:  # a column-parallel bias is split with the rows; a row-parallel one is not
                set_tensor_model_parallel_attributes(self.bias, True, 0, 1)

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None):
        w = self.weight if weight is None else weight
        if self.skip_bias_add:
            return F.linear(x, w), self.bias
        return F.linear(x, w, self.bias), None


class ColumnLinear(Linear):
    """ColumnParallelLinear at tensor size 1."""


class RowLinear(Linear):
    """RowParallelLinear at tensor size 1 (weight split on its input features: partition_dim 1)."""

    partition_dim = 1


class Embedding(nn.Module):
    """VocabParallelEmbedding at tensor size 1: one F.embedding."""

    def __init__(self, n_vocab: int, n_embd: int, *, init):
        super().__init__()
        self.weight = _weight(n_vocab, n_embd, init, 0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)


COLUMN_LINEARS = (ColumnParallelLinear, ColumnLinear)  # what PEFT treats as column-parallel
ROW_LINEARS = (RowParallelLinear, RowLinear)


class VocabHead(nn.Module):
    """Hidden states -> logits of this rank's vocabulary rows, or straight to the loss (any tensor size).

    forward(x, weight=None) -> logits (b, t, v/p), padding rows at the dtype's lowest value;
    forward(x, weight=None, labels=, weights=) -> sum_i weights_i * CE_i, fused and chunked
    (gpt/model/loss.py): the full logits never exist. `weight` is the embedding's when tied. One
    module for both, so that ZeRO-3 gathers the weight whichever is asked for.
    """

    def __init__(self, n_embd: int, n_vocab: int, *, vocab_size: int, init, tied: bool, tp_size: int, tp_rank: int,
                 tp_group, sequence_parallel: bool = False):
        super().__init__()
        local = n_vocab // tp_size
        self.first, self.vocab_size = tp_rank * local, vocab_size  # rows [first, first + local) live here
        self.tp_group = tp_group if tp_size > 1 else None
        self.sequence_parallel = sequence_parallel and self.tp_group is not None
        self.weight = None
        if not tied:
            self.weight = nn.Parameter(torch.empty(local, n_embd))
            full = torch.empty(n_vocab, n_embd)
            init(full)
            with torch.no_grad():
                self.weight.copy_(full[self.first:self.first + local])
            set_tensor_model_parallel_attributes(self.weight, True, 0, 1)
        self.register_buffer("padding", torch.arange(self.first, self.first + local) >= vocab_size, persistent=False)
        self.padded = bool(self.padding.any())

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if weight is None else weight  # (v/p, h)
        if self.sequence_parallel:  # (b, t/p, h) -> (b, t, h); backward: reduce-scatter (sums x's gradients)
            x = gather_sequence(x, self.tp_group)
        if labels is not None:
            return linear_cross_entropy(x, w, labels, weights, vocab_size=self.vocab_size, first=self.first,
                                        group=self.tp_group, reduce_input_grad=not self.sequence_parallel)
        if self.tp_group is not None and not self.sequence_parallel:
            x = copy_to_tensor_model_parallel_region(x, group=self.tp_group)  # backward: all-reduce x's gradient
        logits = F.linear(x, w)  # (b, t, v/p)
        return logits.masked_fill(self.padding, torch.finfo(logits.dtype).min) if self.padded else logits


@dataclass
class Slots:
    """Factory for the layers of one model (holds the tensor and context groups and megatron config).

    sequence_parallel: the residual stream holds 1/tp_size of the sequence (gpt/model/sequence_parallel.py);
    cp_size > 1: this rank holds two chunks of each sequence (gpt/model/context_parallel.py), which sets
    the positions it computes at and its attention core.
    """

    tp_size: int
    tp_group: object = None
    sequence_parallel: bool = False
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: object = None

    def __post_init__(self):
        self.tp_rank = collectives.rank(self.tp_group) if self.tp_size > 1 else 0  # this rank's place in the group
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                          perform_initialization=True, params_dtype=torch.float32)
        self.sequence_parallel = self.sequence_parallel and self.tp_size > 1

    @classmethod
    def of(cls, ctx, parallel_cfg) -> "Slots":
        """The slots of a rank of a ParallelContext, with parallel.sequence_parallel of its config."""
        return cls(ctx.layout.tensor, ctx.tp_group, sequence_parallel=parallel_cfg.sequence_parallel,
                   cp_rank=ctx.cp_rank, cp_size=ctx.layout.context, cp_group=ctx.cp_group if ctx.layout.context > 1 else None)

    def column(self, n_in: int, n_out: int, *, bias: bool, init) -> nn.Module:
        """y[..., n_out/p] = x W_p^T: output features split over the tensor group."""
        if self.tp_size == 1:
            return ColumnLinear(n_in, n_out, bias=bias, init=init)
        cls = SequenceParallelColumn if self.sequence_parallel else ColumnParallelLinear
        return cls(n_in, n_out, config=self.config, init_method=init, bias=bias, gather_output=False,
                   tp_group=self.tp_group)

    def row(self, n_in: int, n_out: int, *, bias: bool, init) -> nn.Module:
        """y[..., n_out] = all-reduce(x[..., n_in/p] W_p^T): input features split over the tensor group."""
        if self.tp_size == 1:
            return RowLinear(n_in, n_out, bias=bias, init=init)
        cls = SequenceParallelRow if self.sequence_parallel else RowParallelLinear
        return cls(n_in, n_out, config=self.config, init_method=init, bias=bias,
                   input_is_parallel=True, skip_bias_add=False, tp_group=self.tp_group)

    def norm(self, cfg) -> nn.Module:
        """LayerNorm or RMSNorm over n_embd; under sequence parallelism its gradients are summed over the tensor group."""
        sp = dict(group=self.tp_group) if self.sequence_parallel else {}
        if cfg.norm == "rmsnorm":
            return (SequenceParallelRMSNorm if sp else nn.RMSNorm)(cfg.n_embd, eps=cfg.norm_eps, **sp)
        return (SequenceParallelLayerNorm if sp else nn.LayerNorm)(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias, **sp)

    def residual_split(self) -> nn.Module:
        """Applied where the residual stream starts (after the embedding): this rank's part of it."""
        return SequenceScatter(self.tp_group) if self.sequence_parallel else nn.Identity()

    def positions(self, t: int, start: int, device) -> torch.Tensor:
        """Positions (t,) of the t tokens this rank holds, the first cached at `start`."""
        if self.cp_size > 1:
            return local_positions(t, self.cp_rank, self.cp_size, device)
        return torch.arange(start, start + t, device=device)

    def attention_core(self):
        """softmax(q k^T / sqrt(hd)) v: SDPA, or its context-parallel form."""
        if self.cp_size > 1:
            return ContextParallelAttention(self.cp_group, self.cp_rank, self.cp_size)
        return F.scaled_dot_product_attention

    def vocab_embedding(self, n_vocab: int, n_embd: int, *, init) -> nn.Module:
        """Rows of the token table split over the tensor group; lookups all-reduced."""
        if self.tp_size == 1:
            return Embedding(n_vocab, n_embd, init=init)
        return VocabParallelEmbedding(n_vocab, n_embd, init_method=init, config=self.config, tp_group=self.tp_group)

    def vocab_head(self, n_embd: int, n_vocab: int, *, vocab_size: int, init, tied: bool) -> VocabHead:
        """The output projection, rows split like the embedding's; fused with the loss when given labels."""
        return VocabHead(n_embd, n_vocab, vocab_size=vocab_size, init=init, tied=tied, tp_size=self.tp_size,
                         tp_rank=self.tp_rank, tp_group=self.tp_group, sequence_parallel=self.sequence_parallel)
