"""`model.init_from=<HF dir>`: a run starts from GPT-2 / Llama weights, in any parallel layout.

The HF config.json decides the architecture (the `model.*` keys it implies replace the preset's, with
a log line for each change); `model.dropout`, `model.init_std` and `model.vocab_multiple` stay ours.
The weights become a slice source (`FullTensors`) that the checkpoint loader sets into every layout,
one parameter at a time. The tokenizer must be the one the token shards were made with.
"""

import json
from pathlib import Path

from gpt import log
from gpt.checkpoint.reader import FullTensors
from gpt.errors import ConfigError
from gpt.hf.config import from_hf_config
from gpt.hf.files import HFWeights
from gpt.hf.tokenizer import difference, load_hf_tokenizer
from gpt.hf.weights import from_hf, hf_names

logger = log.get("init_from")
# What an HF config.json decides; a resumed run takes them from its own checkpoint instead.
ARCHITECTURE_KEYS = ("n_layer", "n_head", "n_kv_head", "n_embd", "ffn_hidden", "max_seq_len", "vocab_size", "bias",
                     "norm", "norm_eps", "activation", "position", "rope_theta", "tie_embeddings")


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
        logger.info("architecture from %s: %s", source, "; ".join(changes))
    return changes


def check_tokenizer(directory: Path, shard_tokenizer, data_path) -> None:
    hf_tok = load_hf_tokenizer(directory)
    why = difference(shard_tokenizer, hf_tok)
    if why:
        raise ConfigError(f"model.init_from={directory} has another tokenizer than the token shards in {data_path} "
                          f"({why}); preprocess the data with tokenizer.kind=hf tokenizer.path={directory / 'tokenizer.json'}")


def weight_source(directory: Path, model_cfg, padded_vocab: int) -> FullTensors:
    """Our parameters, converted from the HF weights on demand (each rank converts only its own)."""
    weights = HFWeights(directory)
    missing = sorted(hf_names(model_cfg) - weights.keys())
    if missing:
        raise ConfigError(f"{directory} lacks {len(missing)} tensors its config.json implies (e.g. {missing[0]!r}); "
                          f"the weights do not belong to this config")
    return FullTensors(lambda name: from_hf(name, weights.get, model_cfg, padded_vocab), None, str(directory))
