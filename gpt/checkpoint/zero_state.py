"""Reading and writing a parameter's full fp32 value and Adam moments, whatever ZeRO stage holds them.

DeepSpeed's tensor-fragment API (`safe_get/set_full_*`) covers ZeRO 1-3 and the bf16 optimizer; with
ZeRO 0 in fp32 the client AdamW holds the state directly. "Full" means the whole tensor-parallel
slice this rank owns, gathered over the data-parallel group (a collective: every rank calls these
for the same parameters in the same order).
"""

import torch


def _managed(p) -> bool:
    return hasattr(p, "ds_id") or hasattr(p, "_hp_mapping")


def get_param(p) -> torch.Tensor:
    if hasattr(p, "ds_id") and not p.requires_grad:  # frozen under ZeRO 3: still partitioned
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            return p.data.detach().float().cpu().clone()
    if _managed(p) and p.requires_grad:
        from deepspeed.utils import safe_get_full_fp32_param

        return safe_get_full_fp32_param(p).detach().float().cpu()
    return p.detach().float().cpu()


def get_moment(optimizer, p, key: str) -> torch.Tensor | None:
    if _managed(p):
        from deepspeed.utils import safe_get_full_optimizer_state

        value = safe_get_full_optimizer_state(p, key)
    else:
        value = optimizer.state.get(p, {}).get(key)
    return None if value is None else value.detach().float().cpu().reshape(p.ds_shape if hasattr(p, "ds_id") else p.shape)


def set_param(p, value: torch.Tensor) -> None:
    if hasattr(p, "ds_id") and not p.requires_grad:
        import deepspeed

        with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
            p.data.copy_(value.to(p.device, p.dtype))
        return
    if _managed(p):
        from deepspeed.utils import safe_set_full_fp32_param

        safe_set_full_fp32_param(p, value.to(_hp_device(p)))
    if not hasattr(p, "ds_id"):  # ZeRO 3's own slice is refreshed by sync_low_precision()
        with torch.no_grad():
            p.data.copy_(value.to(p.device, p.dtype))


def set_moment(optimizer, p, key: str, value: torch.Tensor) -> None:
    if _managed(p):
        from deepspeed.utils import safe_set_full_optimizer_state

        safe_set_full_optimizer_state(p, value.to(_hp_device(p)), key)
    else:
        optimizer.state[p][key].copy_(value.to(p.device))


def _hp_device(p) -> torch.device:
    return p.ds_tensor.device if hasattr(p, "ds_id") else p.device


def base_optimizer(optimizer) -> torch.optim.Optimizer:
    """The torch optimizer inside DeepSpeed's wrappers (it owns 'step' and the moments)."""
    while not isinstance(optimizer, torch.optim.Optimizer) and hasattr(optimizer, "optimizer"):
        optimizer = optimizer.optimizer
    return optimizer


def optimizer_steps(optimizer) -> int:
    for state in base_optimizer(optimizer).state.values():
        if "step" in state:
            return int(state["step"])
    return 0


def set_optimizer_steps(optimizer, steps: int) -> None:
    for state in base_optimizer(optimizer).state.values():
        if "step" in state:
            if torch.is_tensor(state["step"]):
                state["step"].fill_(steps)
            else:
                state["step"] = steps


def link_optimizer_state(optimizer) -> None:
    """Make every parameter's Adam-state fragment reachable through the tensor-fragment API.

    DeepSpeed 0.19's ZeRO-1/2 links the state to parameters right after stepping its *first* param
    group and never again, so parameters of later groups (our no-weight-decay group) have none and
    `safe_get_full_optimizer_state` fails for them. Linking again after a full step fixes that.
    """
    if hasattr(optimizer, "_hp_optimizer_states_linked") and hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def sync_low_precision(optimizer) -> None:
    """Copy the fp32 master weights we just set into the weights forward() uses (a collective).

    ZeRO 3 as its own step() does: release every gathered parameter, refresh each sub-group's
    partitions from the fp32 ones, then re-gather the small "persistent" parameters it keeps whole
    on every rank (below stage3_param_persistence_threshold; all_gather skips parameters that are
    still available, so without the release they would keep their old values), then drop cached
    secondary copies.
    """
    if hasattr(optimizer, "update_lp_params"):  # ZeRO 1/2 and the bf16 optimizer
        optimizer.update_lp_params()
    elif hasattr(optimizer, "fp32_partitioned_groups_flat"):  # ZeRO 3
        optimizer._partition_all_parameters()
        for i in range(len(optimizer.fp32_partitioned_groups_flat)):
            optimizer._reassign_or_swap_out_partitioned_parameters(i)
        if optimizer.persistent_parameters:
            optimizer.persistent_parameters[0].all_gather(optimizer.persistent_parameters)
        optimizer.invalidate_secondary_tensor()
