"""Sequence parallelism (Megatron-LM's, Korthikanti et al. 2022) on top of megatron-core's layers.

With parallel.sequence_parallel=true the residual stream, the norms and the dropouts hold 1/tensor of
the sequence on each tensor rank, (b, t/p, h) instead of (b, t, h). The tensor-parallel region is
entered by an all-gather of the sequence before each column-parallel linear and left by a
reduce-scatter after each row-parallel one (instead of the all-reduce), so the communication volume
is that of plain tensor parallelism while activations outside attention/MLP shrink p times.

megatron-core's own sequence-parallel path is sequence-first ([s, b, h]) and calls torch.cuda; this
one is batch-first like the rest of the model and communicates through gpt/parallel/collectives.py
(gloo on CPU, NCCL on GPU). The layers subclass megatron's Column/RowParallelLinear, so parameter
names, shapes, tensor-parallel attributes and init are the same as without sequence parallelism and
checkpoints do not see the difference.

Parameters replicated over the tensor group but applied to a rank's own part of the sequence (norm
gains and biases, row-parallel biases) get a gradient from that part only; `sync_grad` all-reduces it
over the tensor group inside autograd (as Megatron's allreduce of layernorm grads does after
backward), so every rank holds the whole gradient before DeepSpeed's hooks see it.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.model.tp_layers import ParallelColumn, ParallelRow
from gpt.parallel import collectives

SEQ = 1  # the sequence dimension of (b, t, h)


class _Gather(torch.autograd.Function):
    """(b, t/p, h) -> (b, t, h); backward: reduce-scatter (sums the partial input gradients)."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return collectives.all_gather(x, group=group, dim=SEQ)

    @staticmethod
    def backward(ctx, grad):
        return collectives.reduce_scatter(grad.contiguous(), group=ctx.group, dim=SEQ), None


class _ReduceScatter(torch.autograd.Function):
    """(b, t, h) partial sums -> (b, t/p, h) sums of this rank's part; backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return collectives.reduce_scatter(x.contiguous(), group=group, dim=SEQ)

    @staticmethod
    def backward(ctx, grad):
        return collectives.all_gather(grad.contiguous(), group=ctx.group, dim=SEQ), None


class _Scatter(torch.autograd.Function):
    """(b, t, h) replicated -> this rank's (b, t/p, h); backward: all-gather."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        n, r = collectives.world_size(group), collectives.rank(group)
        return x.chunk(n, dim=SEQ)[r].contiguous()

    @staticmethod
    def backward(ctx, grad):
        return collectives.all_gather(grad.contiguous(), group=ctx.group, dim=SEQ), None


class _SyncGrad(torch.autograd.Function):
    """Identity forward; backward all-reduces the gradient over the tensor group."""

    @staticmethod
    def forward(ctx, p, group):
        ctx.group = group
        return p.view_as(p)

    @staticmethod
    def backward(ctx, grad):
        return collectives.all_reduce(grad.contiguous(), group=ctx.group), None


def gather_sequence(x, group):
    """(b, t/p, h) -> (b, t, h) over the tensor group; backward: reduce-scatter."""
    return _Gather.apply(x, group)


def sync_grad(p, group):
    return None if p is None else _SyncGrad.apply(p, group)


class SequenceScatter(nn.Module):
    """Where the residual stream starts: keep this rank's part of the sequence."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, x):
        return _Scatter.apply(x, self.group)


class _GatherLinear(torch.autograd.Function):
    """y = all-gather_seq(x) W^T (+ b), keeping only this rank's x for backward (Megatron's trick:
    the gathered input is all-gathered again in backward rather than kept, or sequence parallelism
    would save the whole sequence's input of every column-parallel linear)."""

    @staticmethod
    def forward(ctx, x, weight, bias, group):
        ctx.group, ctx.has_bias = group, bias is not None
        ctx.save_for_backward(x, weight)
        return F.linear(collectives.all_gather(x, group=group, dim=SEQ), weight, bias)

    @staticmethod
    def backward(ctx, grad):  # grad: (b, t, n_out/p)
        x, weight = ctx.saved_tensors
        full = collectives.all_gather(x, group=ctx.group, dim=SEQ)  # (b, t, n_in)
        grad_x = collectives.reduce_scatter((grad @ weight).contiguous(), group=ctx.group, dim=SEQ)
        grad_w = grad.reshape(-1, grad.shape[-1]).t() @ full.reshape(-1, full.shape[-1])
        grad_b = grad.reshape(-1, grad.shape[-1]).sum(0) if ctx.has_bias else None
        return grad_x, grad_w, grad_b, None


class SequenceParallelColumn(ParallelColumn):
    """y[b, t, n_out/p] = all-gather_seq(x[b, t/p, n_in]) W_p^T (+ b_p)."""

    def forward(self, input_, weight=None, runtime_gather_output=None):
        weight = self.weight if weight is None else weight
        return _GatherLinear.apply(input_, weight, self.bias, self.tp_group), None


class SequenceParallelRow(ParallelRow):
    """y[b, t/p, n_out] = reduce-scatter_seq(x[b, t, n_in/p] W_p^T) (+ b)."""

    def forward(self, input_):
        y = _ReduceScatter.apply(F.linear(input_, self.weight), self.tp_group)
        return (y + sync_grad(self.bias, self.tp_group) if self.bias is not None else y), None


class SequenceParallelLayerNorm(nn.LayerNorm):
    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    def forward(self, x):
        return F.layer_norm(x, self.normalized_shape, sync_grad(self.weight, self.group),
                            sync_grad(self.bias, self.group), self.eps)


class SequenceParallelRMSNorm(nn.RMSNorm):
    def __init__(self, *args, group=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.group = group

    def forward(self, x):
        return F.rms_norm(x, self.normalized_shape, sync_grad(self.weight, self.group), self.eps)
