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


def preflight(cfg) -> None:
    """Every check that needs no torch, so that a bad value fails in the first second: the architecture
    model.init_from decides, the rules of gpt/config/validate.py, and a resume's architecture against
    run.dir's latest checkpoint. (The session checks them again, then the memory estimate.)"""
    from dataclasses import asdict

    from gpt.checkpoint import format as fmt
    from gpt.checkpoint.compat import check_architecture
    from gpt.config.validate import validate_training
    from gpt.engine.deepspeed_config import deepspeed_config
    from gpt.errors import CheckpointError
    from gpt.trainer.init_from import apply_architecture

    if cfg.model.init_from:
        apply_architecture(cfg)
    deepspeed_config(cfg, validate_training(cfg))  # the pass-through keys: derived ones refused, types kept
    try:
        latest = next(((c, fmt.read_meta(c)) for c in fmt.candidates(cfg.run.dir)), None)
    except CheckpointError:
        return  # a damaged checkpoint: the resume reports it (or falls back)
    if latest is not None:
        check_architecture(latest[1], asdict(cfg.model), latest[0])


def run(cfg) -> int:
    preflight(cfg)
    from gpt.trainer.session import pretrain

    return pretrain(cfg)


def main(argv=None) -> None:
    sys.exit(run_command("gpt-pretrain", "pretrain", run, USAGE, argv))


if __name__ == "__main__":
    main()
