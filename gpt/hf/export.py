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
from gpt.hf.peft_export import ADAPTER_CONFIG, ADAPTER_WEIGHTS, GPT_PEFT, lora_to_peft
from gpt.hf.tokenizer import export_tokenizer
from gpt.hf.weights import to_hf
from gpt.paths import refuse_overlap
from gpt.peft import is_peft_name, merge_lora_state

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


def export_hf(checkpoint: str | Path, output: str | Path, *, dtype: str = "fp32", overwrite: bool = False,
              merge_peft: bool = False) -> Path:
    """Write the HF directory for `checkpoint` (a run.dir, checkpoint dir or pointer file) to `output`.

    A fine-tuned checkpoint: `merge_peft` folds LoRA into the weights (a plain model); otherwise the
    plain base model goes to `output/base` and the PEFT tensors on their own to `output`.
    """
    if dtype not in DTYPES:
        raise ConfigError(f"dtype={dtype} is not one of {'|'.join(DTYPES)}")
    ckpt = fmt.resolve(checkpoint)
    if ckpt is None:
        raise CheckpointError(f"no checkpoint under {checkpoint} (expected a run.dir with checkpoints/, or a checkpoint directory)")
    meta = fmt.read_meta(ckpt)
    # overwrite=true replaces the output: it must not be, hold or sit inside what is being exported.
    refuse_overlap(output, [checkpoint, ckpt], input_key="checkpoint", error=ConfigError)
    m = meta["config"]["model"]
    family(m)  # fails early, before any file is written, for models with no HF class
    if meta.get("tokenizer") is None:
        raise CheckpointError(f"{ckpt / fmt.META} records no tokenizer, which the export needs")
    tokenizer = tokenizer_from_dict(meta["tokenizer"], ckpt)
    vocab = m.get("vocab_size") or tokenizer.vocab_size
    peft = meta["config"].get("peft") or {"method": "none"}
    method = peft["method"]
    if method == "adapter" and merge_peft:
        raise ConfigError(f"{ckpt} was fine-tuned with bottleneck adapters, which are nonlinear and cannot be folded "
                          f"into the weights; export with merge_peft=false (base model + adapter tensors)")
    state = full_state_dict(ckpt, meta)
    separate = method in ("lora", "adapter") and not merge_peft
    peft_tensors = {k: v for k, v in state.items() if is_peft_name(k)}
    base = {k: v for k, v in state.items() if not is_peft_name(k)} if separate else merge_lora_state(state, peft)

    output = Path(output)
    tmp = prepare_output(output, overwrite)
    source = {"checkpoint": str(ckpt.resolve()), "step": meta["step"], "code": meta.get("code"),
              "layout": meta["layout"], "dtype": dtype, "peft": peft, "merged_peft": method != "none" and not separate}
    model_dir = tmp / "base" if separate else tmp
    model_dir.mkdir(exist_ok=True)
    files = _write_model(base, m, vocab, tokenizer, model_dir, dtype, source)
    if separate:
        export_tokenizer(tokenizer, tmp, model_max_length=m["max_seq_len"])
        files += _write_peft(peft_tensors, m, peft, tmp, output, dtype, source)
    finish_output(tmp, output)
    logger.info("exported %s (step %d, %s%s) to %s: %s", ckpt, meta["step"], family(m),
                f", peft {method}" + (" merged" if not separate else " on its own, base model in base/")
                if method != "none" else "", output, ", ".join(files))
    return output


def _write_model(state: dict, m: dict, vocab: int, tokenizer, out: Path, dtype: str, source: dict) -> list[str]:
    """A plain transformers model directory from our (merged or base) full state dict."""
    torch_dtype, dtype_name = DTYPES[dtype]
    tensors = {k: v.to(torch_dtype) for k, v in to_hf(state, m, vocab).items()}
    files = write_weights(tensors, out)
    eod, eod_id = export_tokenizer(tokenizer, out, model_max_length=m["max_seq_len"])
    _write_json(out / "config.json", to_hf_config(m, vocab_size=vocab, eos_id=eod_id, bos_id=eod_id, dtype=dtype_name))
    _write_json(out / "generation_config.json", {"bos_token_id": eod_id, "eos_token_id": eod_id, "pad_token_id": eod_id})
    _write_json(out / SOURCE, {**source, "end_of_document": eod})
    return files


def _write_peft(tensors: dict, m: dict, peft: dict, tmp: Path, output: Path, dtype: str, source: dict) -> list[str]:
    """LoRA in the `peft` library's format; adapters under our names with gpt_peft.json."""
    from safetensors.torch import save_file

    torch_dtype = DTYPES[dtype][0]
    if peft["method"] == "lora":
        weights, config = lora_to_peft(tensors, m, peft)
        # Where the base model will be once the directory is in place (peft loads it from here).
        config["base_model_name_or_path"] = str((output / "base").resolve())
        _write_json(tmp / ADAPTER_CONFIG, config)
        save_file({k: v.to(torch_dtype).contiguous() for k, v in weights.items()}, str(tmp / ADAPTER_WEIGHTS),
                  metadata={"format": "pt"})
        _write_json(tmp / SOURCE, source)
        return [ADAPTER_CONFIG, ADAPTER_WEIGHTS]
    save_file({k: v.to(torch_dtype).contiguous() for k, v in tensors.items()}, str(tmp / "adapters.safetensors"),
              metadata={"format": "pt"})
    _write_json(tmp / GPT_PEFT, {**peft, "placement": "blocks.<i>.attn.proj.adapter.* follows the attention output "
                                 "projection, blocks.<i>.mlp.<proj|down>.adapter.* the MLP output projection: "
                                 "h + up(gelu(down(h)))", "source": source})
    return ["adapters.safetensors", GPT_PEFT]
