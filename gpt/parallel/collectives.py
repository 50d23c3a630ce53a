"""Every collective of gpt/ goes through here, and here each tensor is put on the rank's device.

NCCL accepts only tensors on the rank's own CUDA device; gloo accepts CPU tensors. Code that builds a
small CPU tensor (a count, a flag, a norm on a rank with no gradients) and all-reduces it works on CPU
and dies on the first multi-GPU launch. These wrappers copy such a tensor to the device the group's
backend runs on (the current CUDA device under NCCL, the CPU under gloo), run the collective there,
and copy the result back into the caller's tensor, so callers never need to know the backend.

Groups of one rank return at once (no communication, no copies). DeepSpeed's and megatron-core's own
collectives stay inside those libraries; everything our code calls is here (tests/parallel/
test_collectives.py checks that no other module of gpt/ calls torch.distributed's collectives, and the
multi-process tests reject, at run time, a collective of ours that does not come through this module).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

_OPS = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size(group=None) -> int:
    return dist.get_world_size(group) if initialized() else 1


def rank(group=None) -> int:
    return dist.get_rank(group) if initialized() else 0


def device(group=None) -> torch.device:
    """The device collectives of `group` run on: the current CUDA device under NCCL, else the CPU."""
    if initialized() and dist.get_backend(group) == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _on(tensor: torch.Tensor, dev: torch.device) -> torch.Tensor:
    return tensor if tensor.device == dev else tensor.to(dev)


def all_reduce(tensor: torch.Tensor, op: str = "sum", group=None) -> torch.Tensor:
    """Reduce `tensor` over `group` in place (sum | max | min), wherever it lives; returns it."""
    if world_size(group) == 1:
        return tensor
    work = _on(tensor, device(group))
    dist.all_reduce(work, op=_OPS[op], group=group)
    if work is not tensor:
        with torch.no_grad():
            tensor.copy_(work)
    return tensor


def all_gather(tensor: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    """Concatenate every rank's `tensor` (same shape everywhere) along `dim`, on `tensor`'s device."""
    n = world_size(group)
    if n == 1:
        return tensor
    work = _on(tensor.contiguous(), device(group))
    parts = [torch.empty_like(work) for _ in range(n)]
    dist.all_gather(parts, work, group=group)  # the list form: gloo has no all_gather_into_tensor
    return torch.cat(parts, dim=dim).to(tensor.device)


def reduce_scatter(tensor: torch.Tensor, group=None, dim: int = 0) -> torch.Tensor:
    """Sum `tensor` over `group` and return this rank's 1/n slice along `dim` (on `tensor`'s device).

    NCCL has reduce_scatter; gloo does not, so there it is an all-reduce followed by a slice (same
    result, n times the traffic: CPU runs are for correctness, not speed).
    """
    n = world_size(group)
    if n == 1:
        return tensor
    if tensor.shape[dim] % n:
        raise ValueError(f"reduce_scatter: size {tensor.shape[dim]} of dim {dim} is not divisible by {n} ranks")
    dev = device(group)
    if dist.get_backend(group) == "nccl":
        chunks = [c.contiguous() for c in _on(tensor, dev).chunk(n, dim=dim)]
        out = torch.empty_like(chunks[0])
        dist.reduce_scatter(out, chunks, group=group)
        return out.to(tensor.device)
    work = _on(tensor.contiguous(), dev).clone()
    dist.all_reduce(work, group=group)
    return work.chunk(n, dim=dim)[rank(group)].contiguous().to(tensor.device)


def broadcast(tensor: torch.Tensor, src: int = 0, group=None) -> torch.Tensor:
    """Overwrite `tensor` with global rank `src`'s value, in place; returns it."""
    if world_size(group) == 1:
        return tensor
    work = _on(tensor, device(group))
    dist.broadcast(work, src=src, group=group)
    if work is not tensor:
        with torch.no_grad():
            tensor.copy_(work)
    return tensor


def send(tensor: torch.Tensor, dst: int, group=None) -> None:
    dist.send(_on(tensor.contiguous(), device(group)), dst=dst, group=group)


def recv(tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    work = _on(tensor, device(group))
    dist.recv(work, src=src, group=group)
    if work is not tensor:
        with torch.no_grad():
            tensor.copy_(work)
    return tensor


def exchange(send_tensor: torch.Tensor, dst: int, recv_tensor: torch.Tensor, src: int, group=None) -> torch.Tensor:
    """Send to `dst` and receive from `src` (global ranks) at once, as a ring step does; returns recv_tensor."""
    dev = device(group)
    out = _on(recv_tensor, dev)
    ops = [dist.P2POp(dist.isend, _on(send_tensor.contiguous(), dev), dst, group),
           dist.P2POp(dist.irecv, out, src, group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    if out is not recv_tensor:
        with torch.no_grad():
            recv_tensor.copy_(out)
    return recv_tensor


def all_gather_object(obj: Any, group=None) -> list:
    """Every rank's picklable `obj`, in rank order (small metadata only: it is pickled)."""
    n = world_size(group)
    if n == 1:
        return [obj]
    out = [None] * n
    dist.all_gather_object(out, obj, group=group)  # uses the current CUDA device under NCCL
    return out


def gather_object(obj: Any, dst: int = 0, group=None) -> list | None:
    """Every rank's picklable `obj` on global rank `dst`, in rank order (None elsewhere)."""
    n = world_size(group)
    if n == 1:
        return [obj]
    out = [None] * n if dist.get_rank() == dst else None
    dist.gather_object(obj, out, dst=dst, group=group)
    return out


def broadcast_object(obj: Any, src: int = 0, group=None) -> Any:
    """Rank `src`'s picklable `obj` on every rank."""
    if world_size(group) == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, group=group)
    return box[0]


def new_cpu_group():
    """A new group of all ranks on gloo (None in a world of one), for a thread that communicates
    while the training thread uses its own groups (a checkpoint writer): collective to create."""
    if world_size() == 1:
        return None
    return dist.new_group(backend="gloo")


def barrier(group=None) -> None:
    if world_size(group) > 1:
        dist.barrier(group=group, device_ids=[torch.cuda.current_device()] if device(group).type == "cuda" else None)
