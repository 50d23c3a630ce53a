"""Autoregressive sampling with temperature, top-k and top-p, over a KV cache."""

from typing import Iterator

import torch

from gpt.model.gpt import GPT
from gpt.model.kv_cache import new_caches


def filter_logits(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """(b, v) logits -> logits with excluded tokens at -inf, scaled by 1/temperature."""
    logits = logits / temperature
    if top_k is not None and top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and 0.0 < top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cum = sorted_logits.softmax(-1).cumsum(-1)
        drop = cum - sorted_logits.softmax(-1) >= top_p  # keep the smallest prefix reaching top_p
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def penalize_repeats(logits: torch.Tensor, seen: torch.Tensor, penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (as in Hugging Face): seen tokens' logits divided (if > 0) or multiplied by it."""
    if penalty == 1.0:
        return logits
    picked = logits.gather(-1, seen)
    return logits.scatter(-1, seen, torch.where(picked > 0, picked / penalty, picked * penalty))


@torch.no_grad()
def generate(model: GPT, prompt: torch.Tensor, *, max_new_tokens: int, vocab_size: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             stop_ids: tuple[int, ...] = (), use_cache: bool = True, repetition_penalty: float = 1.0,
             window: int | None = None) -> Iterator[int]:
    """Yield new token ids one by one for a (1, t) prompt; stops at any of `stop_ids` (not yielded).

    The model sees at most `window` tokens (default model.max_seq_len; pass the training sequence
    length: learned positions beyond it were never trained). With the cache, a full window is
    re-encoded from its last `window` tokens, so cached and uncached decoding give the same tokens.
    """
    window = min(window or model.cfg.max_seq_len, model.cfg.max_seq_len)
    caches = new_caches(model.cfg.n_layer, window) if use_cache else None
    seq = prompt
    pending = prompt[:, -window:]  # tokens not yet in the cache
    for _ in range(max_new_tokens):
        if caches is None:
            logits = model(seq[:, -window:])
        else:
            if caches[0].length + pending.shape[1] > window:
                caches = new_caches(model.cfg.n_layer, window)
                pending = seq[:, -window:]
            logits = model(pending, caches)
        logits = logits[:, -1, :].float()
        logits[:, vocab_size:] = float("-inf")  # padding rows of the embedding table
        logits = penalize_repeats(logits, seq, repetition_penalty)
        if temperature == 0:
            nxt = logits.argmax(-1, keepdim=True)
        else:
            probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
        token = int(nxt)
        if token in stop_ids:
            return
        yield token
        seq = torch.cat([seq, nxt], dim=1)
        pending = nxt
