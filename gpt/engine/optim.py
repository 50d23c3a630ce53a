"""AdamW with decoupled weight decay on matrices only, and the learning-rate schedule.

The schedule is a pure function of the step, set on the optimizer before every step: nothing to
save, and a resumed run continues it exactly.
"""

import math

import torch

from gpt.config.training import OptimConfig
from gpt.parallel import collectives


def lr_at(step: int, cfg: OptimConfig, total_steps: int) -> float:
    """Learning rate of optimizer step `step` (counted from 1): linear warmup, cosine to min_lr, then flat."""
    if cfg.warmup_steps and step <= cfg.warmup_steps:
        return cfg.lr * step / cfg.warmup_steps
    decay_steps = cfg.decay_steps or total_steps
    if step >= decay_steps:
        return cfg.min_lr
    progress = (step - cfg.warmup_steps) / max(1, decay_steps - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (cfg.lr - cfg.min_lr)


def param_groups(named_params, weight_decay: float) -> list[dict]:
    """Decay matrices and embeddings (dim >= 2); not biases and norm gains. Frozen params are left out.

    A parameter built under deepspeed.zero.Init is already partitioned (an empty 1-D `data`): its
    real shape is `ds_shape`."""
    decay, no_decay = [], []
    for _, p in named_params:
        if p.requires_grad:
            (decay if len(getattr(p, "ds_shape", p.shape)) >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return [g for g in groups if g["params"]]


def global_grad_norm(params, tp_rank: int, model_parallel_group) -> torch.Tensor:
    """L2 norm of the whole model's gradient, as one process would compute it.

    Tensor-parallel shards all count; parameters replicated over the tensor group count on tensor
    rank 0 only; a pipeline's second copy of tied embeddings (`ds_pipe_replicated`) not at all. The
    squares are summed over the tensor x pipeline group. (DeepSpeed's clip_grad_norm_ gets the
    replicated parameters of later pipeline stages wrong, hence our own.)
    """
    grads = [p.grad.detach() for p in params if p.grad is not None and not getattr(p, "ds_pipe_replicated", False)
             and (tp_rank == 0 or getattr(p, "tensor_model_parallel", False))]
    if grads:  # one foreach kernel per device and dtype, accumulated in fp32
        sq = torch.nn.utils.get_total_norm(grads, 2.0).float().pow(2)
    else:
        sq = torch.zeros((), dtype=torch.float32)
    if model_parallel_group is not None:
        collectives.all_reduce(sq, group=model_parallel_group)  # sq may be a CPU zero on a rank with no gradients
    return sq.sqrt()


class NormTrackingAdamW(torch.optim.AdamW):
    """AdamW that measures (and clips to) the global gradient norm before stepping, all on the device.

    Used only where DeepSpeed hands the step to the plain client optimizer (ZeRO 0 in fp32, and
    bf16 as autocast over fp32 weights): there DeepSpeed neither reports the norm nor clips in a
    pipeline-aware way. DeepSpeed reads `_global_grad_norm` after `step()`. A non-finite norm (a
    NaN/inf loss, or gradients that overflowed) skips the update, as DeepSpeed's ZeRO and bf16
    optimizers do, so the weights, Adam moments and step count stay those of the last good step;
    the decision never leaves the device: the fused AdamW kernel takes it as `found_inf` (the way
    torch's GradScaler skips steps), and `skipped` holds it for the trainer to read later. The
    norm is reduced over every rank that holds a part of the model, so all ranks skip together.
    """

    def __init__(self, params, *, max_norm: float, norm_fn, **kwargs):
        super().__init__(params, **dict(kwargs, fused=True))  # found_inf needs the fused kernel
        self.max_norm = max_norm
        self.norm_fn = norm_fn
        self._global_grad_norm = None
        self.skipped = None  # () bool tensor after a step: the update was not applied

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        norm = self.norm_fn(params)
        self._global_grad_norm = norm
        self.skipped = ~torch.isfinite(norm)
        self.found_inf = self.skipped.float()  # read by torch.optim.AdamW.step (fused): 1.0 skips the update
        if self.max_norm > 0:
            torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], self.max_norm, norm)
        return super().step(closure)


def build_optimizer(named_params, cfg: OptimConfig, *, plain_fp32: bool, norm_fn):
    """The client optimizer handed to DeepSpeed (lr starts at 0: the schedule sets it every step).

    Always torch's fused AdamW (one kernel over all tensors, on CPU and CUDA alike)."""
    groups = param_groups(named_params, cfg.weight_decay)
    kwargs = dict(lr=0.0, betas=(cfg.beta1, cfg.beta2), eps=cfg.eps, fused=True)
    if plain_fp32:
        return NormTrackingAdamW(groups, max_norm=cfg.grad_clip, norm_fn=norm_fn, **kwargs)
    return torch.optim.AdamW(groups, **kwargs)


def set_lr(optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr
