"""TensorBoard beside metrics.jsonl and W&B: every metrics record as scalars under run.dir/tensorboard.

Only the logging rank writes. Records are the same dicts metrics.jsonl gets; each numeric field
becomes one scalar at the record's step, tagged by what the record is:

    step records           loss, lr, grad_norm, tokens_per_s, mfu, skipped_steps, ...  -> train/<field>
    evaluation records     val_loss, val_ppl, eval_time_s                              -> val/loss, val/ppl, val/eval_time_s
    downstream task records ("hellaswag/acc", ..., tasks_time_s)                      -> eval/<field>

On resume the writer starts a new event file with a SessionLog START at resume_step + 1
(SummaryWriter's purge_step): TensorBoard then drops everything the interrupted run logged past the
checkpoint it resumed from, so the curves continue without duplicates.
"""

import math
from pathlib import Path

from gpt import log

logger = log.get("tensorboard")

DIR = "tensorboard"


def scalar_tags(record: dict) -> dict[str, float]:
    """The scalars of one metrics record, by TensorBoard tag (None, NaN/inf and non-numbers left out)."""
    if any("/" in key for key in record):
        kind = "eval"  # downstream tasks: eval/<task>/<metric>, eval/tasks_time_s
    else:
        kind = "val" if "val_loss" in record else "train"
    out = {}
    for key, value in record.items():
        if key == "step" or not isinstance(value, (int, float)) or not math.isfinite(value):
            continue
        out[f"{kind}/{key.removeprefix('val_') if kind == 'val' else key}"] = float(value)
    return out


class TensorBoardSink:
    """run.dir/tensorboard event files, flushed every `flush_every` steps and on close."""

    def __init__(self, run_dir: str | Path, *, enabled: bool, resume_step: int | None = 0, flush_every: int = 10):
        """resume_step: hide what an earlier attempt logged past this step; None appends, hiding nothing."""
        self.writer = None
        self.flush_every = max(1, flush_every)
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: events with step >= resume_step + 1 from an earlier attempt are hidden.
        purge = None if resume_step is None else resume_step + 1
        self.writer = SummaryWriter(log_dir=str(Path(run_dir) / DIR), purge_step=purge,
                                    max_queue=1000, flush_secs=60)

    def log(self, record: dict) -> None:
        if self.writer is None:
            return
        step = int(record["step"])
        for tag, value in scalar_tags(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        if "val_loss" in record or step % self.flush_every == 0:
            self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
