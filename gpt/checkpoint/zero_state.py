"""This rank's share of a parameter's training state, whatever ZeRO stage holds it.

Every parameter is one tensor-parallel slice per tensor rank; its fp32 value and Adam moments live
in one of three ways, and `held(p)` says which flat elements [start, start + numel) of the slice
(row-major) this rank holds:

- ZeRO-3 (`p.ds_id`): each data rank holds a 1/dp partition of the slice: DeepSpeed's public
  local API (`safe_get/set_local_fp32_param`, `..._optimizer_state`); frozen parameters have no
  fp32 copy, their partition is `p.ds_tensor`.
- ZeRO-1/2 and DeepSpeed's bf16 optimizer (`p._hp_mapping`): the fp32 masters and moments are
  one flat buffer per parameter group, cut into 1/dp partitions; a parameter's fragment in this
  rank's partition is `p._hp_mapping` (the tensor-fragment map DeepSpeed's own universal
  checkpoints use), None where this rank holds none of it.
- otherwise (plain fp32 without ZeRO, frozen parameters outside ZeRO-3): every data rank holds the
  whole slice (`p` itself, the plain AdamW's state).

Nothing here communicates: a rank reads and writes only what it holds. `sync_low_precision` (a
collective) then refreshes the weights forward() uses from the fp32 values after loading.
"""

from dataclasses import dataclass

import torch

from gpt.parallel import collectives


@dataclass(frozen=True)
class Held:
    """Flat elements [start, start + numel) of one tensor-parallel slice; `replica`: every data rank
    holds the same elements (so a checkpoint needs them from one data rank only)."""

    start: int
    numel: int
    replica: bool = False


def _zero3(p) -> bool:
    return hasattr(p, "ds_id")


def _fragment(p) -> bool:
    return hasattr(p, "_hp_mapping") and not _zero3(p)


def held(p) -> Held | None:
    """What of `p`'s fp32 state this rank holds (None: nothing)."""
    n = p.ds_numel if _zero3(p) else p.numel()
    if _zero3(p):
        size = p.ds_tensor.ds_numel  # partition size, the last one padded
        start = size * collectives.rank(p.ds_process_group)
        return Held(start, min(size, n - start)) if start < n else None
    if _fragment(p):
        mapping = p._hp_mapping
        if mapping is None:
            return None
        address = mapping.lp_fragment_address
        return Held(address.start, address.numel)
    return Held(0, n, replica=True)


def _zero3_local(p, key: str | None) -> torch.Tensor:
    from deepspeed.utils import safe_get_local_fp32_param, safe_get_local_optimizer_state

    if not p.requires_grad:
        return p.ds_tensor.data.view(-1)
    return safe_get_local_fp32_param(p) if key is None else safe_get_local_optimizer_state(p, key)


def weight(p) -> torch.Tensor:
    """The fp32 value of the held elements (1-D; a view of the live state where there is one)."""
    h = held(p)
    if _zero3(p):
        return _zero3_local(p, None).view(-1)[:h.numel]
    if _fragment(p):
        return p._hp_mapping.get_hp_fragment().view(-1)
    return p.detach().reshape(-1)


def moment(optimizer, p, key: str) -> torch.Tensor | None:
    """Adam's `key` ("exp_avg", "exp_avg_sq") for the held elements (1-D), None where there is none."""
    if not p.requires_grad:
        return None
    h = held(p)
    if _zero3(p):
        return _zero3_local(p, key).view(-1)[:h.numel]
    if _fragment(p):
        fragments = p._hp_mapping.optim_fragment or {}
        return fragments[key].view(-1) if key in fragments else None
    value = optimizer.state.get(p, {}).get(key)
    return None if value is None else value.detach().reshape(-1)


