"""SIGTERM / SIGUSR1 / a first Ctrl-C: finish the current step, save, exit (preemption, time limits, a user).

The handler only sets a flag; all ranks agree on it (a max all-reduce of one integer) after every
step, before every evaluation batch and after every save (loop.py), so every rank stops at the same
boundary and the save is a proper collective. SIGTERM and SIGUSR1 then exit 0 (what SLURM expects of
a preempted step); Ctrl-C exits 130, as an interrupted command does.

A second Ctrl-C, at least REPEAT_S after the first, stops at once without saving (KeyboardInterrupt).
SIGINTs closer together are one Ctrl-C: bare torchrun forwards the terminal's SIGINT to ranks that
received it already.
"""

import signal
import time

import torch

from gpt import log
from gpt.parallel import collectives

logger = log.get("signals")

HANDLED = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)
REPEAT_S = 1.0
"""A SIGINT later than this after the first stop signal aborts; earlier ones are the same Ctrl-C."""


class StopRequest:
    def __init__(self):
        self.signum = 0
        self._first_at = 0.0
        self._previous = {}

    def install(self) -> "StopRequest":
        for sig in HANDLED:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame):
        now = time.monotonic()
        if self.signum:
            if signum == signal.SIGINT and now - self._first_at >= REPEAT_S:
                logger.warning("second Ctrl-C: stopping now, without saving")
                raise KeyboardInterrupt
            return
        self.signum, self._first_at = signum, now
        logger.warning("received %s: finishing this step, then saving and exiting%s", signal.Signals(signum).name,
                       " (Ctrl-C again stops at once, without saving)" if signum == signal.SIGINT else "")

    @property
    def interrupted(self) -> bool:
        """Whether the stop came from Ctrl-C (the command then exits 130)."""
        return self.signum == signal.SIGINT

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
