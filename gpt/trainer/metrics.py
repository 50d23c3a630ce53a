"""Where metrics go: run.dir/metrics.jsonl (always) and Weights & Biases (offline unless told otherwise).

Only the logging rank writes. On resume the file is cut back to the resumed step, so it always
describes one continuous run.
"""

import json
import math
import os
from pathlib import Path

from gpt import log

logger = log.get("metrics")


def _clean(record: dict) -> dict:
    """JSON has no NaN/inf: write them as null."""
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()}


class MetricsLog:
    def __init__(self, run_dir: str | Path, *, enabled: bool, resume_step: int = 0):
        self.path = Path(run_dir) / "metrics.jsonl"
        self.enabled = enabled
        if enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._truncate_after(resume_step)
            self._file = open(self.path, "a", buffering=1)

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
        tmp.write_text("".join(k + "\n" for k in kept))
        os.replace(tmp, self.path)

    def write(self, record: dict) -> None:
        if self.enabled:
            self._file.write(json.dumps(_clean(record)) + "\n")

    def close(self) -> None:
        if self.enabled:
            self._file.close()


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
