"""LoRA (Hu et al. 2021) on megatron-core's tensor-parallel linears, sharded like the base weight.

    y = W x + b + (alpha / r) * B A dropout(x)          W: (out, in), A: (r, in), B: (out, r)

Under tensor parallelism the factors split the way W does, so every layout computes the one-process
model exactly (up to summation order):

- column-parallel W_p (out/p, in), replicated input x:
  A is a plain Linear (r, in), identical on every tensor rank; B is a ColumnParallelLinear (r -> out),
  rows split like W. B's backward all-reduces its input gradient, so A's gradient is complete (and
  the same) on every rank. Merge: W_p += s * B_p @ A.
- row-parallel W_p (out, in/p), input split x_p:
  A is a RowParallelLinear (in -> r, input_is_parallel), columns split like W, output all-reduced;
  B is a plain Linear (out, r), replicated. Merge: W_p += s * B @ A_p.

In both cases `B.weight @ A.weight` is this rank's slice of the full update, so merging is the same
line for both. B starts at zero (step 0 is the base model). A is drawn from a generator seeded by
(seed, the layer's canonical name) as the full matrix, then sliced (megatron's CPU init does the
slicing), so every layout starts from the same factors.
"""

import contextlib
import math
import zlib

import torch
import torch.nn as nn


def name_seed(seed: int, name: str) -> int:
    """A seed for one layer: stable across processes and Python runs (unlike hash())."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**63


def kaiming_uniform(seed: int, name: str):
    """The init of peft's lora_A (kaiming_uniform_, a=sqrt(5): U(-1/sqrt(in), 1/sqrt(in))), seeded by name."""
    generator = torch.Generator().manual_seed(name_seed(seed, name))

    def init_(w: torch.Tensor) -> torch.Tensor:
        bound = 1.0 / math.sqrt(w.shape[1])
        with torch.no_grad():
            return w.uniform_(-bound, bound, generator=generator)

    return init_


def zeros(w: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return w.zero_()


class Wrapped(nn.Module):
    """Base class of wrappers around one megatron linear that keep its parameters' names.

    The base layer's `weight` and `bias` are registered on the wrapper itself (the very same
    Parameter objects), so `blocks.0.attn.qkv.weight` stays the name of the base weight. The base
    module is held outside the module tree and only called; `_base()` re-points it at our
    parameters in case anything (`.to()`, a load with assign=True) replaced them.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.weight = base.weight
        self.bias = base.bias
        self._wrapped = (base,)  # a tuple: not a submodule, so its parameters are not registered twice

    def _base(self) -> nn.Module:
        base = self._wrapped[0]
        if base.weight is not self.weight:
            base.weight = self.weight
        if base.bias is not self.bias:
            base.bias = self.bias
        return base

    def unwrap(self) -> nn.Module:
        """The base layer, holding the current parameters (for merging)."""
        return self._base()


class LoRA(Wrapped):
    """A column- or row-parallel linear plus its low-rank update; forward returns (output, bias) like megatron."""

    def __init__(self, base: nn.Module, *, kind: str, rank: int, alpha: float, dropout: float, slots, seed: int,
                 name: str):
        super().__init__(base)
        n_in, n_out = base.input_size, base.output_size
        self.kind, self.scale = kind, alpha / rank
        if kind == "column":
            self.lora_A = nn.Linear(n_in, rank, bias=False)
            kaiming_uniform(seed, name)(self.lora_A.weight)
            self.lora_B = slots.column(rank, n_out, bias=False, init=zeros)
        else:
            self.lora_A = slots.row(n_in, rank, bias=False, init=kaiming_uniform(seed, name))
            self.lora_B = nn.Linear(rank, n_out, bias=False)
            zeros(self.lora_B.weight)
        self.drop = nn.Dropout(dropout)
        # A row-parallel input is split: its dropout masks differ per tensor rank (Megatron's rule).
        self.dropout_rng = slots.tensor_parallel_region if kind == "row" else contextlib.nullcontext

    def _a(self, x):
        a = self.lora_A(x)
        return a[0] if isinstance(a, tuple) else a  # (b, t, r)

    def _b(self, a):
        y = self.lora_B(a)
        return y[0] if isinstance(y, tuple) else y  # (b, t, out/p) column, (b, t, out) row

    def forward(self, x: torch.Tensor, *args, **kwargs):
        y, bias = self._base()(x, *args, **kwargs)
        with self.dropout_rng():
            x = self.drop(x)
        return y + self.scale * self._b(self._a(x)), bias

    def delta(self) -> torch.Tensor:
        """This rank's slice of s * B @ A, the shape of the base weight's slice."""
        return self.scale * (self.lora_B.weight.float() @ self.lora_A.weight.float())
