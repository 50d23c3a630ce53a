"""Activation checkpointing in the one-module model (DenseEngine): same gradients, fewer saved activations.

The pipeline engine checkpoints through DeepSpeed's PipelineModule instead (tests/engine/test_pipeline.py).
"""

import pytest
import torch

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.model.build import build_model, model_shape
from gpt.parallel import context as parallel

ARCHS = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=32, dropout=0.1),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=32, norm="rmsnorm", activation="swiglu",
                  position="rope", tie_embeddings=False, bias=False, dropout=0.1),
}


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


def step(arch, ctx, checkpointing):
    """Gradients, block forward calls and saved-activation bytes of one training forward/backward."""
    cfg = ModelConfig(**ARCHS[arch])
    model = build_model(cfg, model_shape(cfg, 257), seed=5, tp_group=ctx.tp_group)
    model.activation_checkpointing = checkpointing
    calls = []
    for block in model.blocks:
        block.register_forward_pre_hook(lambda *_: calls.append(1))  # recomputation stops early: no post-hook
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 257, (2, 32), generator=gen)
    torch.manual_seed(7)  # dropout masks; checkpointing replays the RNG state on recomputation
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(x, labels=torch.roll(x, -1, 1), weights=torch.full((2, 32), 1 / 64))
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    return grads, len(calls), sum(saved)


@pytest.mark.parametrize("arch", ARCHS)
def test_same_gradients_fewer_saved_activations(arch, world_of_one):
    plain_grads, plain_calls, plain_saved = step(arch, world_of_one, False)
    ckpt_grads, ckpt_calls, ckpt_saved = step(arch, world_of_one, True)
    # The same ops on the same inputs with the same dropout masks: bitwise equal, dropout on.
    for name, g in plain_grads.items():
        assert torch.equal(g, ckpt_grads[name]), name
    assert (plain_calls, ckpt_calls) == (2, 4)  # each block runs again in backward
    assert ckpt_saved < plain_saved / 2, (ckpt_saved, plain_saved)  # only block inputs are kept
