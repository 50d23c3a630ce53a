"""gpt-pretrain: train a GPT from conf/pretrain.yaml plus overrides (one process, or under torchrun)."""

import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-pretrain [key=value ...]        (or: torchrun --nproc_per_node=N -m gpt.pretrain ...)

Trains a GPT on token shards from gpt-preprocess. Re-running the same command with the same
run.dir resumes from its latest checkpoint. Examples:
  gpt-pretrain experiment=demo
  gpt-pretrain model=gpt2-124m data.path=data/owt train.steps=5000 run.dir=runs/124m
  torchrun --nproc_per_node=8 -m gpt.pretrain parallel=tp2 parallel.zero_stage=1
"""


def run(cfg) -> int:
    from gpt.trainer.session import pretrain

    return pretrain(cfg)


def main(argv=None) -> None:
    sys.exit(run_command("gpt-pretrain", "pretrain", run, USAGE, argv))


if __name__ == "__main__":
    main()
