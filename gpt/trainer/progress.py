"""The progress line: step, loss, learning rate, throughput and ETA every `logging.every` steps."""

import time

from gpt import log

logger = log.get("train")


def _duration(seconds: float) -> str:
    seconds = int(max(0, seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


class Progress:
    def __init__(self, total_steps: int, start_step: int, every: int, enabled: bool):
        self.total, self.every, self.enabled = total_steps, every, enabled
        self.t0, self.step0 = time.perf_counter(), start_step

    def update(self, step: int, loss: float, lr: float, grad_norm: float, tokens_per_s: float, extra: str = "") -> None:
        if not self.enabled or not self.every or (step % self.every and step != self.total):
            return
        elapsed = time.perf_counter() - self.t0
        rate = (step - self.step0) / elapsed if elapsed > 0 else 0.0
        eta = (self.total - step) / rate if rate > 0 else float("nan")
        logger.info("step %d/%d | loss %.4f | lr %.2e | grad norm %.3f | %s tok/s | ETA %s%s", step, self.total, loss,
                    lr, grad_norm, f"{tokens_per_s:,.0f}", _duration(eta) if eta == eta else "?", extra)
