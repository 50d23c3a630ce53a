"""config.json of a `transformers` model <-> our `model.*` keys.

A model is exported by what it *is*, not by its preset name: LayerNorm + learned positions + GELU
(tanh) + biases + full multi-head attention is GPT-2 (`GPT2LMHeadModel`); RMSNorm + RoPE + SwiGLU is
Llama (`LlamaForCausalLM`, grouped-query attention and biases included). Anything else has no
`transformers` class with the same maths, and saying so is better than exporting something that
computes a different function.
"""

import json
import logging
from pathlib import Path

from gpt.config.validate import ffn_hidden as default_ffn_hidden
from gpt.errors import CheckpointError, ConfigError

GPT2, LLAMA = "gpt2", "llama"
ARCHITECTURES = {GPT2: "GPT2LMHeadModel", LLAMA: "LlamaForCausalLM"}
# HF names for the tanh-approximate GELU our GPT-2 MLP uses.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


class ModelFields:
    """Attribute access over a ModelConfig or the `model` dict saved in a checkpoint."""

    def __init__(self, m):
        self._m = m

    def __getattr__(self, key):
        return self._m[key] if isinstance(self._m, dict) else getattr(self._m, key)


def family(m) -> str:
    """gpt2 | llama for a ModelConfig (or its dict); CheckpointError naming what does not fit either."""
    f = ModelFields(m)
    kv = f.n_kv_head or f.n_head
    if (f.norm, f.position, f.activation) == ("rmsnorm", "rope", "swiglu"):
        return LLAMA
    if (f.norm, f.position, f.activation) == ("layernorm", "learned", "gelu"):
        if not f.bias:
            raise CheckpointError("model.bias=false with GPT-2's layernorm/learned/gelu has no Hugging Face class "
                                  "(GPT2LMHeadModel always has biases)")
        if kv != f.n_head:
            raise CheckpointError(f"model.n_kv_head={kv} < model.n_head={f.n_head} (grouped-query attention) has no "
                                  f"GPT-2 equivalent; use the Llama architecture (rmsnorm/rope/swiglu) for it")
        return GPT2
    raise CheckpointError(f"model.norm={f.norm}, model.position={f.position}, model.activation={f.activation} has no "
                          f"Hugging Face class: GPT-2 is layernorm/learned/gelu, Llama is rmsnorm/rope/swiglu")


def to_hf_config(m, *, vocab_size: int, eos_id: int, bos_id: int | None, dtype: str = "float32") -> dict:
    """The config.json for model fields `m` whose (unpadded) vocabulary has `vocab_size` rows."""
    f = ModelFields(m)
    fam = family(m)
    common = {"architectures": [ARCHITECTURES[fam]], "model_type": fam, "vocab_size": vocab_size,
              "tie_word_embeddings": bool(f.tie_embeddings), "eos_token_id": eos_id,
              "bos_token_id": eos_id if bos_id is None else bos_id, "torch_dtype": dtype, "use_cache": True,
              "initializer_range": f.init_std}
    hidden = f.ffn_hidden or default_ffn_hidden(f)
    if fam == GPT2:
        return {**common, "n_layer": f.n_layer, "n_head": f.n_head, "n_embd": f.n_embd,
                "n_positions": f.max_seq_len, "n_inner": hidden, "activation_function": "gelu_new",
                "layer_norm_epsilon": f.norm_eps, "resid_pdrop": f.dropout, "embd_pdrop": f.dropout,
                "attn_pdrop": f.dropout, "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False,
                "reorder_and_upcast_attn": False}
    return {**common, "num_hidden_layers": f.n_layer, "num_attention_heads": f.n_head,
            "num_key_value_heads": f.n_kv_head or f.n_head, "hidden_size": f.n_embd,
            "head_dim": f.n_embd // f.n_head, "intermediate_size": hidden, "hidden_act": "silu",
            "max_position_embeddings": f.max_seq_len, "rms_norm_eps": f.norm_eps,
            **rope_fields(f),
            "attention_bias": bool(f.bias), "mlp_bias": bool(f.bias), "attention_dropout": f.dropout,
            "pretraining_tp": 1}


