"""Context parallelism: each sequence split over a group of N ranks, attention exact across the split.

Layout (load-balanced causal split, as Megatron-LM and Llama 3): the sequence is cut into 2N chunks of
C = T/(2N) tokens and context rank i holds chunks i and 2N-1-i, so every rank has the same share of
the causal attention work. Everything but attention is per token and needs no communication; the
inputs, labels and loss weights are split the same way (`split_sequence`).

Attention all-gathers the keys and values over the context group (Llama 3's choice: with grouped-
query attention K/V are a fraction of the activations) and computes, for each local chunk j, its
queries against the keys of chunks 0..j with a lower-right causal mask: one exact softmax per chunk,
so no online-softmax merge is needed, and on GPU the mask stays a flash/efficient-kernel bias. The
backward of the gather is a reduce-scatter of the K/V gradients (each rank receives the sum of the
gradients every rank computed for its own chunks). All communication goes through
gpt/parallel/collectives.py.
"""

import torch
import torch.nn.functional as F
import torch.utils.checkpoint

from gpt.parallel import collectives


def chunk_ids(cp_rank: int, cp_size: int) -> tuple[int, int]:
    """The two chunks (of 2*cp_size) context rank `cp_rank` holds, in the order it holds them."""
    return cp_rank, 2 * cp_size - 1 - cp_rank


def local_positions(local_len: int, cp_rank: int, cp_size: int, device=None) -> torch.Tensor:
    """Global positions (local_len,) of the tokens this rank holds."""
    c = local_len // 2
    a, b = chunk_ids(cp_rank, cp_size)
    return torch.cat([torch.arange(a * c, (a + 1) * c, device=device), torch.arange(b * c, (b + 1) * c, device=device)])


def split_sequence(x: torch.Tensor, cp_rank: int, cp_size: int, dim: int = 1) -> torch.Tensor:
    """This rank's two chunks of a full-length tensor (..., T, ...) along `dim`: (..., 2C, ...)."""
    if cp_size == 1:
        return x
    chunks = x.chunk(2 * cp_size, dim=dim)
    a, b = chunk_ids(cp_rank, cp_size)
    return torch.cat([chunks[a], chunks[b]], dim=dim).contiguous()


def _natural_order(cp_size: int) -> list[int]:
    """Chunk k of the sequence sits at index order[k] of the rank-ordered all-gather."""
    where = {}
    for r in range(cp_size):
        a, b = chunk_ids(r, cp_size)
        where[a], where[b] = 2 * r, 2 * r + 1
    return [where[k] for k in range(2 * cp_size)]


class _GatherSequence(torch.autograd.Function):
    """(b, n, 2C, hd) local chunks -> (b, n, T, hd) in sequence order; backward: reduce-scatter."""

    @staticmethod
    def forward(ctx, x, group, cp_size):
        ctx.group, ctx.cp_size = group, cp_size
        gathered = collectives.all_gather(x, group=group, dim=2).chunk(2 * cp_size, dim=2)  # rank order
        return torch.cat([gathered[i] for i in _natural_order(cp_size)], dim=2)

    @staticmethod
    def backward(ctx, grad):
        chunks = grad.chunk(2 * ctx.cp_size, dim=2)  # sequence order
        order = _natural_order(ctx.cp_size)
        by_rank = [None] * len(order)
        for k, i in enumerate(order):
            by_rank[i] = chunks[k]
        return collectives.reduce_scatter(torch.cat(by_rank, dim=2), group=ctx.group, dim=2), None, None


class ContextParallelAttention:
    """The attention core of one rank of a context group: q (b, nh, 2C, hd), k/v (b, nkv, 2C, hd)."""

    def __init__(self, group, cp_rank: int, cp_size: int):
        self.group, self.cp_rank, self.cp_size = group, cp_rank, cp_size

    def positions(self, local_len: int, device=None) -> torch.Tensor:
        return local_positions(local_len, self.cp_rank, self.cp_size, device)

    def __call__(self, q, k, v, *, attn_mask=None, is_causal: bool = True, dropout_p: float = 0.0,
                 enable_gqa: bool = False) -> torch.Tensor:
        """Causal attention of the local queries over the whole sequence (training: no cache, no mask)."""
        if attn_mask is not None or not is_causal:
            raise ValueError("context-parallel attention is causal self-attention over whole sequences (no KV cache)")
        # Recomputed in backward (the gather included) rather than kept: only the local q, k, v are
        # saved, not the whole sequence's keys and values of every layer.
        return torch.utils.checkpoint.checkpoint(self._attend, q, k, v, dropout_p, enable_gqa, use_reentrant=False)

    def _attend(self, q, k, v, dropout_p: float, enable_gqa: bool) -> torch.Tensor:
        from torch.nn.attention.bias import causal_lower_right  # here: the module imports torch._dynamo (1.6 s)

        k_all = _GatherSequence.apply(k, self.group, self.cp_size)  # (b, nkv, T, hd)
        v_all = _GatherSequence.apply(v, self.group, self.cp_size)
        c = q.shape[2] // 2
        out = []
        for j, chunk in zip(chunk_ids(self.cp_rank, self.cp_size), q.split(c, dim=2)):
            end = (j + 1) * c  # chunk j sees the keys of chunks 0..j; causal inside chunk j
            out.append(F.scaled_dot_product_attention(chunk, k_all[:, :, :end], v_all[:, :, :end],
                                                      attn_mask=causal_lower_right(c, end), dropout_p=dropout_p,
                                                      enable_gqa=enable_gqa))
        return torch.cat(out, dim=2)  # (b, nh, 2C, hd)
