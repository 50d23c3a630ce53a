"""Learning-rate schedule, weight-decay groups, our fp32 optimizer's clipping and on-device skips."""

import math

import pytest
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


def _norm_tracking(max_norm=1.0):
    from gpt.engine.optim import NormTrackingAdamW, global_grad_norm

    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    opt = NormTrackingAdamW(model.parameters(), max_norm=max_norm, lr=0.1,
                            norm_fn=lambda ps: global_grad_norm(ps, tp_rank=0, model_parallel_group=None))
    return model, opt


def test_a_non_finite_gradient_skips_the_step_on_the_device():
    """The skip is decided by the fused AdamW kernel from a device flag (no host read): weights,
    moments and the step count stay those of the last good step; the flag is left for the trainer."""
    model, opt = _norm_tracking()
    model(torch.ones(2, 4)).sum().backward()
    opt.step()
    assert opt.defaults["fused"] and torch.is_tensor(opt.skipped) and not bool(opt.skipped)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    moments = [opt.state[p]["exp_avg"].clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.full_like(p, float("nan"))
    opt.step()
    assert bool(opt.skipped) and torch.isnan(opt._global_grad_norm)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert all(torch.equal(m, opt.state[p]["exp_avg"]) for m, p in zip(moments, model.parameters()))
    assert all(int(opt.state[p]["step"]) == 1 for p in model.parameters())


def test_clipping_to_the_global_norm():
    model, opt = _norm_tracking(max_norm=0.5)
    model(torch.ones(2, 4)).sum().backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters()])
    opt.step()
    assert float(opt._global_grad_norm) == pytest.approx(float(grads.norm()), rel=1e-6)
    clipped = torch.cat([p.grad.flatten() for p in model.parameters()])
    assert float(clipped.norm()) == pytest.approx(0.5, rel=1e-4)
