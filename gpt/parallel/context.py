"""Process groups: torch.distributed + megatron-core `parallel_state`, exposed as one object.

megatron-core's `parallel_state` is the single owner of the tensor/pipeline/data groups (rank order
tensor fastest, then data, then pipeline — the same as DeepSpeed's PipeModelDataParallelTopology).
Code below the trainer receives a `ParallelContext` instead of reaching for globals.
"""

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from gpt.config.validate import Layout
from gpt.parallel import collectives
from gpt.parallel.device import choose_device


# megatron-core's rank order, fastest-varying first: tensor, (context, expert: 1 here), data, pipeline.
# DeepSpeed's PipeModelDataParallelTopology(pipe, data, model) numbers ranks the same way, so the
# groups of both libraries coincide (tests/parallel/test_rank_layout.py checks it).
RANK_ORDER = "tp-cp-ep-dp-pp"


@dataclass(frozen=True)
class ParallelContext:
    layout: Layout
    rank: int
    local_rank: int
    tp_rank: int
    pp_rank: int
    dp_rank: int
    device: torch.device
    backend: str
    cp_rank: int = 0
    dp_cp_rank: int = 0  # rank in dp_cp_group (= dp_rank without context parallelism)

    @property
    def cp_group(self):
        """Ranks that hold the chunks of the same sequences (parallel.context)."""
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_context_parallel_group()

    @property
    def dp_cp_group(self):
        """Data x context ranks: they average gradients and share ZeRO state (the dp group without context parallelism)."""
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_data_parallel_group(with_context_parallel=True)

    @property
    def tp_group(self):
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_tensor_model_parallel_group()

    @property
    def pp_group(self):
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_pipeline_model_parallel_group()

    @property
    def dp_group(self):
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_data_parallel_group()

    @property
    def model_parallel_group(self):
        """Tensor x pipeline ranks of one model replica."""
        from gpt.parallel.megatron_core import parallel_state

        return parallel_state.get_model_parallel_group()

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.layout.pipeline - 1

    @property
    def is_logging_rank(self) -> bool:
        """Rank 0 writes metrics and logs: it is on the first stage; losses are broadcast to it."""
        return self.rank == 0

    def mpu(self):
        """The legacy Megatron API that `deepspeed.initialize(mpu=...)` expects."""
        from gpt.parallel.mpu import MegatronMPU

        return MegatronMPU()

    def barrier(self) -> None:
        collectives.barrier()


def group_timeout(backend: str) -> timedelta:
    """The collective timeout of every process group: torch's default for the backend (NCCL 10 minutes,
    gloo 30), because DeepSpeed creates its groups (pipeline, ZeRO) without a timeout, i.e. with that
    default; the world and megatron's groups get the same, so no group gives up earlier than another."""
    from torch.distributed import constants

    nccl = getattr(constants, "default_pg_nccl_timeout", None)
    return nccl if backend == "nccl" and nccl is not None else constants.default_pg_timeout


def initialize(layout: Layout, device: str = "auto") -> ParallelContext:
    """Start torch.distributed (a one-process group when not launched by torchrun) and megatron groups."""
    from gpt.parallel.megatron_core import parallel_state

    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev, backend = choose_device(device, local_rank)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        timeout = group_timeout(backend)
        if "WORLD_SIZE" in os.environ:  # torchrun / the launcher: env:// rendezvous
            dist.init_process_group(backend, timeout=timeout, device_id=dev if dev.type == "cuda" else None)
        else:  # plain `python -m gpt.pretrain`, generation, export: a world of one, no ports
            os.environ.setdefault("LOCAL_RANK", "0")
            dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1, timeout=timeout)
    assert dist.get_world_size() == layout.world, (dist.get_world_size(), layout)
    parallel_state.initialize_model_parallel(
        tensor_model_parallel_size=layout.tensor,
        pipeline_model_parallel_size=layout.pipeline,
        context_parallel_size=layout.context,
        distributed_timeout_minutes=round(group_timeout(backend).total_seconds() / 60),
        create_gloo_process_groups=False,
        order=RANK_ORDER,
    )
    return ParallelContext(
        layout=layout,
        rank=dist.get_rank(),
        local_rank=local_rank,
        tp_rank=parallel_state.get_tensor_model_parallel_rank(),
        pp_rank=parallel_state.get_pipeline_model_parallel_rank(),
        dp_rank=parallel_state.get_data_parallel_rank(),
        cp_rank=parallel_state.get_context_parallel_rank(),
        dp_cp_rank=parallel_state.get_data_parallel_rank(with_context_parallel=True),
        device=dev,
        backend=backend,
    )


def destroy() -> None:
    from gpt.parallel.megatron_core import parallel_state

    if parallel_state.model_parallel_is_initialized():
        parallel_state.destroy_model_parallel()
    if dist.is_initialized():
        dist.destroy_process_group()
