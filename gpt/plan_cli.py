"""gpt-plan: what every rank of a training run would hold, before launching it (one process, no GPU)."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-plan [key=value ...] [nodes=N] [gpus_per_node=G] [gpu_memory=80GB]

Builds the model of a gpt-pretrain config on the meta device (no memory) and prints, per rank:
parameters, weights, gradients, optimizer state, DeepSpeed's buffers and activations (with and
without activation checkpointing), the total against the GPU memory, tokens per step, and the
nearest layouts that fit. Takes every key of gpt-pretrain. Examples:
  gpt-plan model=llama-8b parallel.tensor=8 parallel.pipeline=4 nodes=8 gpus_per_node=8 gpu_memory=80GB \\
           train.seq_len=8192 train.precision=bf16 model.vocab_size=128256
  gpt-plan model=gpt2-1.5b parallel.zero_stage=3 gpus_per_node=8 gpu_memory=24GB model.vocab_size=50257
"""


def run(cfg) -> int:
    from gpt.engine.planning import report

    print(report(cfg), flush=True)
    return 0


def main(argv=None) -> None:
    sys.exit(run_command("gpt-plan", "plan", run, USAGE, argv))


if __name__ == "__main__":
    main()
