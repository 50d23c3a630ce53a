"""Adapter from megatron-core's `parallel_state` to the legacy Megatron API DeepSpeed expects.

DeepSpeed's `mpu=` argument wants `get_model_parallel_*` to mean the tensor-parallel group (it uses
it to avoid double-counting replicated parameters in the gradient norm); megatron-core renamed those.
"""

from gpt.parallel.megatron_core import parallel_state as ps


class MegatronMPU:
    def get_model_parallel_world_size(self):
        return ps.get_tensor_model_parallel_world_size()

    def get_model_parallel_rank(self):
        return ps.get_tensor_model_parallel_rank()

    def get_model_parallel_group(self):
        return ps.get_tensor_model_parallel_group()

    # DeepSpeed's "data parallel" is every rank that averages gradients: data x context ranks (the
    # context ranks of one replica see different chunks of the same samples), as Megatron's dp-cp group.
    def get_data_parallel_world_size(self):
        return ps.get_data_parallel_world_size(with_context_parallel=True)

    def get_data_parallel_rank(self):
        return ps.get_data_parallel_rank(with_context_parallel=True)

    def get_data_parallel_group(self):
        return ps.get_data_parallel_group(with_context_parallel=True)

    # Names DeepSpeed also probes for tensor parallelism.
    get_tensor_model_parallel_world_size = get_model_parallel_world_size
    get_tensor_model_parallel_rank = get_model_parallel_rank
    get_tensor_model_parallel_group = get_model_parallel_group
