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
