"""`python -m tests.engine.memory_probe <gpt-pretrain overrides>`: a real gpt-pretrain run in this
process, then one JSON line per rank: the resident memory (RSS) right before the engine is built and
the process's peak RSS from then on (bytes): the kernel's high-water mark is reset when the engine
build starts (Linux /proc/self/clear_refs), so a spike before it (imports, data loading) cannot hide
the growth. Test-only; the wrap below is restored by exiting."""

import json
import os
import sys

import psutil

import gpt.trainer.session as session
from gpt.config import compose


def high_water_mark() -> int:
    """Peak RSS since the last reset, in bytes (VmHWM of /proc/self/status, in kB)."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main(argv: list[str]) -> None:
    before = []
    build_engine = session.build_engine

    def build(*args, **kwargs):
        before.append(psutil.Process().memory_info().rss)
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (the peak RSS) to the current RSS
        return build_engine(*args, **kwargs)

    session.build_engine = build
    session.pretrain(compose("pretrain", argv))
    peak = high_water_mark()
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "before_engine": before[0], "peak": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
