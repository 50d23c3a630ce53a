"""gpt-finetune: train a checkpoint (ours, any layout, or a local HF directory) on new data, fully or
with LoRA / bottleneck adapters / BitFit. The same training loop as gpt-pretrain."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-finetune checkpoint=<run.dir|checkpoint dir|.../checkpoints/best|HF dir> data.path=<shards>
                    [peft=none|lora|adapter|bitfit] [key=value ...]
       (or: torchrun --nproc_per_node=N -m gpt.finetune ...; python -m launcher finetune ...)

Starts from the checkpoint's weights and architecture with a fresh optimizer, in a new run.dir;
re-running the same command resumes from that run.dir's own latest checkpoint. Examples:
  gpt-finetune checkpoint=runs/base data.path=data/sft peft=lora peft.rank=16 run.dir=runs/sft-lora
  gpt-finetune checkpoint=hf/gpt2 data.path=data/sft peft=bitfit eval.every=50 eval.early_stopping.patience=3
  torchrun --nproc_per_node=2 -m gpt.finetune checkpoint=runs/base data.path=data/sft peft=lora parallel=tp2
"""


def run(cfg) -> int:
    from gpt.pretrain import preflight

    preflight(cfg)
    from gpt.trainer.session import finetune

    return finetune(cfg)


def main(argv=None) -> None:
    sys.exit(run_command("gpt-finetune", "finetune", run, USAGE, argv))


if __name__ == "__main__":
    main()
