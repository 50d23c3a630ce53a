"""Where a run's first weights come from: `model.init_from` (gpt-finetune's `checkpoint=`).

Either a local Hugging Face directory (GPT-2 / Llama config.json + weights, see gpt/hf/init_from.py)
or one of our checkpoints (a run.dir, a checkpoint directory or a `latest`/`best` pointer) of any
layout, possibly itself fine-tuned (see checkpoint/base_weights.py). The architecture comes from
there; a resumed run takes it from its own latest checkpoint and never reads the source again.

This module imports no torch at import time: the launcher uses `apply_architecture` to validate a
layout against the real model before starting any process.
"""

from pathlib import Path

from gpt.checkpoint import format as fmt
from gpt.errors import CheckpointError, ConfigError
from gpt.hf.config import ARCHITECTURE_KEYS, ROPE_KEYS
from gpt.hf.config import apply_architecture as apply_fields
from gpt.hf.config import architecture as hf_architecture

# What one of our checkpoints decides besides the HF keys: the vocabulary padding (the saved
# embedding's shape), the init scale and the preset name.
CHECKPOINT_KEYS = ARCHITECTURE_KEYS + ("vocab_multiple", "init_std", "name")


def is_hf_dir(path) -> bool:
    return (Path(path) / "config.json").is_file()


def base_checkpoint(path, *, verify: bool = True) -> tuple[Path, dict]:
    """Our checkpoint named by `path` (validated: sizes, and checksums with verify) and its meta.json."""
    if not fmt.candidates(path):
        raise ConfigError(f"model.init_from={path} is neither a Hugging Face directory (no config.json) nor a gpt "
                          f"checkpoint (a run.dir with checkpoints/, a checkpoint directory or a pointer file)")
    ckpt = fmt.resolve(path, verify=verify)
    return ckpt, fmt.read_meta(ckpt)


def _own_checkpoints(cfg) -> list[Path]:
    """The run's own checkpoints to resume from (an unreadable `latest` is skipped with checkpoint.fallback)."""
    try:
        return fmt.candidates(cfg.run.dir)
    except CheckpointError:
        if not cfg.checkpoint.fallback:
            raise
        return fmt.candidates(cfg.run.dir, ignore_latest=True)


def apply_architecture(cfg) -> None:
    """Set cfg.model's architecture keys from the run's own checkpoint (a resume) or model.init_from."""
    for ckpt in _own_checkpoints(cfg):
        try:
            saved = fmt.read_meta(ckpt)["config"]["model"]
        except CheckpointError:
            continue  # damaged: the resume itself reports it (or falls back)
        apply_fields(cfg.model, {k: saved[k] for k in CHECKPOINT_KEYS if k in saved}, str(ckpt))
        return
    source = cfg.model.init_from
    if is_hf_dir(source):
        fields, where = hf_architecture(Path(source)), str(Path(source) / "config.json")
    else:
        ckpt, meta = base_checkpoint(source, verify=False)
        saved = meta["config"]["model"]
        fields, where = {k: saved[k] for k in CHECKPOINT_KEYS if k in saved}, str(ckpt)
    apply_fields(cfg.model, extend_context(cfg.model, fields), where)


def extend_context(model_cfg, fields: dict) -> dict:
    """The source's architecture `fields`, or, when the config asks for RoPE scaling (model.rope_scaling
    other than none) on a rotary source, those fields extended: the config's scaling instead of the
    source's, model.rope_original_max_seq_len = the source's unscaled context, and model.max_seq_len =
    that context x model.rope_factor (continued pretraining at a longer context)."""
    if model_cfg.rope_scaling == "none" or fields.get("position") != "rope":
        return fields
    if fields.get("rope_scaling", "none") != "none":
        original = fields.get("rope_original_max_seq_len") or round(fields["max_seq_len"] / fields["rope_factor"])
    else:
        original = fields["max_seq_len"]
    original = model_cfg.rope_original_max_seq_len or original
    kept = {k: v for k, v in fields.items() if k not in ROPE_KEYS or k == "rope_theta"}
    return {**kept, "max_seq_len": int(round(original * model_cfg.rope_factor)), "rope_original_max_seq_len": original}


def prepare(cfg, data_path: Path) -> None:
    """The architecture (see apply_architecture), and for a fresh run a check that the source's
    tokenizer is the data's and that its weights can start this run; before any process group."""
    apply_architecture(cfg)
    if _own_checkpoints(cfg):
        return  # a resume: checked against the run's own checkpoint
    from gpt.data import load_tokenizer

    source = cfg.model.init_from
    if is_hf_dir(source):
        from gpt.hf import init_from as hf

        hf.check_tokenizer(Path(source), load_tokenizer(data_path), data_path)
        return
    from gpt.checkpoint.base_weights import CheckpointWeights
    from gpt.checkpoint.reader import check_tokenizer

    ckpt, meta = base_checkpoint(source)
    check_tokenizer(meta, load_tokenizer(data_path), ckpt, data_path)
    CheckpointWeights(ckpt, meta, getattr(cfg, "peft", None))  # refuses adapters it cannot fold


def weight_source(cfg, padded_vocab: int):
    """(source, skip): a slice source of the starting weights, and which of our parameters keep
    their fresh init (PEFT parameters the source does not have)."""
    from gpt.peft import is_peft_name

    source = cfg.model.init_from
    if is_hf_dir(source):
        from gpt.hf import init_from as hf

        return hf.weight_source(Path(source), cfg.model, padded_vocab), is_peft_name
    from gpt.checkpoint.base_weights import CheckpointWeights

    ckpt, meta = base_checkpoint(source, verify=False)  # prepare() verified it before the process groups
    weights = CheckpointWeights(ckpt, meta, getattr(cfg, "peft", None))
    return weights, lambda name: is_peft_name(name) and not weights.has(name)