def rope_fields(f) -> dict:
    """config.json's RoPE keys: transformers >= 5 reads rope_parameters, 4.x rope_theta and rope_scaling."""
    from gpt.model.rope import ntk_theta

    scaling = getattr(f, "rope_scaling", None) or "none"
    theta = f.rope_theta
    if scaling == "ntk":  # a static change of base: plain RoPE with the scaled theta
        theta, scaling = ntk_theta(theta, f.rope_factor, f.n_embd // f.n_head), "none"
    if scaling == "none":
        return {"rope_theta": theta, "rope_parameters": {"rope_type": "default", "rope_theta": theta}}
    params = {"rope_type": scaling, "factor": f.rope_factor}
    if scaling == "llama3":
        params.update(low_freq_factor=f.rope_low_freq_factor, high_freq_factor=f.rope_high_freq_factor,
                      original_max_position_embeddings=f.rope_original_max_seq_len
                      or int(round(f.max_seq_len / f.rope_factor)))
    return {"rope_theta": theta, "rope_scaling": dict(params), "rope_parameters": {**params, "rope_theta": theta}}


def rope_from_hf(cfg: dict, where: Path) -> dict:
    """Our model.rope_* keys for an HF Llama config's RoPE (rope_parameters, or 4.x rope_scaling)."""
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type", "default"))
    out = {"rope_theta": float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))), "rope_scaling": "none",
           "rope_factor": 1.0, "rope_original_max_seq_len": None, "rope_low_freq_factor": 1.0,
           "rope_high_freq_factor": 4.0}
    # "dynamic" NTK changes the base only for sequences longer than max_position_embeddings, which gpt
    # never runs (model.max_seq_len is that length): inside it the model is plain RoPE, exactly.
    if rope_type in ("default", "dynamic"):
        return out
    if rope_type not in ("linear", "llama3"):
        raise ConfigError(f"{where}: rope_type={rope_type!r} is not supported; gpt computes default, linear, dynamic "
                          f"(inside max_position_embeddings) and llama3 RoPE")
    out.update(rope_scaling=rope_type, rope_factor=float(_need(rope, "factor", where)))
    if rope_type == "llama3":
        out.update(rope_original_max_seq_len=int(_need(rope, "original_max_position_embeddings", where)),
                   rope_low_freq_factor=float(_need(rope, "low_freq_factor", where)),
                   rope_high_freq_factor=float(_need(rope, "high_freq_factor", where)))
    return out


def _need(cfg: dict, key: str, where: Path):
    if key not in cfg:
        raise ConfigError(f"{where} has no {key!r}; it is not a complete {cfg.get('model_type')} config")
    return cfg[key]


