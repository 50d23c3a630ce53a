"""A checkpoint of any parallel layout -> a Hugging Face directory that `transformers` loads.

    <output>/config.json             GPT2LMHeadModel or LlamaForCausalLM config
    <output>/generation_config.json  eos/bos = our end-of-document token
    <output>/model.safetensors       weights (sharded with an index above 5 GB)
    <output>/tokenizer.json, tokenizer_config.json, special_tokens_map.json
    <output>/gpt_source.json         which checkpoint (step, code version) it came from

The directory is written beside its final name and renamed into place, so a half-written export
never looks like a model.
"""

import json
import shutil
from pathlib import Path

import torch

from gpt import log
from gpt.checkpoint import format as fmt
from gpt.checkpoint.reader import full_state_dict
from gpt.data import tokenizer_from_dict
from gpt.errors import CheckpointError, ConfigError
from gpt.hf.config import family, to_hf_config
from gpt.hf.files import write_weights
from gpt.hf.tokenizer import export_tokenizer
from gpt.hf.weights import to_hf

logger = log.get("export")
DTYPES = {"fp32": (torch.float32, "float32"), "bf16": (torch.bfloat16, "bfloat16"), "fp16": (torch.float16, "float16")}
SOURCE = "gpt_source.json"


def _write_json(path: Path, obj: dict) -> None:
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def prepare_output(output: Path, overwrite: bool) -> Path:
    """A fresh temporary directory beside `output` (which must be absent, empty, or overwritable)."""
    if output.exists() and (not output.is_dir() or any(output.iterdir())) and not overwrite:
        raise ConfigError(f"output={output} exists and is not empty; choose another directory or set overwrite=true")
    output.parent.mkdir(parents=True, exist_ok=True)
    tmp = output.with_name(f".tmp-{output.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def finish_output(tmp: Path, output: Path) -> None:
    if output.exists():
        shutil.rmtree(output) if output.is_dir() else output.unlink()
    tmp.rename(output)


def export_hf(checkpoint: str | Path, output: str | Path, *, dtype: str = "fp32", overwrite: bool = False) -> Path:
    """Write the HF directory for `checkpoint` (a run.dir or a checkpoint dir) to `output`."""
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype} is not one of {'|'.join(DTYPES)}")
    ckpt = fmt.resolve(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint under {checkpoint} (expected a run.dir with checkpoints/, or a checkpoint directory)")
    meta = fmt.read_meta(ckpt)
    m = meta["config"]["model"]
    family(m)  # fails early, before any file is written, for models with no HF class
    if meta.get("tokenizer") is None:
        raise CheckpointError(f"{ckpt / fmt.META} records no tokenizer, which the export needs")
    tokenizer = tokenizer_from_dict(meta["tokenizer"], ckpt)
    vocab = m.get("vocab_size") or tokenizer.vocab_size
    torch_dtype, dtype_name = DTYPES[dtype]
    tensors = {k: v.to(torch_dtype) for k, v in to_hf(full_state_dict(ckpt, meta), m, vocab).items()}

    output = Path(output)
    tmp = prepare_output(output, overwrite)
    files = write_weights(tensors, tmp)
    eod, eod_id = export_tokenizer(tokenizer, tmp, model_max_length=m["max_seq_len"])
    _write_json(tmp / "config.json", to_hf_config(m, vocab_size=vocab, eos_id=eod_id, bos_id=eod_id, dtype=dtype_name))
    _write_json(tmp / "generation_config.json", {"bos_token_id": eod_id, "eos_token_id": eod_id, "pad_token_id": eod_id})
    _write_json(tmp / SOURCE, {"checkpoint": str(ckpt.resolve()), "step": meta["step"], "code": meta.get("code"),
                               "layout": meta["layout"], "dtype": dtype, "end_of_document": eod})
    finish_output(tmp, output)
    logger.info("exported %s (step %d, %s) to %s: %s", ckpt, meta["step"], family(m), output, ", ".join(files))
    return output
