"""Logit filtering for sampling."""

import torch

from gpt.generation.sampling import filter_logits


def test_top_k_keeps_k_largest():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0]])
    out = filter_logits(logits, 1.0, 2, None)
    assert torch.isfinite(out).tolist() == [[False, True, False, True, False]]


def test_top_p_keeps_smallest_prefix_reaching_p():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    out = filter_logits(probs.log(), 1.0, None, 0.75)
    assert torch.isfinite(out).tolist() == [[True, True, False, False]]  # 0.5 < 0.75 <= 0.8
    out = filter_logits(probs.log(), 1.0, None, 0.5)
    assert torch.isfinite(out).tolist() == [[True, False, False, False]]


def test_temperature_scales():
    logits = torch.tensor([[2.0, 4.0]])
    assert torch.equal(filter_logits(logits, 2.0, None, None), torch.tensor([[1.0, 2.0]]))