def from_hf_config(cfg: dict, where: Path) -> dict:
    """The `model.*` keys equivalent to an HF config.json (GPT-2 or Llama): the architecture, and
    init_std (initializer_range) so that an export of the result writes the same config.json."""
    kind = cfg.get("model_type")
    if kind == GPT2:
        act = cfg.get("activation_function", "gelu_new")
        if act not in TANH_GELU:
            raise ConfigError(f"{where}: activation_function={act!r}; gpt can only load GPT-2 models with the tanh "
                              f"GELU ({', '.join(TANH_GELU)})")
        if not cfg.get("scale_attn_weights", True) or cfg.get("scale_attn_by_inverse_layer_idx", False):
            raise ConfigError(f"{where}: GPT-2 attention scaling other than 1/sqrt(head size) is not supported")
        n_embd = _need(cfg, "n_embd", where)
        return {"n_layer": _need(cfg, "n_layer", where), "n_head": _need(cfg, "n_head", where), "n_kv_head": None,
                "n_embd": n_embd, "ffn_hidden": cfg.get("n_inner") or 4 * n_embd,
                "max_seq_len": _need(cfg, "n_positions", where), "vocab_size": _need(cfg, "vocab_size", where),
                "bias": True, "norm": "layernorm", "norm_eps": cfg.get("layer_norm_epsilon", 1e-5),
                "activation": "gelu", "position": "learned", "tie_embeddings": cfg.get("tie_word_embeddings", True),
                "init_std": cfg.get("initializer_range", 0.02)}
    if kind == LLAMA:
        n_embd, n_head = _need(cfg, "hidden_size", where), _need(cfg, "num_attention_heads", where)
        if cfg.get("hidden_act", "silu") != "silu":
            raise ConfigError(f"{where}: hidden_act={cfg.get('hidden_act')!r}; only silu (SwiGLU) Llama models are supported")
        if cfg.get("head_dim") not in (None, n_embd // n_head):
            raise ConfigError(f"{where}: head_dim={cfg['head_dim']} differs from hidden_size/num_attention_heads="
                              f"{n_embd // n_head}, which gpt's attention assumes")
        rope = rope_from_hf(cfg, where)
        if bool(cfg.get("attention_bias", False)) != bool(cfg.get("mlp_bias", False)):
            raise ConfigError(f"{where}: attention_bias and mlp_bias differ; gpt's model.bias covers both")
        return {"n_layer": _need(cfg, "num_hidden_layers", where), "n_head": n_head,
                "n_kv_head": cfg.get("num_key_value_heads") or n_head, "n_embd": n_embd,
                "ffn_hidden": _need(cfg, "intermediate_size", where),
                "max_seq_len": _need(cfg, "max_position_embeddings", where),
                "vocab_size": _need(cfg, "vocab_size", where), "bias": bool(cfg.get("attention_bias", False)),
                "norm": "rmsnorm", "norm_eps": cfg.get("rms_norm_eps", 1e-6), "activation": "swiglu",
                "position": "rope", **rope,
                "tie_embeddings": cfg.get("tie_word_embeddings", False), "init_std": cfg.get("initializer_range", 0.02)}
    raise ConfigError(f"{where}: model_type={kind!r}; model.init_from loads gpt2 and llama models")


# RoPE settings: a source decides them unless the user extends its context (trainer/init_from.py).
ROPE_KEYS = ("rope_theta", "rope_scaling", "rope_factor", "rope_original_max_seq_len", "rope_low_freq_factor",
             "rope_high_freq_factor")
# What an HF config.json decides (model.init_from); a resumed run takes them from its own checkpoint instead.
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "ffn_hidden", "max_seq_len", "vocab_size", "bias",
                     "norm", "norm_eps", "activation", "position", "tie_embeddings") + ROPE_KEYS


def hf_dir(path: str) -> Path:
    d = Path(path)
    if not (d / "config.json").is_file():
        raise ConfigError(f"model.init_from={path}: no config.json there; give a local Hugging Face model directory "
                          f"(gpt never downloads: save one with save_pretrained, or use gpt-export)")
    return d


def read_config(directory: Path) -> dict:
    path = directory / "config.json"
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ConfigError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path} is not a config object")
    return cfg


def architecture(directory: Path) -> dict:
    """The `model.*` keys the HF config implies (and the directory's name as model.name)."""
    return {"name": directory.resolve().name, **from_hf_config(read_config(directory), directory / "config.json")}


def apply_architecture(model_cfg, fields: dict, source: str) -> list[str]:
    """Set `fields` on model_cfg (a ModelConfig); returns 'key: old -> new' for each change."""
    changes = []
    for key, value in fields.items():
        old = getattr(model_cfg, key)
        if old != value:
            changes.append(f"model.{key}: {old} -> {value}")
            setattr(model_cfg, key, value)
    if changes:
        logging.getLogger("gpt.init_from").info("architecture from %s: %s", source, "; ".join(changes))
    return changes
