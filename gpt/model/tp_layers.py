"""megatron-core's tensor-parallel layers as the slots of tensor size > 1 (see slots.py).

Each class is megatron's, asked not to initialise (megatron would draw the whole matrix on every
rank): the subclass gives its parameters their first value through `Slots.initialize`, inside its
own `__init__` (so also on the meta device and under deepspeed.zero.Init), tile-wise, this rank's
slice only. Imported only where the tensor group has more than one rank.
"""

import torch

from gpt.model.slots import ZEROS, set_split
from gpt.parallel.megatron_core import ModelParallelConfig, get_pg_rank, tensor_parallel


def megatron_config(tp_size: int, params_dtype: torch.dtype) -> ModelParallelConfig:
    # "CPU initialization" only decides where megatron allocates (the current device context: meta,
    # CPU, or the GPU under torch.device); with perform_initialization=False it never draws.
    return ModelParallelConfig(tensor_model_parallel_size=tp_size, use_cpu_initialization=True,
                               perform_initialization=False, params_dtype=params_dtype)


def group_rank(group) -> int:
    """This process's rank in the tensor group (megatron's own accessor: also a layout-only group)."""
    return get_pg_rank(group)


def copy_to_tensor_region(x: torch.Tensor, group) -> torch.Tensor:
    """x as it is; backward: its gradient all-reduced over the tensor group (entering a column-parallel op)."""
    return tensor_parallel.copy_to_tensor_model_parallel_region(x, group=group)


class ParallelColumn(tensor_parallel.ColumnParallelLinear):
    """ColumnParallelLinear (output rows split), its weight drawn tile-wise by rows."""

    slot = "column"

    def __init__(self, n_in: int, n_out: int, *, slots, bias: bool, init, tied: bool):
        super().__init__(n_in, n_out, config=slots.config, init_method=init, bias=bias, gather_output=False,
                         skip_weight_param_allocation=tied, tp_group=slots.tp_group)
        if self.weight is not None:
            set_split(self.weight, 0)
            slots.initialize(self.weight, init, dim=0)
        if self.bias is not None:  # megatron marks it split along 0
            slots.initialize(self.bias, ZEROS, dim=0)


class ParallelRow(tensor_parallel.RowParallelLinear):
    """RowParallelLinear (input columns split), its weight drawn tile-wise by columns."""

    slot = "row"

    def __init__(self, n_in: int, n_out: int, *, slots, bias: bool, init):
        super().__init__(n_in, n_out, config=slots.config, init_method=init, bias=bias, input_is_parallel=True,
                         skip_bias_add=False, tp_group=slots.tp_group)
        set_split(self.weight, 1)
        slots.initialize(self.weight, init, dim=1)
        if self.bias is not None:  # replicated
            slots.initialize(self.bias, ZEROS, dim=None)


class ParallelVocabEmbedding(tensor_parallel.VocabParallelEmbedding):
    """VocabParallelEmbedding (rows split), drawn tile-wise by rows."""

    slot = "vocab"

    def __init__(self, n_vocab: int, n_embd: int, *, slots, init):
        super().__init__(n_vocab, n_embd, init_method=init, config=slots.config, tp_group=slots.tp_group)
        set_split(self.weight, 0)
        slots.initialize(self.weight, init, dim=0)
