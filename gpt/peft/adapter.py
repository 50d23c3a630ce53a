"""Bottleneck adapters (Houlsby et al. 2019): a small residual MLP on the output of a block branch.

    h = proj(y);   h + up(gelu(down(h)))        down: (bottleneck, n_embd), up: (n_embd, bottleneck)

One adapter follows the attention and one the MLP of every block. They wrap the branch's last
linear (attn.proj, mlp.proj or mlp.down, a RowParallelLinear), whose output is already all-reduced
and identical on every tensor rank, so the adapter is replicated like a norm: no communication, and
its gradients agree across tensor ranks. `up` starts at zero (step 0 is the base model); `down` is
drawn from a generator seeded by (seed, canonical name), the same in every layout. A nonlinear
adapter cannot be folded into the base weights.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from gpt.peft.lora import Wrapped, name_seed


class Bottleneck(nn.Module):
    def __init__(self, n_embd: int, bottleneck: int, *, seed: int, name: str, std: float):
        super().__init__()
        self.down = nn.Linear(n_embd, bottleneck)
        self.up = nn.Linear(bottleneck, n_embd)
        generator = torch.Generator().manual_seed(name_seed(seed, name))
        with torch.no_grad():
            self.down.weight.normal_(0.0, std, generator=generator)
            self.down.bias.zero_()
            self.up.weight.zero_()
            self.up.bias.zero_()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return h + self.up(F.gelu(self.down(h)))  # (b, t, h)


class Adapter(Wrapped):
    """A row-parallel linear (a branch's output projection) followed by a bottleneck adapter."""

    def __init__(self, base: nn.Module, *, bottleneck: int, seed: int, name: str, std: float):
        super().__init__(base)
        self.adapter = Bottleneck(base.output_size, bottleneck, seed=seed, name=name, std=std)

    def forward(self, x: torch.Tensor, *args, **kwargs):
        y, bias = self._base()(x, *args, **kwargs)  # bias is None: the row-parallel layer adds its own
        return self.adapter(y if bias is None else y + bias), None
