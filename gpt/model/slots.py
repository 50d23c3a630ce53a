"""Which class fills each slot of the model: megatron-core's tensor-parallel layers.

The transformer in `gpt.py` is written as if for one device; tensor parallelism enters only here.
With tensor size 1 these are ordinary linears/embeddings. Column-parallel layers split their
output features over the tensor group, row-parallel layers their input features (followed by an
all-reduce), the vocab-parallel embedding its rows.

Weight init uses one generator per layer, seeded by (train.seed, layer index), and builds the full
(unsplit) matrix before taking this rank's slice, so every layout — any tensor size, any pipeline
split — starts from the same weights as one process.
"""

import contextlib
import math
from dataclasses import dataclass

import torch
import torch.utils.checkpoint
from megatron.core import ModelParallelConfig
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, VocabParallelEmbedding


class LayerInit:
    """Normal(0, std) init drawn from a generator private to one layer."""

    def __init__(self, seed: int, layer_index: int, std: float, n_layer: int):
        self.generator = torch.Generator().manual_seed(seed * 100_003 + layer_index)
        self.std = std
        self.residual_std = std / math.sqrt(2 * n_layer)  # GPT-2: scale residual projections

    def normal(self, std: float | None = None):
        std = self.std if std is None else std

        def init_(w: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                return w.normal_(0.0, std, generator=self.generator)

        return init_


@dataclass
class Slots:
    """Factory for the parallel layers of one model (holds the tensor group and megatron config), and
    how random numbers are drawn in it (`rng`: a gpt.parallel.rng.RNGTracker, None for eval-only models)."""

    tp_size: int
    tp_group: object = None
    rng: object = None

    def __post_init__(self):
        self.config = ModelParallelConfig(tensor_model_parallel_size=self.tp_size, use_cpu_initialization=True,
                                          perform_initialization=True, params_dtype=torch.float32)

    def column(self, n_in: int, n_out: int, *, bias: bool, init, tied: bool = False) -> ColumnParallelLinear:
        """y[..., n_out/p] = x W_p^T: output features split over the tensor group."""
        return ColumnParallelLinear(n_in, n_out, config=self.config, init_method=init, bias=bias,
                                    gather_output=False, skip_weight_param_allocation=tied, tp_group=self.tp_group)

    def row(self, n_in: int, n_out: int, *, bias: bool, init) -> RowParallelLinear:
        """y[..., n_out] = all-reduce(x[..., n_in/p] W_p^T): input features split over the tensor group."""
        return RowParallelLinear(n_in, n_out, config=self.config, init_method=init, bias=bias,
                                 input_is_parallel=True, skip_bias_add=False, tp_group=self.tp_group)

    def vocab_embedding(self, n_vocab: int, n_embd: int, *, init) -> VocabParallelEmbedding:
        """Rows of the token table split over the tensor group; lookups all-reduced."""
        return VocabParallelEmbedding(n_vocab, n_embd, init_method=init, config=self.config, tp_group=self.tp_group)

    def tensor_parallel_region(self):
        """Context for random ops on split activations: they draw from the tensor-parallel stream
        (different on every tensor rank); outside it, from the stream all tensor ranks share."""
        return self.rng.fork() if self.rng is not None else contextlib.nullcontext()

    def recompute(self, fn, *args):
        """fn(*args), its activations recomputed in backward, with the same dropout masks in both streams."""
        context_fn = self.rng.recompute_contexts if self.rng is not None else torch.utils.checkpoint.noop_context_fn
        return torch.utils.checkpoint.checkpoint(fn, *args, use_reentrant=False, context_fn=context_fn)
