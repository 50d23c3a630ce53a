"""What a resumed run must share with its checkpoint (no torch: entry points check it in the first second)."""

from pathlib import Path

from gpt.errors import CheckpointError

# Model keys that decide the shapes (or the meaning) of the saved tensors.
ARCHITECTURE = ("n_layer", "n_head", "n_kv_head", "n_embd", "ffn_hidden", "vocab_multiple", "bias", "norm",
                "activation", "position", "tie_embeddings")


def architecture_keys(model_cfg: dict) -> tuple[str, ...]:
    """ARCHITECTURE, plus max_seq_len where it sizes a weight (learned positions: the position table).
    With rope, max_seq_len is only the length of a cache: a resume may change it."""
    return ARCHITECTURE + (("max_seq_len",) if model_cfg.get("position") == "learned" else ())


def check_architecture(meta: dict, model_cfg: dict, ckpt: Path) -> None:
    saved = meta["config"]["model"]
    for key in architecture_keys(saved):
        if saved.get(key) != model_cfg.get(key):
            raise CheckpointError(f"{ckpt} was trained with model.{key}={saved.get(key)}, the config says "
                                  f"model.{key}={model_cfg.get(key)}; use the same model or a new run.dir")
