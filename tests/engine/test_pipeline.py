"""The pipeline's layer list: stage split, canonical names, and DeepSpeed's activation checkpointing.

Multi-stage numerics are checked against the one-process run in test_parity.py; here a one-stage
PipelineModule runs in this process, which is enough to see what the module itself does.
"""

import pytest
import torch

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.engine.pipeline import build_pipeline, canonical_name, stage_boundaries
from gpt.model.build import build_model, model_shape
from gpt.model.gpt import Block
from gpt.model.slots import Slots
from gpt.parallel import context as parallel
from gpt.parallel.device import prepare_deepspeed


@pytest.mark.parametrize("n_layer, stages, layers, parts", [
    (4, 2, None, [0, 3, 7]),  # [embedding, b0, b1 | b2, b3, norm, output]
    (5, 2, None, [0, 4, 8]),  # uneven: the first stages take the extra block
    (5, 2, [1, 4], [0, 2, 8]),  # as configured
    (6, 3, [1, 2, 3], [0, 2, 4, 9]),
])
def test_stage_boundaries(n_layer, stages, layers, parts):
    assert stage_boundaries(ModelConfig(n_layer=n_layer), stages, layers) == parts


def test_canonical_names():
    n = 4
    assert canonical_name("tied_modules.embed.wte.weight", n) == "embedding.wte.weight"
    assert canonical_name("0.wpe.weight", n) == "embedding.wpe.weight"
    assert canonical_name("1.attn.qkv.weight", n) == "blocks.0.attn.qkv.weight"
    assert canonical_name("4.mlp.proj.bias", n) == "blocks.3.mlp.proj.bias"
    assert canonical_name("5.ln_f.weight", n) == "norm.ln_f.weight"
    assert canonical_name("6.head.weight", n) == "output.head.weight"


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    prepare_deepspeed(ctx.device, ctx.backend)
    yield ctx
    parallel.destroy()


@pytest.mark.parametrize("tied", [True, False])
def test_activation_checkpointing_recomputes_blocks_with_the_same_gradients(world_of_one, tied):
    cfg = ModelConfig(n_layer=3, n_head=4, n_embd=64, max_seq_len=32, tie_embeddings=tied)
    shape = model_shape(cfg, 257)
    x = torch.randint(0, 257, (2, 16), generator=torch.Generator().manual_seed(0))
    reference = build_model(cfg, shape, seed=9, tp_group=world_of_one.tp_group)
    labels, weights = torch.roll(x, -1, 1), torch.full(x.shape, 1 / x.numel())
    reference(x, labels=labels, weights=weights).backward()
    expected = dict(reference.named_parameters())

    for checkpointing in (False, True):
        pipe = build_pipeline(cfg, shape, Slots(1, world_of_one.tp_group), seed=9, layout=world_of_one.layout,
                              pipeline_layers=None, activation_checkpointing=checkpointing)
        calls = []
        for layer in pipe.modules():
            if isinstance(layer, Block):
                layer.register_forward_pre_hook(lambda *_: calls.append(1))
        pipe.loss_fn(pipe(x), (labels, weights)).backward()  # the last stage's (hidden, head weight) -> fused loss
        assert len(calls) == (6 if checkpointing else 3)  # each block once more in backward
        for name, p in pipe.named_parameters():
            # Same weights, same ops: only the order of a few sums may differ (round-off).
            torch.testing.assert_close(p.grad, expected[canonical_name(name, 3)].grad, rtol=1e-5, atol=1e-7)
