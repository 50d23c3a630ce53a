"""gpt-eval: validation loss and perplexity, or lm-evaluation-harness tasks, of a checkpoint (any layout,
PEFT included) as one JSON line on stdout."""

import json
import math
import sys

from gpt.cli import run_command

USAGE = """
usage: gpt-eval checkpoint=<run.dir|checkpoint dir|.../checkpoints/best> [data.path=<shards>] [split=val|all]
       gpt-eval checkpoint=... tasks=[hellaswag,arc_easy] [limit=N num_fewshot=K tasks_path=<dir> log_to_run=true]

Prints {"loss": ..., "ppl": ..., "tokens": ..., ...} on one line. data.* defaults to the checkpoint's
training data; split=val evaluates the documents training held out, split=all every document.
With tasks=[...], runs them through lm-evaluation-harness instead and prints {"<task>/<metric>": ...};
log_to_run=true also records them in the checkpoint's run (metrics.jsonl, TensorBoard, W&B).
"""


def run(cfg) -> int:
    from dataclasses import replace

    from gpt.config.text import structured
    from gpt.config.training import DataConfig
    from gpt.config.validate import validate_evaluate
    from gpt.data import build_loaders
    from gpt.data.tokenizer import identity
    from gpt.errors import DataError
    from gpt.generation.loading import load_model, release
    from gpt.generation.scoring import mean_loss

    validate_evaluate(cfg)
    if cfg.tasks:
        return run_tasks(cfg)
    loaded = load_model(cfg.checkpoint, cfg.device)
    try:
        trained = structured(DataConfig, loaded.meta["config"]["data"])  # data from the checkpoint: never resolved
        data = DataConfig(**{k: (v if v is not None else getattr(trained, k)) for k, v in vars(cfg.data).items()})
        if cfg.data.path and not cfg.data.blend:
            data = replace(data, blend=None)
        if cfg.split == "all":
            data = replace(data, val_path=data.path)
        seq_len = loaded.meta["config"]["train"]["seq_len"]
        _, val = build_loaders(data, seq_len=seq_len, global_batch_size=cfg.batch_size,
                               micro_batch_size=cfg.batch_size, dp_rank=0, dp_size=1, seed=0)
        if val is None:
            raise DataError("no validation split: set data.val_fraction>0, data.val_path, or split=all")
        # What defines the tokenizer (a tokenizer.json by the hash of its content), not where its file was.
        if identity(val.tokenizer.to_dict()) != identity(loaded.tokenizer.to_dict()):
            raise DataError(f"{data.val_path or data.path} was tokenised with {identity(val.tokenizer.to_dict())}, "
                            f"the checkpoint with {identity(loaded.tokenizer.to_dict())}; preprocess with the same tokenizer")
        batches = cfg.iters or max(1, math.ceil(val.samples_per_epoch / cfg.batch_size))
        device = next(loaded.model.parameters()).device
        result = mean_loss(loaded.model, val, batches=batches, device=device)
        print(json.dumps({"checkpoint": str(loaded.checkpoint), "step": loaded.meta["step"], "split": cfg.split,
                          "seq_len": seq_len, **result}), flush=True)
    finally:
        release()
    return 0


def run_tasks(cfg) -> int:
    """lm-evaluation-harness tasks on the checkpoint's one-process model (PEFT modules rebuilt, unmerged)."""
    from gpt.generation import harness
    from gpt.generation.loading import load_model, release

    manager = harness.task_manager(cfg.tasks, cfg.tasks_path)  # unknown task names fail before the model loads
    loaded = load_model(cfg.checkpoint, cfg.device)
    try:
        lm = harness.GptLM(harness.local_backend(loaded), loaded.tokenizer, max_length=loaded.context_length,
                           batch_size=cfg.batch_size)
        metrics = harness.evaluate_tasks(lm, cfg.tasks, limit=cfg.limit, num_fewshot=cfg.num_fewshot, manager=manager)
        step = loaded.meta["step"]
        print(json.dumps({"checkpoint": str(loaded.checkpoint), "step": step, "tasks": list(cfg.tasks),
                          "limit": cfg.limit, **metrics}), flush=True)
        if cfg.log_to_run:
            from gpt.trainer.records import append_record

            run_dir = loaded.checkpoint.parent.parent  # <run.dir>/checkpoints/step_N
            append_record(run_dir, {"step": step, **metrics}, loaded.meta["config"],
                          wandb_id=loaded.meta.get("trainer", {}).get("wandb_id"))
    finally:
        release()
    return 0


def main(argv=None) -> None:
    sys.exit(run_command("gpt-eval", "eval", run, USAGE, argv))


if __name__ == "__main__":
    main()
