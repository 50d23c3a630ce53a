"""What a resumed run must share with its checkpoint (no torch: entry points check it in the first second)."""

from pathlib import Path

from gpt.errors import CheckpointError

# Model fields that change the meaning or shape of the weights; everything else may differ on resume.
ARCHITECTURE = ("n_layer", "n_head", "n_kv_head", "n_embd", "ffn_hidden", "vocab_multiple", "bias", "norm",
                "activation", "position", "tie_embeddings", "rope_theta", "rope_scaling", "rope_factor",
                "rope_original_max_seq_len", "rope_low_freq_factor", "rope_high_freq_factor")
# What a checkpoint saved before a key existed meant by it.
ARCHITECTURE_DEFAULTS = {"rope_scaling": "none", "rope_factor": 1.0, "rope_original_max_seq_len": None,
                         "rope_low_freq_factor": 1.0, "rope_high_freq_factor": 4.0}


def architecture_keys(model_cfg: dict) -> tuple[str, ...]:
    """ARCHITECTURE, plus max_seq_len where it sizes a weight (learned positions: the position table).
    With rope, max_seq_len is only the length of a cache: a resume may change it."""
    return ARCHITECTURE + (("max_seq_len",) if model_cfg.get("position") == "learned" else ())


def check_architecture(meta: dict, model_cfg: dict, ckpt: Path) -> None:
    saved = meta["config"]["model"]
    for key in architecture_keys(saved):
        was, now = saved.get(key, ARCHITECTURE_DEFAULTS.get(key)), model_cfg.get(key, ARCHITECTURE_DEFAULTS.get(key))
        if was != now:
            raise CheckpointError(f"{ckpt} was trained with model.{key}={was}, the config says "
                                  f"model.{key}={now}; use the same model or a new run.dir")
