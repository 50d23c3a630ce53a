"""FLOPs per token and parameter counts: the numbers behind MFU and the memory estimate."""

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from gpt.config import compose
from gpt.config.training import ModelConfig
from gpt.config.validate import Layout, ffn_hidden
from gpt.model.build import build_model, model_shape
from gpt.model.gpt import count_parameters, flops_per_token, layer_parameters
from gpt.parallel import context as parallel

GPT2 = dict(n_layer=2, n_head=4, n_embd=64, max_seq_len=32)
LLAMA = dict(n_layer=2, n_head=4, n_kv_head=2, n_embd=64, max_seq_len=32, norm="rmsnorm", activation="swiglu",
             position="rope", tie_embeddings=False, bias=False)


@pytest.fixture(scope="module")
def world_of_one():
    ctx = parallel.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    parallel.destroy()


@pytest.mark.parametrize("arch", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_flops_per_token_equals_counted_flops_of_a_training_step(arch, world_of_one):
    """PyTorch's FLOP counter over one forward+backward (math attention, so its matmuls are counted)
    must give exactly our formula: 6 x matmul parameters (head included) + 12 x layers x heads x
    head size x sequence (attention scores and values, the causal half counted, by convention)."""
    cfg = ModelConfig(**arch)
    shape = model_shape(cfg, 257)
    model = build_model(cfg, shape, seed=1, tp_group=world_of_one.tp_group)
    b, t = 2, 32
    with FlopCounterMode(display=False) as counter, sdpa_kernel(SDPBackend.MATH):
        model(torch.randint(0, 257, (b, t))).float().sum().backward()
    assert flops_per_token(cfg, shape.padded_vocab, shape.ffn_hidden, t) == counter.get_total_flops() / (b * t)


@pytest.mark.parametrize("arch", [GPT2, LLAMA], ids=["gpt2", "llama"])
def test_layer_parameters_match_the_built_layers(arch, world_of_one):
    cfg = ModelConfig(**arch)
    shape = model_shape(cfg, 257)
    model = build_model(cfg, shape, seed=1, tp_group=world_of_one.tp_group)
    layers = [model.embedding, *model.blocks, model.norm, model.output]
    counts = layer_parameters(cfg, shape.padded_vocab, shape.ffn_hidden)
    assert counts == [sum(p.numel() for p in layer.parameters()) for layer in layers]


def test_tensor_split_by_hand():
    """GPT-2 tiny (h=64, 4 heads, ffn 256, vocab 384, 32 positions) on one of 2 tensor ranks."""
    cfg = ModelConfig(**GPT2)
    emb = 384 * 64 // 2 + 32 * 64  # vocab rows split, learned positions replicated
    attn = (64 * 192 + 192 + 64 * 64) // 2 + 64  # qkv weight+bias and proj weight split; proj bias replicated
    mlp = (64 * 256 + 256 + 256 * 64) // 2 + 64
    block = 2 * 128 + attn + mlp  # two LayerNorms (weight+bias), replicated
    assert layer_parameters(cfg, 384, 256, tensor=2) == [emb, block, block, 128, 0]  # tied head: no weight
    assert (emb, block) == (14336, 25184)


@pytest.mark.parametrize("preset, params", [
    ("llama-1b", 1_235_814_400),  # Llama 3.2 1B with its 128256-token vocabulary (tied)
    ("llama-8b", 8_030_261_248),  # Llama 3.1 8B
    ("gpt2-124m", 124_439_808),  # GPT-2 small with its 50257 tokens, unpadded
])
def test_presets_have_the_published_sizes(preset, params):
    m = compose("pretrain", [f"model={preset}", "model.vocab_multiple=1"]).model
    vocab = 50257 if preset.startswith("gpt2") else 128256
    assert count_parameters(m, vocab, ffn_hidden(m)) == params
