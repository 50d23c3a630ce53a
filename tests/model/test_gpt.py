"""The model on one process: shapes, parameter count, causality, KV cache."""

import pytest
import torch

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.model.build import build_model, model_shape
from gpt.model.gpt import count_parameters
from gpt.model.kv_cache import new_caches
from gpt.parallel import context as parallel

ARCHS = {
    "gpt2": dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=32),
    "llama": dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=32, norm="rmsnorm", activation="swiglu",
                  position="rope", tie_embeddings=False, bias=False),
}


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


def make(arch, ctx, **kw):
    cfg = ModelConfig(**{**ARCHS[arch], **kw})
    shape = model_shape(cfg, 257)
    return build_model(cfg, shape, seed=3, tp_group=ctx.tp_group), shape


@pytest.mark.parametrize("arch", ARCHS)
def test_logits_shape_and_padding(arch, world_of_one):
    model, shape = make(arch, world_of_one)
    assert shape.padded_vocab == 384  # 257 rounded up to the vocab multiple (128)
    logits = model(torch.randint(0, 257, (3, 11)))
    assert logits.shape == (3, 11, 384)


@pytest.mark.parametrize("arch", ARCHS)
def test_parameter_count_formula(arch, world_of_one):
    model, shape = make(arch, world_of_one)
    assert count_parameters(model.cfg, shape.padded_vocab, shape.ffn_hidden) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("arch", ARCHS)
def test_causal(arch, world_of_one):
    model, _ = make(arch, world_of_one)
    x = torch.randint(0, 257, (1, 12))
    y = x.clone()
    y[0, 8:] = (y[0, 8:] + 1) % 257
    torch.testing.assert_close(model(x)[:, :8], model(y)[:, :8])


@pytest.mark.parametrize("arch", ARCHS)
def test_kv_cache_matches_full_forward(arch, world_of_one):
    model, _ = make(arch, world_of_one)
    model.eval()
    x = torch.randint(0, 257, (2, 16))
    full = model(x)
    caches = new_caches(model.cfg.n_layer, 32)
    pieces = [model(x[:, :5], caches), model(x[:, 5:9], caches)] + [model(x[:, i:i + 1], caches) for i in range(9, 16)]
    # Same math in another order of accumulation: fp32 round-off only.
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-5, atol=1e-5)


def test_same_seed_same_weights_any_build_order(world_of_one):
    a, _ = make("gpt2", world_of_one)
    b, _ = make("gpt2", world_of_one)
    for (na, pa), (nb, pb) in zip(a.named_parameters(), b.named_parameters()):
        assert na == nb and torch.equal(pa, pb)
