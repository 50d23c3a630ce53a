"""Megatron's dropout rule with our tracker (gpt/parallel/rng.py), in one process.

Two trackers seeded as tensor ranks 0 and 1 of one stage stand for the two ranks: the default
stream (dropout on replicated activations) must give both the same masks, the tensor-parallel
stream (dropout on split activations) different ones, and activation checkpointing must replay both.
The distributed half (a real TP=2 run, resumed on another layout) is tests/checkpoint/test_rng_resume.py.
"""

import pytest
import torch

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.model.build import build_model, model_shape
from gpt.model.slots import Slots
from gpt.parallel import context as parallel
from gpt.parallel.rng import RNGTracker

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


def _draws(tracker: RNGTracker, seed: int, tp_rank: int):
    tracker.seed(seed, tp_rank=tp_rank)
    shared = torch.rand(4)
    with tracker.fork():
        split = torch.rand(4)
    return shared, split, torch.rand(4)


def test_streams_follow_megatrons_rule():
    a0, b0, c0 = _draws(RNGTracker(CPU), 7, tp_rank=0)
    a1, b1, c1 = _draws(RNGTracker(CPU), 7, tp_rank=1)
    assert torch.equal(a0, a1) and torch.equal(c0, c1)  # the shared stream: same draws on both ranks
    assert not torch.equal(b0, b1)  # the tensor-parallel stream: different
    torch.manual_seed(7)
    plain = torch.rand(8)
    assert torch.equal(torch.cat([a0, c0]), plain)  # fork() neither reads nor advances the shared stream
    t = RNGTracker(CPU)
    t.seed(7, tp_rank=0)
    with t.fork():
        torch.rand(4)
    with t.fork():
        second = torch.rand(4)
    assert not torch.equal(second, b0)  # the tensor-parallel stream continues, it does not restart


def _model(world_of_one, tp_rank: int, checkpointing: bool = False):
    """The model as tensor rank `tp_rank` runs it, its streams seeded just now (the shared stream is
    this process's one generator: seed right before use)."""
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, max_seq_len=32, dropout=0.1)
    rng = RNGTracker(CPU)
    model = build_model(cfg, model_shape(cfg, 257), seed=5, slots=Slots(1, world_of_one.tp_group, rng=rng))
    model.activation_checkpointing = checkpointing
    rng.seed(11, tp_rank=tp_rank)
    return model


def _masks(model) -> dict[str, torch.Tensor]:
    """Where each nn.Dropout zeroed a nonzero input, per module, over one training forward."""
    masks = {}

    def hook(name):
        def record(module, inputs, output):
            masks[name] = (output == 0) & (inputs[0] != 0)
        return record

    for name, module in model.named_modules():
        if isinstance(module, torch.nn.Dropout):
            module.register_forward_hook(hook(name))
    x = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(0))
    out = model(x)
    return masks, out


def test_the_model_draws_split_and_replicated_dropout_from_their_streams(world_of_one):
    """Residual and embedding dropout (replicated activations) share masks across "tensor ranks";
    attention-probability dropout (this rank's heads) does not."""
    masks0, out0 = _masks(_model(world_of_one, 0))
    m1 = _model(world_of_one, 1)
    masks1, out1 = _masks(m1)
    assert masks0.keys() == masks1.keys() and "embedding.drop" in masks0 and "blocks.1.attn.drop" in masks0
    for name in masks0:
        assert torch.equal(masks0[name], masks1[name]), name
        assert masks0[name].any(), name  # dropout really dropped something
    # Same weights, same replicated masks: only the attention probabilities' masks can make these differ.
    assert not torch.equal(out0, out1)
    x = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(0))
    assert torch.equal(m1.eval()(x), _model(world_of_one, 0).eval()(x))  # no dropout in eval: streams do not matter


def test_recomputation_replays_the_tensor_parallel_stream(world_of_one):
    """Activation checkpointing recomputes each block in backward with the masks of its forward in
    both streams: gradients bitwise equal to no checkpointing (torch alone would replay only the
    shared stream, and the attention dropout of the recomputation would differ)."""
    grads = []
    for checkpointing in (False, True):
        model = _model(world_of_one, 1, checkpointing)
        x = torch.randint(0, 257, (2, 32), generator=torch.Generator().manual_seed(0))
        model(x, labels=torch.roll(x, -1, 1), weights=torch.full((2, 32), 1 / 64)).backward()  # fused head + loss
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, g in grads[0].items():
        assert torch.equal(g, grads[1][name]), name


def test_without_dropout_no_stream_is_switched_and_a_block_compiles_to_one_graph(world_of_one):
    """With dropout 0 (or in eval) nothing is drawn, so the attention core runs outside the
    tensor-parallel region: the stream is left where it was, and torch.compile traces a block whole
    (the region's generator-state swap cannot be traced: it cut each block into four graphs)."""
    cfg = ModelConfig(n_layer=1, n_head=4, n_embd=64, max_seq_len=32, dropout=0.0)
    rng = RNGTracker(CPU)
    model = build_model(cfg, model_shape(cfg, 257), seed=5, slots=Slots(1, world_of_one.tp_group, rng=rng))
    rng.seed(11, tp_rank=0)
    before = rng.get_state().clone()
    x = torch.randn(2, 32, 64)
    block = model.blocks[0]
    block(x).sum().backward()
    assert torch.equal(rng.get_state(), before)
    explained = torch._dynamo.explain(block)(x)
    assert explained.graph_break_count == 0 and explained.graph_count == 1, explained.break_reasons
    dropped = build_model(ModelConfig(n_layer=1, n_head=4, n_embd=64, max_seq_len=32, dropout=0.1),
                          model_shape(cfg, 257), seed=5, slots=Slots(1, world_of_one.tp_group, rng=rng))
    dropped.blocks[0](x)
    assert not torch.equal(rng.get_state(), before)  # with dropout the attention draws from the stream
