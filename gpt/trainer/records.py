"""Records added to a run after the fact (gpt-eval log_to_run=true): metrics.jsonl, TensorBoard, W&B.

Appends without cutting anything: the record belongs to a checkpoint's step, which may lie before
the run's last step (evaluating an older checkpoint).
"""

import json
import math
from pathlib import Path

from gpt.config.text import structured
from gpt.config.training import WandbConfig
from gpt.trainer.metrics import WandbSink
from gpt.trainer.tensorboard import TensorBoardSink


def append_record(run_dir: str | Path, record: dict, run_config: dict, wandb_id: str | None = None) -> None:
    """Add `record` (with its "step") to run_dir's metrics.jsonl, and to TensorBoard and W&B as the run's
    config (the one saved in the checkpoint) has them."""
    run_dir = Path(run_dir)
    line = json.dumps({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()})
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write(line + "\n")
    logging_cfg = run_config.get("logging", {})
    board = TensorBoardSink(run_dir, enabled=logging_cfg.get("tensorboard", True), resume_step=None)
    board.log(record)
    board.close()
    wandb_cfg = structured(WandbConfig, logging_cfg.get("wandb", {}))
    sink = WandbSink(wandb_cfg, enabled=True, run_dir=run_dir, config=run_config, run_id=wandb_id)
    sink.log(record)
    sink.finish()
