"""Logging to stderr (stdout stays clean for generated text and JSON results).

Rank 0 logs at INFO; other ranks only warnings and errors, prefixed with their rank.
"""

import logging
import os
import sys
import warnings

_FORMAT = "%(asctime)s %(levelname).1s %(name)s: %(message)s"


# Import-time notices of optional accelerations we do not use (Transformer Engine, Apex).
_NOISE = ("Transformer Engine and Apex are not installed", "apex is not installed", "Apex is not installed")


def setup(rank: int | None = None, level: int = logging.INFO) -> None:
    for text in _NOISE:
        warnings.filterwarnings("ignore", message=f".*{text}.*")
    if rank is None:
        rank = int(os.environ.get("RANK", "0"))
    root = logging.getLogger("gpt")
    root.handlers.clear()
    handler = logging.StreamHandler(sys.stderr)
    prefix = "" if rank == 0 else f"[rank {rank}] "
    handler.setFormatter(logging.Formatter(prefix + _FORMAT, datefmt="%H:%M:%S"))
    root.addHandler(handler)
    root.setLevel(level if rank == 0 else logging.WARNING)
    root.propagate = False


def get(name: str) -> logging.Logger:
    return logging.getLogger(name if name.startswith("gpt") else f"gpt.{name}")
