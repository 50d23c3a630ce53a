"""Which class fills each slot of the model, and how every parameter gets its first value.

The transformer in `gpt.py` is written as if for one device; tensor parallelism enters only here.
Column-parallel layers split their output features over the tensor group, row-parallel layers their
input features (followed by an all-reduce), the vocab-parallel embedding its rows: megatron-core's
classes (gpt/model/tp_layers.py), imported only for tensor size > 1. At tensor size 1 there is
nothing to split and the slots are plain `F.linear` / `F.embedding` modules with the same parameter
names, shapes, init and tensor-parallel attributes (so one process never imports megatron: a
one-process load, e.g. gpt-generate, starts seconds sooner). The output head (`VocabHead`, any
tensor size) is ours at every size: given labels it goes straight to the loss, fused and chunked
(gpt/model/loss.py), so the logits of the whole vocabulary never exist.

Init without the whole matrix. A weight's values are defined tile by tile along the dimension its
slot splits over the tensor group (rows of column-parallel weights and of the embedding, columns of
row-parallel weights; rows of replicated tensors): tile k holds `TILE` rows/columns drawn from its
own generator, seeded by (train.seed, layer index, the tensor's place in the layer, k). A rank
holding rows a..b of a weight draws only the tiles that overlap them, straight into its own slice,
in its dtype, on its device; the tiles never depend on the layout, so every tensor size and pipeline
split starts from exactly the weights of one process. Slot classes give their parameters their
first value through `initialize` (the one place that draws), inside their own `__init__`, so that
it also works on the meta device (the recipe is kept and applied by `build.materialize`) and under
`deepspeed.zero.Init` (drawn before ZeRO-3 partitions the tensor).
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from gpt.model.context_parallel import ContextParallelAttention, local_positions
from gpt.model.loss import linear_cross_entropy

TILE = 256  # rows (or columns) per init tile: a property of the tensor, never of the layout
_MASK = (1 << 64) - 1


def _mix(*parts: int) -> int:
    """A 63-bit seed from integers (splitmix64 over the parts): distinct keys give unrelated streams."""
    h = 0x9E3779B97F4A7C15
    for part in parts:
        h = (h ^ (part & _MASK)) * 0xBF58476D1CE4E5B9 & _MASK
        h = (h ^ (h >> 27)) * 0x94D049BB133111EB & _MASK
        h ^= h >> 31
    return h >> 1


@dataclass(frozen=True)
class Normal:
    """N(0, std) for one tensor, tile by tile; `key` names the tensor (seed, layer, place in the layer)."""

    key: tuple[int, ...]
    std: float

    def fill(self, local: torch.Tensor, *, dim: int, start: int, full: int) -> None:
        """Fill `local`, indices [start, start + local.shape[dim]) along `dim` of a tensor `full` long there."""
        n = local.shape[dim]
        for k in range(start // TILE, (start + n - 1) // TILE + 1):
            lo, hi = k * TILE, min((k + 1) * TILE, full)
            shape = list(local.shape)
            shape[dim] = hi - lo
            gen = torch.Generator(device="cpu").manual_seed(_mix(*self.key, k))
            a, b = max(lo, start), min(hi, start + n)
            into = local.narrow(dim, a - start, b - a)
            if (a, b) == (lo, hi) and into.dtype == torch.float32 and into.device.type == "cpu" and into.is_contiguous():
                into.normal_(0.0, self.std, generator=gen)  # the whole tile, in place: the same values, no copy
                continue
            tile = torch.empty(shape, dtype=torch.float32, device="cpu").normal_(0.0, self.std, generator=gen)
            into.copy_(tile.narrow(dim, a - lo, b - a))

    def __call__(self, w: torch.Tensor) -> torch.Tensor:
        """Fill a whole (unsplit) tensor, e.g. a replicated one built outside a slot."""
        with torch.no_grad():
            self.fill(w, dim=0, start=0, full=w.shape[0])
        return w


@dataclass(frozen=True)
class Constant:
    """Every element `value` (biases 0, norm gains 1)."""

    value: float

    def fill(self, local: torch.Tensor, *, dim: int, start: int, full: int) -> None:
        local.fill_(self.value)


ZEROS = Constant(0.0)


def _fill_from_full(fn, local: torch.Tensor, *, dim: int, start: int, full: int) -> None:
    """An init that only knows whole matrices (e.g. a LoRA factor's): draw it whole in fp32, keep the slice.

    Only for small tensors; model weights use tile-wise recipes (`Normal`)."""
    shape = list(local.shape)
    shape[dim] = full
    whole = torch.empty(shape, dtype=torch.float32, device="cpu")
    fn(whole)
    local.copy_(whole.narrow(dim, start, local.shape[dim]))


@dataclass(frozen=True)
class Pending:
    """The recipe of a parameter built on the meta device, applied when it is materialised."""

    init: object
    dim: int | None
    rank: int
    size: int


def fill(local: torch.Tensor, init, *, dim: int | None, rank: int = 0, size: int = 1) -> None:
    """Give `local`, tensor rank `rank`'s slice along `dim` of a tensor split over `size` ranks (dim None:
    replicated, the whole tensor), the values one process would give the whole tensor."""
    if dim is None:
        dim, rank, size = 0, 0, 1
    n = local.shape[dim]
    with torch.no_grad():
        if hasattr(init, "fill"):
            init.fill(local, dim=dim, start=rank * n, full=size * n)
        else:
            _fill_from_full(init, local, dim=dim, start=rank * n, full=size * n)


def initialize(param: torch.Tensor, init, *, dim: int | None, rank: int = 0, size: int = 1, draw: bool = True) -> None:
    """The first value of a slot's parameter (see the module docstring); slot classes call this in
    their `__init__`. On the meta device the recipe is kept for `build.materialize`; `draw=False`
    (a checkpoint will overwrite it) only zeroes it: nothing is drawn, and the optimizer's first
    (state-creating) step before the load sees finite weights."""
    if param.is_meta:
        param.gpt_init = Pending(init, dim, rank, size)
    elif draw:
        fill(param.data, init, dim=dim, rank=rank, size=size)
    else:
        with torch.no_grad():
            param.data.zero_()


class LayerInit:
    """The init recipes of one layer: each `normal()` names the next tensor of the layer.

    Tensor j of layer i is N(0, std) drawn tile-wise from seeds (seed, i, j, tile); the order of
    `normal()` calls within a layer's construction is the same in every layout. Build each layer from
    its own LayerInit (a second build from the same object would name its tensors j+1, ...).
    """

    def __init__(self, seed: int, layer_index: int, std: float, n_layer: int):
        self.seed, self.layer_index, self.count = seed, layer_index, 0
        self.std = std
        self.residual_std = std / math.sqrt(2 * n_layer)  # GPT-2: scale residual projections

    def normal(self, std: float | None = None) -> Normal:
        key = (self.seed, self.layer_index, self.count)
        self.count += 1
        return Normal(key, self.std if std is None else std)


def set_split(param: torch.Tensor, dim: int) -> None:
    """Mark `param` as split along `dim` over the tensor group (megatron's attribute names, which
    checkpoints and the gradient norm read), also where the group has one rank."""
    param.tensor_model_parallel, param.partition_dim, param.partition_stride = True, dim, 1


class Linear(nn.Module):
    """y = x W^T + b as one F.linear: a column- or row-parallel slot at tensor size 1.

    forward(x, weight=None) -> (y, None), or (x W^T, b) with `skip_bias_add`, like megatron's layers.
    """

    slot = "column"

    def __init__(self, n_in: int, n_out: int, *, slots: "Slots", bias: bool, init, tied: bool = False):
        super().__init__()
        self.input_size, self.output_size = n_in, n_out
        self.skip_bias_add = False
        dim = 0 if self.slot == "column" else 1
        self.weight = None
        if not tied:
            self.weight = nn.Parameter(torch.empty(n_out, n_in, dtype=slots.params_dtype))
            set_split(self.weight, dim)
            slots.initialize(self.weight, init, dim=dim)
        self.bias = None
        if bias:
            self.bias = nn.Parameter(torch.empty(n_out, dtype=slots.params_dtype))
            if self.slot == "column":  # split with the rows; a row-parallel bias is replicated
                set_split(self.bias, 0)
            slots.initialize(self.bias, ZEROS, dim=0 if self.slot == "column" else None)

        self.linear = slots.linear

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None):
        w = self.weight if weight is None else weight
        if self.skip_bias_add:
            return self.linear(x, w), self.bias
        return self.linear(x, w, self.bias), None


class ColumnLinear(Linear):
    """The column-parallel slot at tensor size 1."""


class RowLinear(Linear):
    """The row-parallel slot at tensor size 1 (weight split on its input features: partition_dim 1)."""

    slot = "row"


class Embedding(nn.Module):
    """The vocab-parallel embedding at tensor size 1: one F.embedding."""

    slot = "vocab"

    def __init__(self, n_vocab: int, n_embd: int, *, slots: "Slots", init):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_vocab, n_embd, dtype=slots.params_dtype))
        set_split(self.weight, 0)
        slots.initialize(self.weight, init, dim=0)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return F.embedding(idx, self.weight)


class ReplicatedEmbedding(nn.Embedding):
    """A table every tensor rank holds whole (learned positions)."""

    slot = "replicated"

    def __init__(self, n: int, n_embd: int, *, slots: "Slots", init):
        super().__init__(n, n_embd, _weight=torch.empty(n, n_embd, dtype=slots.params_dtype))
        slots.initialize(self.weight, init, dim=None)


class VocabHead(nn.Module):
    """Hidden states -> logits of this rank's vocabulary rows, or straight to the loss (any tensor size).

    forward(x, weight=None) -> logits (b, t, v/p), padding rows at the dtype's lowest value;
    forward(x, weight=None, labels=, weights=) -> sum_i weights_i * CE_i, fused and chunked
    (gpt/model/loss.py): the full logits never exist. `weight` is the embedding's when tied. One
    module for both, so that ZeRO-3 gathers the weight whichever is asked for. Its weight is the
    column-parallel slot's (rows split, drawn tile-wise by rows), so checkpoints do not see the class.
    """

    slot = "head"

    def __init__(self, n_embd: int, n_vocab: int, *, slots: "Slots", vocab_size: int, init, tied: bool):
        super().__init__()
        local = n_vocab // slots.tp_size
        self.first, self.vocab_size = slots.tp_rank * local, vocab_size  # rows [first, first + local) live here
        self.tp_group = slots.tp_group if slots.tp_size > 1 else None
        self.sequence_parallel = slots.sequence_parallel
        self.weight = None
        if not tied:
            self.weight = nn.Parameter(torch.empty(local, n_embd, dtype=slots.params_dtype))
            set_split(self.weight, 0)
            slots.initialize(self.weight, init, dim=0)
        # Where the model is being built; on the CPU while that is the meta device (materialize moves it).
        rows = torch.arange(self.first, self.first + local, device="cpu" if torch.empty(0).is_meta else None)
        self.register_buffer("padding", rows >= vocab_size, persistent=False)  # (v/p,)
        self.padded = self.first + local > vocab_size

    def forward(self, x: torch.Tensor, weight: torch.Tensor | None = None, labels: torch.Tensor | None = None,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        w = self.weight if weight is None else weight  # (v/p, h)
        if self.sequence_parallel:  # (b, t/p, h) -> (b, t, h); backward: reduce-scatter (sums x's gradients)
            from gpt.model.sequence_parallel import gather_sequence

            x = gather_sequence(x, self.tp_group)
        if labels is not None:
            return linear_cross_entropy(x, w, labels, weights, vocab_size=self.vocab_size, first=self.first,
                                        group=self.tp_group, reduce_input_grad=not self.sequence_parallel)
        if self.tp_group is not None and not self.sequence_parallel:
            from gpt.model.tp_layers import copy_to_tensor_region

            x = copy_to_tensor_region(x, self.tp_group)  # backward: all-reduce x's gradient
        logits = F.linear(x, w)  # (b, t, v/p)
        return logits.masked_fill(self.padding, torch.finfo(logits.dtype).min) if self.padded else logits


def is_column(module: nn.Module) -> bool:
    """A column-parallel linear (any tensor size): output features split, replicated input."""
    return getattr(module, "slot", None) == "column"


@dataclass
class Slots:
    """Factory for the layers of one model: it holds the tensor and context groups (megatron's
    classes above tensor size 1).

    sequence_parallel: the residual stream holds 1/tp_size of the sequence (gpt/model/sequence_parallel.py);
    cp_size > 1: this rank holds two chunks of each sequence (gpt/model/context_parallel.py), which sets
    the positions it computes at and its attention core. `draw=False` builds without drawing the init
    (a checkpoint is about to set every weight); `params_dtype`: the dtype slot parameters are allocated in.
    `rng` decides which random stream dropout draws from (Megatron's rule, gpt/parallel/rng.py).
    `zero3`: the tensor-size-1 linear slots use DeepSpeed's ZeRO-3 linear, which saves the weight
    parameter itself for backward: F.linear's autograd saves a transposed view of the gathered weight,
    which would keep every layer's gathered weight alive from its forward to its backward (megatron's
    tensor-parallel layers save the parameter already).
    """

    tp_size: int
    tp_group: object = None
    sequence_parallel: bool = False
    cp_rank: int = 0
    cp_size: int = 1
    cp_group: object = None
    draw: bool = True
    params_dtype: torch.dtype = torch.float32
    rng: object = None  # a gpt.parallel.rng.RNGTracker: how dropout draws (None: eval-only models)
    zero3: bool = False

    def __post_init__(self):
        self.tp_rank = 0
        self.linear = F.linear
        if self.zero3:
            from deepspeed.runtime.zero.linear import zero3_linear_wrap

            self.linear = zero3_linear_wrap
        self.sequence_parallel = self.sequence_parallel and self.tp_size > 1
        if self.tp_size > 1:  # megatron's layers; imported only here
            from gpt.model import tp_layers

            self.config = tp_layers.megatron_config(self.tp_size, self.params_dtype)
            self.tp_rank = tp_layers.group_rank(self.tp_group)
            self._column, self._row = tp_layers.ParallelColumn, tp_layers.ParallelRow
            self._vocab = tp_layers.ParallelVocabEmbedding
            if self.sequence_parallel:
                from gpt.model import sequence_parallel as sp

                self._column, self._row = sp.SequenceParallelColumn, sp.SequenceParallelRow

    @classmethod
    def of(cls, ctx, parallel_cfg, **kwargs) -> "Slots":
        """The slots of a rank of a ParallelContext, with parallel.sequence_parallel of its config."""
        return cls(ctx.layout.tensor, ctx.tp_group, sequence_parallel=parallel_cfg.sequence_parallel,
                   cp_rank=ctx.cp_rank, cp_size=ctx.layout.context,
                   cp_group=ctx.cp_group if ctx.layout.context > 1 else None,
                   zero3=parallel_cfg.zero_stage == 3 and ctx.layout.pipeline == 1, **kwargs)

    def initialize(self, param: torch.Tensor, init, *, dim: int | None) -> None:
        """This rank's slice of `param` (split along `dim` over the tensor group; None: replicated)."""
        initialize(param, init, dim=dim, rank=self.tp_rank if dim is not None else 0,
                   size=self.tp_size if dim is not None else 1, draw=self.draw)

    def column(self, n_in: int, n_out: int, *, bias: bool, init, tied: bool = False) -> nn.Module:
        """y[..., n_out/p] = x W_p^T: output features split over the tensor group."""
        if self.tp_size == 1:
            return ColumnLinear(n_in, n_out, slots=self, bias=bias, init=init, tied=tied)
        return self._column(n_in, n_out, slots=self, bias=bias, init=init, tied=tied)

    def row(self, n_in: int, n_out: int, *, bias: bool, init) -> nn.Module:
        """y[..., n_out] = all-reduce(x[..., n_in/p] W_p^T): input features split over the tensor group."""
        if self.tp_size == 1:
            return RowLinear(n_in, n_out, slots=self, bias=bias, init=init)
        return self._row(n_in, n_out, slots=self, bias=bias, init=init)

    def vocab_embedding(self, n_vocab: int, n_embd: int, *, init) -> nn.Module:
        """Rows of the token table split over the tensor group; lookups all-reduced."""
        if self.tp_size == 1:
            return Embedding(n_vocab, n_embd, slots=self, init=init)
        return self._vocab(n_vocab, n_embd, slots=self, init=init)

    def vocab_head(self, n_embd: int, n_vocab: int, *, vocab_size: int, init, tied: bool) -> VocabHead:
        """The output projection, rows split like the embedding's; fused with the loss when given labels."""
        return VocabHead(n_embd, n_vocab, slots=self, vocab_size=vocab_size, init=init, tied=tied)

    def embedding(self, n: int, n_embd: int, *, init) -> nn.Embedding:
        """A replicated table (learned positions)."""
        return ReplicatedEmbedding(n, n_embd, slots=self, init=init)

    def norm(self, cfg) -> nn.Module:
        """LayerNorm or RMSNorm over n_embd; under sequence parallelism its gradients are summed over the tensor group."""
        if self.sequence_parallel:
            from gpt.model import sequence_parallel as sp

            if cfg.norm == "rmsnorm":
                return sp.SequenceParallelRMSNorm(cfg.n_embd, eps=cfg.norm_eps, group=self.tp_group)
            return sp.SequenceParallelLayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias, group=self.tp_group)
        if cfg.norm == "rmsnorm":
            return nn.RMSNorm(cfg.n_embd, eps=cfg.norm_eps)
        return nn.LayerNorm(cfg.n_embd, eps=cfg.norm_eps, bias=cfg.bias)

    def residual_split(self) -> nn.Module:
        """Applied where the residual stream starts (after the embedding): this rank's part of it."""
        if self.sequence_parallel:
            from gpt.model.sequence_parallel import SequenceScatter

            return SequenceScatter(self.tp_group)
        return nn.Identity()

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

    def tensor_parallel_region(self):
        """Context for random ops on split activations: they draw from the tensor-parallel stream
        (different on every tensor rank); outside it, from the stream all tensor ranks share."""
        return self.rng.fork() if self.rng is not None else contextlib.nullcontext()

    def recompute(self, fn, *args):
        """fn(*args), its activations recomputed in backward, with the same dropout masks in both streams."""
        context_fn = self.rng.recompute_contexts if self.rng is not None else torch.utils.checkpoint.noop_context_fn
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn)


class _InRegion:
    """Attention `fn` called inside `region()` (a context manager factory) when it draws random
    numbers (dropout_p > 0). Without dropout it draws none, so the region is skipped: its generator
    state swap is also what torch.compile cannot trace (it cut every compiled block into four graphs)."""

    def __init__(self, fn, region):
        self.fn, self.region = fn, region

    def __call__(self, *args, dropout_p: float = 0.0, **kwargs):
        with self.region() if dropout_p else contextlib.nullcontext():
            return self.fn(*args, dropout_p=dropout_p, **kwargs)


class _DropoutIn(nn.Dropout):
    """nn.Dropout whose masks come from the random stream `region()` selects."""

    def __init__(self, p: float, region):
        super().__init__(p)
        self.region = region

    def forward(self, x):
        if not self.training or not self.p:  # the identity: nothing drawn, no region (as _InRegion)
            return x
        with self.region():
            return super().forward(x)
