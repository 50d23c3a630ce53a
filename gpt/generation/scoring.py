"""Validation loss of a one-process model over a split of token shards (gpt-eval)."""

import math

import torch


@torch.no_grad()
def mean_loss(model, loader, *, batches: int, device) -> dict:
    """Token-weighted mean cross-entropy over `batches` global batches of `loader` (one rank)."""
    total, weight = 0.0, 0.0
    gbs = loader.global_batch_size
    for k in range(batches):
        for b in loader.global_batch(k * gbs):
            b = b.to(device)
            mask = (b.weights > 0).float()  # the loader's weights normalise per step; here every token counts once
            total += float(model(b.tokens, labels=b.labels, weights=mask))  # fused head + loss
            weight += float(mask.sum())
    loss = total / weight
    return {"loss": loss, "ppl": math.exp(min(loss, 50.0)), "tokens": int(weight)}


@torch.no_grad()
def target_logprobs(logits: torch.Tensor, targets: torch.Tensor, *, vocab_size: int, tp_rank: int = 0,
                    tp_group=None) -> tuple[torch.Tensor, torch.Tensor]:
    """log p(target) and whether the target is the argmax, per position, over the true vocabulary.

    logits: (b, t, v_local) this tensor rank's slice of the (padded) vocabulary, rows
    [tp_rank * v_local, (tp_rank + 1) * v_local); targets: (b, t) global ids. Padding rows
    (ids >= vocab_size) take no probability mass. With a tensor-parallel group the softmax is
    computed across the slices (three small all-reduces); the full logits are never gathered.
    Returns (logprob (b, t) fp32, greedy (b, t) bool).
    """
    from gpt.parallel import collectives

    local = logits.float()
    v_local = local.shape[-1]
    start = tp_rank * v_local
    ids = torch.arange(start, start + v_local, device=local.device)
    local = local.masked_fill(ids >= vocab_size, float("-inf"))  # padding rows of the table
    top = local.max(dim=-1).values  # (b, t)
    collectives.all_reduce(top, op="max", group=tp_group)
    sumexp = torch.exp(local - top.unsqueeze(-1)).sum(dim=-1)
    collectives.all_reduce(sumexp, group=tp_group)
    mine = (targets >= start) & (targets < start + v_local)
    picked = local.gather(-1, (targets - start).clamp(0, v_local - 1).unsqueeze(-1)).squeeze(-1)
    target_logit = torch.where(mine, picked, torch.zeros_like(picked))
    collectives.all_reduce(target_logit, group=tp_group)
    return target_logit - top - torch.log(sumexp), target_logit >= top


@torch.no_grad()
def full_vocab_logits(logits: torch.Tensor, *, vocab_size: int, tp_group=None) -> torch.Tensor:
    """(b, v_local) slices of one position's logits -> (b, vocab_size) fp32 on every tensor rank (padding cut)."""
    from gpt.parallel import collectives

    return collectives.all_gather(logits.float().contiguous(), group=tp_group, dim=-1)[:, :vocab_size]
