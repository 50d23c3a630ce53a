"""The Hugging Face mapping, in one process, for every variant the exporter accepts (GPT-2 tied and
untied; Llama with grouped-query attention, biases, tied head): our randomly initialised model and
the `transformers` model built from the exported config and weights compute the same logits, and
the mapping back is exact. Plus the refusals: architectures with no HF class, RoPE scaling, another
tokenizer, pickles that would run code.

Tolerance as in test_hf_roundtrip: fp32 round-off of a different operation order, ~1e-7 on logits of
size ~1 (absolute 1e-5 allowed); a wrong mapping is off by O(1).
"""

import json
import os
import pickle

import pytest
import torch

from gpt.config.training import ModelConfig
from gpt.config.validate import Layout
from gpt.data.tokenizer import ByteTokenizer
from gpt.errors import CheckpointError, ConfigError
from gpt.hf.config import family, from_hf_config, to_hf_config
from gpt.hf.files import HFWeights, write_weights
from gpt.hf.init_from import check_tokenizer, weight_source
from gpt.hf.tokenizer import export_tokenizer
from gpt.hf.weights import from_hf, hf_names, to_hf
from gpt.model.build import build_model, model_shape

os.environ.setdefault("HF_HUB_OFFLINE", "1")

GPT2 = dict(norm="layernorm", position="learned", activation="gelu", bias=True)
LLAMA = dict(norm="rmsnorm", position="rope", activation="swiglu", bias=False, tie_embeddings=False)
VARIANTS = {
    "gpt2-tied": GPT2,
    "gpt2-untied": dict(GPT2, tie_embeddings=False),
    "llama-gqa": dict(LLAMA, n_kv_head=2),
    "llama-bias-tied": dict(LLAMA, bias=True, tie_embeddings=True, n_kv_head=1),
    # RoPE scaling (gpt/model/rope.py): a wrong formula moves the logits of late positions by O(1).
    # original context 32 (head size 16, theta 500) puts wavelengths in all three of llama3's bands.
    "llama-rope-linear": dict(LLAMA, rope_scaling="linear", rope_factor=4.0),
    "llama-rope-ntk": dict(LLAMA, rope_scaling="ntk", rope_factor=4.0),
    "llama-rope-llama3": dict(LLAMA, rope_scaling="llama3", rope_factor=4.0, rope_original_max_seq_len=32,
                              rope_theta=500.0),
}


@pytest.fixture(scope="module")
def one_rank():
    from gpt.parallel import context

    ctx = context.initialize(Layout(1, 1, 1, 1, 1), "cpu")
    yield ctx
    context.destroy()


def _model(one_rank, **fields):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, max_seq_len=64, init_std=0.2, **fields)
    shape = model_shape(cfg, 257)
    return cfg, shape, build_model(cfg, shape, seed=7, tp_group=one_rank.tp_group).eval()


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_transformers_computes_our_logits_and_the_mapping_is_exact(one_rank, tmp_path, variant):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg, shape, ours = _model(one_rank, **VARIANTS[variant])
    state = {k: v.detach().clone() for k, v in ours.named_parameters()}
    hf_state = to_hf(state, cfg, 257)
    assert set(hf_state) == hf_names(cfg)
    (tmp_path / "config.json").write_text(json.dumps(to_hf_config(cfg, vocab_size=257, eos_id=256, bos_id=None)))
    theirs = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(tmp_path)).eval()
    missing, unexpected = theirs.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(k == "lm_head.weight" for k in missing)  # tied heads are not stored
    x = torch.randint(0, 257, (2, 48), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        diff = (theirs(x).logits - ours(x)[..., :257]).abs().max().item()
    assert diff < 1e-5
    for name, value in state.items():
        back = from_hf(name, hf_state.__getitem__, cfg, shape.padded_vocab)
        if name in ("embedding.wte.weight", "output.head.weight"):
            assert torch.equal(back[:257], value[:257]) and not back[257:].any()  # pad rows come back as zeros
        else:
            assert torch.equal(back, value), name


@pytest.mark.parametrize("fields, message", [
    (dict(norm="rmsnorm", position="rope", activation="gelu"), "has no Hugging Face class"),
    (dict(GPT2, bias=False), "always has biases"),
    (dict(GPT2, n_kv_head=2), "grouped-query attention"),
])
def test_architectures_without_an_hf_class_are_refused(fields, message):
    with pytest.raises(CheckpointError, match=message):
        family(ModelConfig(n_layer=2, n_head=4, n_embd=64, **fields))


def test_hf_configs_gpt_cannot_compute_are_refused(tmp_path):
    llama = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
             "intermediate_size": 128, "max_position_embeddings": 64, "vocab_size": 257}
    assert from_hf_config(llama, tmp_path)["n_kv_head"] == 4
    with pytest.raises(ConfigError, match="rope_type='yarn' is not supported"):
        from_hf_config(dict(llama, rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 5e5}), tmp_path)
    with pytest.raises(ConfigError, match="no 'original_max_position_embeddings'"):
        from_hf_config(dict(llama, rope_parameters={"rope_type": "llama3", "factor": 8.0, "rope_theta": 5e5,
                                                    "low_freq_factor": 1.0, "high_freq_factor": 4.0}), tmp_path)
    with pytest.raises(ConfigError, match="model_type='bert'"):
        from_hf_config({"model_type": "bert"}, tmp_path)
    with pytest.raises(ConfigError, match="tanh"):
        from_hf_config({"model_type": "gpt2", "activation_function": "relu"}, tmp_path)


