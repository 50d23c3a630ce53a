"""Runs torchrun as a child and turns stop signals into a checkpoint instead of lost work.

Why the launcher does not simply exec torchrun: SIGUSR1 (what SLURM sends before a time limit)
kills torchrun, whose default action for it is to die, and orphans the ranks; and torchrun's own
SIGTERM/SIGINT handling kills the ranks 30 s later whatever they are doing. So:

- torchrun starts with SIGUSR1 *ignored*. An ignored signal stays ignored across exec and torchrun
  installs no handler for it, so a SIGUSR1 sent to every process of a SLURM step (srun forwards it,
  `scancel --signal=USR1` sends it) leaves torchrun alone and reaches the ranks, which install their
  handler (gpt/trainer/signals.py: finish the step, save, exit 0) and ignore it until then.
- SIGUSR1, SIGTERM (Kubernetes stops a container with SIGTERM to PID 1) or a first Ctrl-C reaching
  the launcher are forwarded to the ranks (torchrun's children) as SIGUSR1, once to each rank, as
  soon as it catches SIGUSR1 (its handler shows in /proc/<pid>/status), so a signal that arrives
  while the ranks still start is held back, not lost, and the launcher interrupts each rank once.
  A second Ctrl-C goes to torchrun as SIGINT, which passes it on to the ranks: their second stop
  signal, so they stop at once, without saving (gpt/trainer/signals.py); torchrun kills what is
  left 30 s later.
- torchrun runs in its own process group, so a terminal's Ctrl-C reaches the launcher only.

A run of one process in all starts the rank itself, without torchrun (no rendezvous, no port, no
hostname to resolve): the same signals are forwarded to it directly.

Exit status: torchrun's (the rank's). After a stop signal and a clean save it is 128+signal outside SLURM, so a
scheduler that restarts failed containers (Kubernetes Jobs) starts the run again and it resumes;
under SLURM it stays 0: the batch script decides about requeueing, and `srun --kill-on-bad-exit`
must not cut the other nodes' teardown short.
"""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Mapping, Sequence

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
NO_RANKS = -1  # run()'s status when torchrun failed before starting any rank (a rendezvous that never completed)
RANK_STOP_SIGNAL = signal.SIGUSR1
POLL_S = 2.0


def say(message: str) -> None:
    print(f"gpt-launch: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], env: Mapping[str, str], *, under_slurm: bool, direct: bool = False,
        rendezvous_timeout: int | None = None) -> int:
    """direct: argv is the one rank itself (no torchrun): signals are forwarded to it.
    rendezvous_timeout: torchrun's static rendezvous bound; a torchrun that fails after waiting that long
    without ever starting a rank returns NO_RANKS (the nodes never met)."""
    stop = _StopForwarder(direct)
    previous = {sig: signal.signal(sig, stop.handle) for sig in STOP_SIGNALS}  # before torchrun exists: no gap
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), process_group=0, preexec_fn=_ignore_rank_stop_signal)
        stop.torchrun = proc
        started = direct  # whether any rank has started (torchrun's children exist once the rendezvous is done)
        began = time.monotonic()
        while True:
            if stop.signum:
                stop.forward()
            try:
                rc = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                started = started or bool(children(proc.pid))
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc < 0:  # torchrun itself died of a signal
        return 128 - rc
    waited = time.monotonic() - began
    if rc != 0 and not started and not stop.signum and rendezvous_timeout and waited >= 0.9 * rendezvous_timeout:
        return NO_RANKS
    if rc == 0 and stop.signum and not under_slurm:
        say(f"the ranks saved after {signal.Signals(stop.signum).name}; exit status {128 + stop.signum} "
            f"tells the scheduler the run is unfinished (the same command resumes it)")
        return 128 + stop.signum
    return rc


def _ignore_rank_stop_signal() -> None:
    """In the child, before exec: torchrun (and, inheriting it, the ranks until their handler) ignores SIGUSR1."""
    signal.signal(RANK_STOP_SIGNAL, signal.SIG_IGN)


class _StopForwarder:
    """Remembers the first stop signal and passes it to the ranks (torchrun's children)."""

    def __init__(self, direct: bool = False):
        self.direct = direct
        self.torchrun: subprocess.Popen | None = None
        self.signum = 0
        self.interrupts = 0
        self.told: set[int] = set()

    def handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1 and self.torchrun is not None:
                say("second Ctrl-C: stopping torchrun now, without saving")
                _kill(self.torchrun.pid, signal.SIGINT)
                return
        if not self.signum:
            self.signum = signum
            say(f"got {signal.Signals(signum).name}: asking the ranks to finish their step, save and exit"
                + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""))
        self.forward()

    def forward(self) -> None:
        if self.torchrun is None:
            return  # run() forwards as soon as torchrun exists
        for pid in [self.torchrun.pid] if self.direct else children(self.torchrun.pid):
            if pid not in self.told and catches(pid, RANK_STOP_SIGNAL):
                _kill(pid, RANK_STOP_SIGNAL)
                self.told.add(pid)


def children(pid: int) -> list[int]:
    """Direct children of `pid`, from /proc (Linux; empty elsewhere)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()  # "pid (comm) state ppid ...", comm may hold spaces
        except (OSError, IndexError):
            continue
        if len(fields) > 1 and fields[1] == str(pid):
            found.append(int(stat.parent.name))
    return found


def catches(pid: int, sig: int) -> bool:
    """Whether `pid` has a handler installed for `sig` (the SigCgt mask of /proc/<pid>/status)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("SigCgt:"):
                return bool(int(line.split()[1], 16) >> (sig - 1) & 1)
    except (OSError, ValueError, IndexError):
        pass
    return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
