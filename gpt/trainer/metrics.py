"""Where metrics go: run.dir/metrics.jsonl (always) and Weights & Biases (offline unless told otherwise).

Only the logging rank writes. On resume the file is cut back to the resumed step, so it always
describes one continuous run. A failed write (a full disk) never raises out of a training step:
`failed` records it and the loop saves a checkpoint, then stops with one line.
"""

import json
import math
import os
from pathlib import Path

from gpt import log
from gpt.errors import TrainingError

logger = log.get("metrics")


def _clean(record: dict) -> dict:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, enabled: bool, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        self.failed: OSError | None = None
        """The error of the first write that failed (nothing is written after it)."""
        self.failed_step: int | None = None
        self.last_step = resume_step
        """The last step whose records are in the file."""
        self._fd: int | None = None
        if enabled:
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._truncate_after(resume_step)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            except OSError as e:
                raise TrainingError(f"cannot write {self.path} ({e.strerror or e}) before step {resume_step + 1}; "
                                    f"nothing was lost: free space or fix run.dir, then re-run the same command") from None

    def _truncate_after(self, step: int) -> None:
        if not self.path.exists():
            return
        kept = []
        for line in self.path.read_text().splitlines():
            try:
                if json.loads(line).get("step", 0) <= step:
                    kept.append(line)
            except json.JSONDecodeError:
                continue  # a line cut short by a crash
        tmp = self.path.with_suffix(".jsonl.tmp")
        try:
            tmp.write_text("".join(k + "\n" for k in kept))
            os.replace(tmp, self.path)
        except OSError:
            tmp.unlink(missing_ok=True)
            raise

    def write(self, record: dict) -> None:
        """Append one whole line (unbuffered: in the file when this returns); a failure is kept in
        `failed` and its partial line cut off again, so the file only ever holds complete records."""
        if not self.enabled or self.failed is not None:
            return
        data = (json.dumps(_clean(record)) + "\n").encode()
        size = os.fstat(self._fd).st_size
        try:
            done = 0
            while done < len(data):  # a short write (the disk filled up mid-line) is retried: the OS then says why
                done += os.write(self._fd, data[done:])
        except OSError as e:
            try:
                os.ftruncate(self._fd, size)  # frees space, needs none
            except OSError:
                pass
            self.failed, self.failed_step = e, record.get("step")
            logger.warning("cannot write %s at step %s (%s); saving a checkpoint, then stopping",
                           self.path, self.failed_step, e.strerror or e)
            return
        self.last_step = record.get("step", self.last_step)

    def close(self) -> None:
        if self.enabled and self._fd is not None:
            os.close(self._fd)
            self._fd = None


class WandbSink:
    """A thin wrapper so the loop never imports wandb (and disabled runs never start its service)."""

    def __init__(self, cfg, *, enabled: bool, run_dir: str | Path, config: dict, run_id: str | None):
        self.run = None
        if not enabled or cfg.mode == "disabled":
            return
        import wandb

        from gpt.config.secrets import redact

        # W&B's own fields are sent too: a secret interpolated into them is redacted like the config.
        self.run = wandb.init(project=redact(cfg.project), entity=redact(cfg.entity),
                              name=redact(cfg.name or Path(run_dir).name), mode=cfg.mode, dir=str(run_dir),
                              config=redact(config), id=run_id, resume="allow")
        if cfg.mode == "offline":
            logger.info("W&B is offline: sync later with `wandb sync %s/wandb/offline-run-*`", run_dir)

    @property
    def run_id(self) -> str | None:
        return self.run.id if self.run is not None else None

    def log(self, record: dict) -> None:
        if self.run is not None:
            self.run.log({k: v for k, v in record.items() if k != "step"}, step=record["step"])

    def finish(self) -> None:
        if self.run is not None:
            self.run.finish()
