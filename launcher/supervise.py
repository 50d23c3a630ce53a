"""Runs torchrun as a child and turns stop signals into a checkpoint instead of lost work.

Why the launcher does not simply exec torchrun: SIGUSR1 (what SLURM sends before a time limit)
kills torchrun, whose default action for it is to die, and orphans the ranks; and torchrun's own
SIGTERM/SIGINT handling kills the ranks 30 s later whatever they are doing. So:

- torchrun starts with SIGUSR1 *ignored*. An ignored signal stays ignored across exec and torchrun
  installs no handler for it, so a SIGUSR1 sent to every process of a SLURM step (srun forwards it,
  `scancel --signal=USR1` sends it) leaves torchrun alone and reaches the ranks, which install their
  handler (gpt/trainer/signals.py: finish the step, save, exit 0) and ignore it until then.
- SIGUSR1, SIGTERM (Kubernetes stops a container with SIGTERM to PID 1) or a first Ctrl-C reaching
  the launcher are forwarded to the ranks (torchrun's children) as SIGUSR1, again every few seconds
  until torchrun exits, so a signal that arrives while the ranks still start is not lost.
  A second Ctrl-C goes to torchrun as SIGINT: stop now, without saving.
- torchrun runs in its own process group, so a terminal's Ctrl-C reaches the launcher only.

Exit status: torchrun's. After a stop signal and a clean save it is 128+signal outside SLURM, so a
scheduler that restarts failed containers (Kubernetes Jobs) starts the run again and it resumes;
under SLURM it stays 0: the batch script decides about requeueing, and `srun --kill-on-bad-exit`
must not cut the other nodes' teardown short.
"""

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Mapping, Sequence

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM, signal.SIGINT)
RANK_STOP_SIGNAL = signal.SIGUSR1
RESEND_EVERY_S = 2.0


def say(message: str) -> None:
    print(f"gpt-launch: {message}", file=sys.stderr, flush=True)


def run(argv: Sequence[str], env: Mapping[str, str], *, under_slurm: bool) -> int:
    previous = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    signal.signal(RANK_STOP_SIGNAL, signal.SIG_IGN)  # inherited by torchrun and, through it, the ranks
    try:
        proc = subprocess.Popen(list(argv), env=dict(env), process_group=0)
        stop = _StopForwarder(proc)
        for sig in STOP_SIGNALS:  # until here a SIGUSR1 to the launcher was ignored, never fatal
            signal.signal(sig, stop.handle)
        while True:
            try:
                rc = proc.wait(timeout=RESEND_EVERY_S)
                break
            except subprocess.TimeoutExpired:
                if stop.signum:
                    stop.forward()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    if rc < 0:  # torchrun itself died of a signal
        return 128 - rc
    if rc == 0 and stop.signum and not under_slurm:
        say(f"the ranks saved after {signal.Signals(stop.signum).name}; exit status {128 + stop.signum} "
            f"tells the scheduler the run is unfinished (the same command resumes it)")
        return 128 + stop.signum
    return rc


class _StopForwarder:
    """Remembers the first stop signal and passes it to the ranks (torchrun's children)."""

    def __init__(self, torchrun: subprocess.Popen):
        self.torchrun = torchrun
        self.signum = 0
        self.interrupts = 0

    def handle(self, signum, frame) -> None:
        if signum == signal.SIGINT:
            self.interrupts += 1
            if self.interrupts > 1:
                say("second Ctrl-C: stopping torchrun now, without saving")
                _kill(self.torchrun.pid, signal.SIGINT)
                return
        if not self.signum:
            self.signum = signum
            say(f"got {signal.Signals(signum).name}: asking the ranks to finish their step, save and exit"
                + (" (Ctrl-C again stops at once)" if signum == signal.SIGINT else ""))
        self.forward()

    def forward(self) -> None:
        for pid in children(self.torchrun.pid):
            _kill(pid, RANK_STOP_SIGNAL)


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


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
