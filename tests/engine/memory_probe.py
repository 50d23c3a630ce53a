"""`python -m tests.engine.memory_probe <gpt-pretrain overrides>`: a real gpt-pretrain run in this
process, then one JSON line per rank: the resident memory (RSS) right before the engine is built and
the process's peak RSS at the end (bytes). Test-only; the wrap below is restored by exiting."""

import json
import os
import resource
import sys

import psutil

import gpt.trainer.session as session
from gpt.config import compose


def main(argv: list[str]) -> None:
    before = []
    build_engine = session.build_engine

    def build(*args, **kwargs):
        before.append(psutil.Process().memory_info().rss)
        return build_engine(*args, **kwargs)

    session.build_engine = build
    session.pretrain(compose("pretrain", argv))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    print(json.dumps({"rank": int(os.environ.get("RANK", 0)), "before_engine": before[0], "peak": peak}))


if __name__ == "__main__":
    main(sys.argv[1:])
