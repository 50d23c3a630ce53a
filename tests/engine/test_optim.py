"""Learning-rate schedule and weight-decay groups."""

import math

import torch

from gpt.config.training import OptimConfig
from gpt.engine.optim import lr_at, param_groups


def test_warmup_then_cosine_to_floor():
    cfg = OptimConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10)
    assert lr_at(1, cfg, 100) == 1e-4
    assert lr_at(10, cfg, 100) == 1e-3
    assert math.isclose(lr_at(55, cfg, 100), 1e-4 + 0.5 * (1e-3 - 1e-4))
    assert lr_at(100, cfg, 100) == 1e-4 and lr_at(150, cfg, 100) == 1e-4
    lrs = [lr_at(s, cfg, 100) for s in range(10, 101)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


def test_decay_steps_fix_the_schedule_independent_of_train_steps():
    cfg = OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=0, decay_steps=50)
    assert lr_at(25, cfg, 10) == lr_at(25, cfg, 1000)


def test_no_decay_on_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4))
    model[1].weight.requires_grad_(False)
    groups = param_groups(model.named_parameters(), 0.1)
    decay, no_decay = groups
    assert decay["weight_decay"] == 0.1 and [p.shape for p in decay["params"]] == [(4, 4)]
    assert no_decay["weight_decay"] == 0.0 and len(no_decay["params"]) == 2  # linear bias, norm bias (weight frozen)
