"""SIGTERM / SIGUSR1: finish the current step, save, exit 0 (SLURM preemption and time limits).

The handler only sets a flag; after every step all ranks agree on it (a max all-reduce of one
integer), so every rank stops after the same step and the save is a proper collective.
"""

import signal

import torch

from gpt import log
from gpt.parallel import collectives

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
        return self.agreed_with(device)[0]

    def agreed_with(self, device, *flags: bool) -> tuple[bool, ...]:
        """(signal received, *flags), each True on every rank if it is True on any rank (collective).

        Other per-step decisions that every rank must take together ride on the same all-reduce.
        """
        return any_rank(device, bool(self.signum), *flags)

    def restore(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def any_rank(device, *flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (one all-reduce of a few integers)."""
    t = torch.tensor([int(f) for f in flags], dtype=torch.int32, device=device)
    collectives.all_reduce(t, op="max")
    return tuple(bool(x) for x in t.tolist())