@pytest.mark.parametrize("variant", ["llama-rope-linear", "llama-rope-llama3", "llama-gqa"])
def test_rope_settings_survive_the_round_trip(variant):
    cfg = ModelConfig(n_layer=2, n_head=4, n_embd=64, max_seq_len=64, **VARIANTS[variant])
    back = from_hf_config(to_hf_config(cfg, vocab_size=257, eos_id=256, bos_id=None), "config.json")
    for key in ("rope_theta", "rope_scaling", "rope_factor", "rope_low_freq_factor", "rope_high_freq_factor"):
        assert back[key] == getattr(cfg, key), key
    assert back["rope_original_max_seq_len"] == (32 if variant == "llama-rope-llama3" else None)


def test_llama_3_1_config_imports_with_its_scaling():
    """Meta's Llama 3.1 config.json (the 4.x `rope_scaling` spelling) imports as llama3 scaling."""
    llama31 = {"model_type": "llama", "hidden_size": 64, "num_attention_heads": 4, "num_hidden_layers": 2,
               "intermediate_size": 128, "max_position_embeddings": 131072, "vocab_size": 257, "rope_theta": 5e5,
               "rope_scaling": {"factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                "original_max_position_embeddings": 8192, "rope_type": "llama3"}}
    got = from_hf_config(llama31, "config.json")
    assert (got["rope_scaling"], got["rope_factor"], got["rope_original_max_seq_len"], got["rope_theta"]) == \
        ("llama3", 8.0, 8192, 5e5)
    dynamic = dict(llama31, rope_scaling={"type": "dynamic", "factor": 2.0})  # plain RoPE inside the window
    assert from_hf_config(dynamic, "config.json")["rope_scaling"] == "none"


def test_extending_a_source_context_scales_max_seq_len():
    from gpt.trainer.init_from import extend_context

    source = {"position": "rope", "max_seq_len": 8192, "rope_theta": 5e5, "rope_scaling": "none", "rope_factor": 1.0,
              "n_layer": 2}
    asks = ModelConfig(position="rope", rope_scaling="llama3", rope_factor=4.0)
    got = extend_context(asks, source)
    assert got["max_seq_len"] == 32768 and got["rope_original_max_seq_len"] == 8192 and "rope_scaling" not in got
    assert got["rope_theta"] == 5e5 and got["n_layer"] == 2
    assert extend_context(ModelConfig(position="rope"), source) == source  # no scaling asked: the source decides
    scaled = dict(source, max_seq_len=32768, rope_scaling="linear", rope_factor=4.0)  # already extended once
    assert extend_context(ModelConfig(position="rope", rope_scaling="linear", rope_factor=8.0), scaled)["max_seq_len"] == 65536


def test_init_from_refuses_another_tokenizer(tmp_path):
    from gpt.data.hf_tokenizer import train_bpe

    bpe = train_bpe(["the quick brown fox jumps over the lazy dog " * 50], 300)
    export_tokenizer(bpe, tmp_path, model_max_length=64)
    with pytest.raises(ConfigError, match="another tokenizer than the token shards"):
        check_tokenizer(tmp_path, ByteTokenizer(), "data/x")
    export_tokenizer(ByteTokenizer(), tmp_path, model_max_length=64)  # the byte tokenizer's fast twin
    check_tokenizer(tmp_path, ByteTokenizer(), "data/x")


def test_weights_read_back_sharded_and_from_weights_only_pickles(one_rank, tmp_path):
    cfg, shape, ours = _model(one_rank, **VARIANTS["llama-gqa"])
    hf_state = to_hf({k: v.detach() for k, v in ours.named_parameters()}, cfg, 257)
    (tmp_path / "config.json").write_text("{}")
    files = write_weights(hf_state, tmp_path, max_shard_bytes=40_000)
    assert len(files) > 2 and files[-1] == "model.safetensors.index.json"
    source = weight_source(tmp_path, cfg, shape.padded_vocab)
    q = source.read("blocks.1.attn.qkv.weight", dim=0, tp_rank=1, tp_size=2)
    assert torch.equal(q, dict(ours.named_parameters())["blocks.1.attn.qkv.weight"].detach().chunk(2)[1])

    legacy = tmp_path / "bin"
    legacy.mkdir()
    torch.save(hf_state, legacy / "pytorch_model.bin")
    assert torch.equal(HFWeights(legacy).get("model.norm.weight"), hf_state["model.norm.weight"])


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_a_pickle_that_would_run_code_is_refused(tmp_path):
    with open(tmp_path / "pytorch_model.bin", "wb") as f:
        pickle.dump({"model.norm.weight": _RunsCode()}, f)
    with pytest.raises(ConfigError, match="cannot be read as weights"):
        HFWeights(tmp_path)
    assert not (tmp_path / "pwned").exists() and not os.path.exists("pwned")
