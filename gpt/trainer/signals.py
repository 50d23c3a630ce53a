"""SIGTERM / SIGUSR1: finish the current step, save, exit 0 (SLURM preemption and time limits).

The handler only sets a flag; after every step all ranks agree on it (a max all-reduce of one
integer), so every rank stops after the same step and the save is a proper collective.
"""

import signal

import torch
import torch.distributed as dist

from gpt import log

logger = log.get("signals")

HANDLED = (signal.SIGTERM, signal.SIGUSR1)


class StopRequest:
    def __init__(self):
        self.signum = 0
        self._previous = {}

    def install(self) -> "StopRequest":
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        if not self.signum:
            logger.warning("received %s: finishing this step, then saving and exiting", signal.Signals(signum).name)
        self.signum = signum

    def agreed(self, device) -> bool:
        """True on every rank if any rank received a signal (collective)."""
        flag = torch.tensor([1 if self.signum else 0], dtype=torch.int32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
