"""gpt-export: a checkpoint of any parallel layout -> a Hugging Face directory (`transformers` loads it)."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-export checkpoint=<run.dir|checkpoint dir|.../checkpoints/best> output=<dir>
                  [format=hf dtype=fp32|bf16|fp16 overwrite=true merge_peft=true|false]

Writes config.json, model.safetensors and a fast tokenizer that AutoModelForCausalLM and
AutoTokenizer load: GPT-2 style models as GPT2LMHeadModel, Llama style ones as LlamaForCausalLM.
A LoRA/adapter fine-tune: merge_peft=true folds LoRA into the weights; false (default) writes the
base model to <output>/base and the adapter on its own (LoRA: adapter_config.json +
adapter_model.safetensors, loadable with peft.PeftModel.from_pretrained).
"""


def run(cfg) -> int:
    from gpt.errors import ConfigError
    from gpt.hf.export import export_hf

    if not cfg.checkpoint or not cfg.output:
        raise ConfigError("checkpoint and output are required: gpt-export checkpoint=<run.dir> output=<dir>")
    if cfg.format != "hf":
        raise ConfigError(f"format={cfg.format} is not supported; use format=hf")
    out = export_hf(cfg.checkpoint, cfg.output, dtype=cfg.dtype, overwrite=cfg.overwrite, merge_peft=cfg.merge_peft)
    print(out)
    return 0


def main(argv=None) -> None:
    sys.exit(run_command("gpt-export", "export", run, USAGE, argv))


if __name__ == "__main__":
    main()
