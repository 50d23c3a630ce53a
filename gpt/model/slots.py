"""Which class fills each slot of the model: megatron-core's tensor-parallel layers.

The transformer in `gpt.py` is written as if for one device; tensor parallelism enters only here.
With tensor size 1 these are ordinary linears/embeddings. Column-parallel layers split their
output features over the tensor group, row-parallel layers their input features (followed by an
all-reduce), the vocab-parallel embedding its rows.

Weight init uses one generator per layer, seeded by (train.seed, layer index), and builds the full
(unsplit) matrix before taking this rank's slice, so every layout — any tensor size, any pipeline
split — starts from the same weights as one process.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding

from gpt.model.context_parallel import ContextParallelAttention, local_positions
from gpt.model.sequence_parallel import (SequenceParallelColumn, SequenceParallelLayerNorm, SequenceParallelRMSNorm,
                                         SequenceParallelRow, SequenceScatter)
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


@dataclass
class Slots:
    """Factory for the parallel layers of one model (holds the tensor and context groups and megatron config).

    sequence_parallel: the residual stream holds 1/tp_size of the sequence (gpt/model/sequence_parallel.py);
    cp_size > 1: this rank holds two chunks of each sequence (gpt/model/context_parallel.py), which sets
    the positions it computes at and its attention core. `rng` decides which random stream dropout
    draws from (Megatron's rule, gpt/parallel/rng.py).
    """

    tp_size: int
    tp_group: object = None
    sequence_parallel: bool = False
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: object = None
    rng: object = None  # a gpt.parallel.rng.RNGTracker: how dropout draws (None: eval-only models)

    def __post_init__(self):
        self.tp_rank = collectives.rank(self.tp_group) if self.tp_size > 1 else 0  # this rank's place in the group
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                          perform_initialization=True, params_dtype=torch.float32)
        self.sequence_parallel = self.sequence_parallel and self.tp_size > 1

    @classmethod
    def of(cls, ctx, parallel_cfg, rng=None) -> "Slots":
        """The slots of a rank of a ParallelContext, with parallel.sequence_parallel of its config."""
        return cls(ctx.layout.tensor, ctx.tp_group, sequence_parallel=parallel_cfg.sequence_parallel,
                   cp_rank=ctx.cp_rank, cp_size=ctx.layout.context, cp_group=ctx.cp_group if ctx.layout.context > 1 else None,
                   rng=rng)

    def column(self, n_in: int, n_out: int, *, bias: bool, init, tied: bool = False) -> ColumnParallelLinear:
        """y[..., n_out/p] = x W_p^T: output features split over the tensor group."""
        cls = SequenceParallelColumn if self.sequence_parallel else ColumnParallelLinear
        return cls(n_in, n_out, config=self.config, init_method=init, bias=bias,
                   gather_output=False, skip_weight_param_allocation=tied, tp_group=self.tp_group)

    def row(self, n_in: int, n_out: int, *, bias: bool, init) -> RowParallelLinear:
        """y[..., n_out] = all-reduce(x[..., n_in/p] W_p^T): input features split over the tensor group."""
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
        """softmax(q k^T / sqrt(hd)) v: SDPA, or its context-parallel form. Its dropout falls on this
        rank's heads: it draws from the tensor-parallel stream."""
        core = ContextParallelAttention(self.cp_group, self.cp_rank, self.cp_size) if self.cp_size > 1 \
            else F.scaled_dot_product_attention
        return _InRegion(core, self.tensor_parallel_region) if self.rng is not None else core

    def dropout(self, p: float) -> nn.Module:
        """Dropout on the residual stream: whole on every tensor rank (the shared stream), or, under
        sequence parallelism, this rank's part of the sequence (the tensor-parallel stream)."""
        return _DropoutIn(p, self.tensor_parallel_region) if self.sequence_parallel and self.rng is not None \
            else nn.Dropout(p)

    def vocab_embedding(self, n_vocab: int, n_embd: int, *, init) -> VocabParallelEmbedding:
        """Rows of the token table split over the tensor group; lookups all-reduced."""
        return VocabParallelEmbedding(n_vocab, n_embd, init_method=init, config=self.config, tp_group=self.tp_group)

    def tensor_parallel_region(self):
        """Context for random ops on split activations: they draw from the tensor-parallel stream
        (different on every tensor rank); outside it, from the stream all tensor ranks share."""
        return self.rng.fork() if self.rng is not None else contextlib.nullcontext()

    def recompute(self, fn, *args):
        """fn(*args), its activations recomputed in backward, with the same dropout masks in both streams."""
        context_fn = self.rng.recompute_contexts if self.rng is not None else torch.utils.checkpoint.noop_context_fn
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn)


class _InRegion:
    """`fn` called inside `region()` (a context manager factory)."""

    def __init__(self, fn, region):
        self.fn, self.region = fn, region

    def __call__(self, *args, **kwargs):
        with self.region():
            return self.fn(*args, **kwargs)


class _DropoutIn(nn.Dropout):
    """nn.Dropout whose masks come from the random stream `region()` selects."""

    def __init__(self, p: float, region):
        super().__init__(p)
        self.region = region

    def forward(self, x):
        with self.region():
            return super().forward(x)
