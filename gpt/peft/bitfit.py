"""BitFit (Ben Zaken et al. 2021): only the bias terms train.

Most biases need nothing but `requires_grad`. The exception is megatron-core's ColumnParallelLinear:
with a frozen weight it runs `LinearWithFrozenWeight`, whose backward returns no bias gradient, so
the bias would silently never train. `BiasOutside` asks the layer to skip its bias
(`skip_bias_add`) and adds it here, where autograd sees it.
"""

import torch

from gpt.peft.lora import Wrapped


class BiasOutside(Wrapped):
    """A column-parallel linear whose (trainable) bias is added outside megatron's autograd function."""

    def __init__(self, base):
        super().__init__(base)
        base.skip_bias_add = True

    def forward(self, x: torch.Tensor, *args, **kwargs):
        y, bias = self._base()(x, *args, **kwargs)  # (b, t, out/p), bias (out/p,)
        return y + bias, None

    def unwrap(self):
        base = self._base()
        base.skip_bias_add = False
        return base
