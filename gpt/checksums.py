"""File checksums recorded beside the files they cover: a checkpoint's meta.json (XXH3-128 since
checkpoint format version 2) and a shard directory's metadata.json (since shard format version 3).

The checksum is there to catch damage (a truncated copy, bit rot, a file from another run), not an
adversary, so it needs no cryptographic hash: XXH3-128 costs ~5-10x less CPU than sha256 here
(docs/choices.md), which is what a preprocessing main process or a resume spends on it. sha256
records of older versions are still checked.
"""

import hashlib
import os
import re

import xxhash

DEFAULT = "xxh3_128"
ALGORITHMS = {"xxh3_128": xxhash.xxh3_128, "sha256": hashlib.sha256}
_BLOCK = 4 << 20
HEX = {"xxh3_128": re.compile(r"^[0-9a-f]{32}$"), "sha256": re.compile(r"^[0-9a-f]{64}$")}
"""What a recorded digest of each algorithm looks like."""


def file_checksum(path, algorithm: str = DEFAULT, fsync: bool = False) -> str:
    """Hex digest of a file, read in blocks into one reused buffer (no new pages per block);
    with fsync=True the file is flushed to disk first (a writer's last step)."""
    h = ALGORITHMS[algorithm]()
    block = bytearray(_BLOCK)
    view = memoryview(block)
    with open(path, "rb", buffering=0) as f:
        if fsync:
            os.fsync(f.fileno())
        while n := f.readinto(block):
            h.update(view[:n])
    return h.hexdigest()