def set_weight(p, value: torch.Tensor) -> None:
    """Set the held elements' fp32 value (and, outside ZeRO, the weight itself) from `value` (1-D)."""
    if _zero3(p):
        _set_zero3(p, None, value)
    elif _fragment(p):
        p._hp_mapping.get_hp_fragment().data.copy_(value.to(_hp_device(p)).view_as(p._hp_mapping.get_hp_fragment()))
    else:
        with torch.no_grad():
            p.data.copy_(value.to(p.device, p.dtype).view_as(p))


def set_moment(optimizer, p, key: str, value: torch.Tensor) -> None:
    if _zero3(p):
        _set_zero3(p, key, value)
    elif _fragment(p):
        fragment = p._hp_mapping.get_optim_state_fragment(key)
        fragment.data.copy_(value.to(fragment.device).view_as(fragment))
    else:
        state = optimizer.state[p][key]
        state.copy_(value.to(state.device).view_as(state))


def _set_zero3(p, key: str | None, value: torch.Tensor) -> None:
    if not p.requires_grad:  # frozen: only this partition of the low-precision weight exists
        local = p.ds_tensor.data.view(-1)
        local[:value.numel()].copy_(value.to(local.device, local.dtype))
        return
    from deepspeed.utils import safe_set_local_fp32_param, safe_set_local_optimizer_state

    padded = _zero3_local(p, key).detach().clone().view(-1)  # the partition, padding included
    padded[:value.numel()].copy_(value.to(padded.device))
    if key is None:
        safe_set_local_fp32_param(p, padded)
    else:
        safe_set_local_optimizer_state(p, padded, key)


def _hp_device(p) -> torch.device:
    return p._hp_mapping.get_hp_fragment().device


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


# The dynamic loss scaler's state (fp16): the scale and the counters that decide when it moves.
LOSS_SCALER_FIELDS = ("cur_scale", "cur_iter", "last_overflow_iter", "cur_hysteresis")


def loss_scaler_state(optimizer) -> dict | None:
    """fp16's dynamic loss scale and its hysteresis counters (None: no dynamic scaler, e.g. fp32/bf16)."""
    scaler = getattr(optimizer, "loss_scaler", None)
    if scaler is None or not getattr(scaler, "dynamic", False):
        return None
    return {k: _plain(getattr(scaler, k)) for k in LOSS_SCALER_FIELDS if hasattr(scaler, k)}


def set_loss_scaler_state(optimizer, state: dict | None) -> bool:
    """Restore what `loss_scaler_state` saved; False where this run has no dynamic scaler to take it."""
    scaler = getattr(optimizer, "loss_scaler", None)
    if not state or scaler is None or not getattr(scaler, "dynamic", False):
        return False
    for k, v in state.items():
        if k in LOSS_SCALER_FIELDS:
            setattr(scaler, k, v)
    return True


def _plain(value):
    return value.item() if torch.is_tensor(value) else value


def link_optimizer_state(optimizer) -> None:
    """Make every parameter's Adam-state fragment reachable through the tensor-fragment map.

    DeepSpeed 0.19's ZeRO-1/2 links the state to parameters right after stepping its *first* param
    group and never again, so parameters of later groups (our no-weight-decay group) have none.
    Linking again after a full step fixes that.
    """
    if hasattr(optimizer, "_hp_optimizer_states_linked") and hasattr(optimizer, "_lazy_init_hp_params_optimizer_state"):
        optimizer._hp_optimizer_states_linked = False
        optimizer._lazy_init_hp_params_optimizer_state()


def sync_low_precision(optimizer) -> None:
    """Copy the fp32 master weights we just set into the weights forward() uses (a collective).

    ZeRO 1/2 and the bf16 optimizer: each rank copies its partition, then they all-gather. ZeRO 3
    as its own step() does: release every gathered parameter, refresh each sub-group's partitions
    from the fp32 ones, then re-gather the small "persistent" parameters it keeps whole on every
    rank (below stage3_param_persistence_threshold; all_gather skips parameters that are still
    available, so without the release they would keep their old values), then drop cached
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
