"""Writing one safetensors file in one pass: the bytes go to disk and into its checksum together.

The layout is safetensors' own (an 8-byte little-endian header length, a JSON header of dtype,
shape and byte offsets per tensor, then the raw bytes; `safetensors.safe_open` reads it), written
here rather than by `safetensors.torch.save_file` so that the checksum recorded in meta.json
(XXH3-128, gpt/checkpoint/format.py) is computed from the bytes in memory as they are written (in
a second thread, overlapping the writing), instead of by reading the file back. Both the hashing
and the writing release the GIL, so the writer costs the training thread little.
"""

import json
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from gpt.checkpoint import format as fmt

DTYPES = {torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
          torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
          torch.bool: "BOOL"}
_CHUNK = 64 << 20


def write_safetensors(path: Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> dict:
    """Write `tensors` (contiguous, on the CPU) durably to `path`; returns meta.json's record of it
    (bytes, checksum)."""
    order = sorted(tensors, key=lambda k: -tensors[k].element_size())  # stable; keeps every tensor aligned
    header: dict = {"__metadata__": metadata}
    offset = 0
    for key in order:
        t = tensors[key]
        n = t.numel() * t.element_size()
        header[key] = {"dtype": DTYPES[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    head = json.dumps(header, separators=(",", ":")).encode()
    head += b" " * (-len(head) % 8)
    digest = fmt.CHECKSUMS[fmt.CHECKSUM]()
    # The hash runs in a second thread, one chunk behind the write (both release the GIL): a save
    # costs about the longer of the two, not their sum. One worker keeps the chunks in order.
    with open(path, "wb") as f, ThreadPoolExecutor(1, thread_name_prefix="checksum") as hasher:
        pending = []
        for chunk in _chunks(struct.pack("<Q", len(head)) + head, [tensors[k] for k in order]):
            pending.append(hasher.submit(digest.update, chunk))
            f.write(chunk)
            if len(pending) > 2:
                pending.pop(0).result()
        for done in pending:
            done.result()
        f.flush()
        os.fsync(f.fileno())
    fmt.make_readable(path)
    return {"bytes": 8 + len(head) + offset, fmt.CHECKSUM: digest.hexdigest()}


def _chunks(head: bytes, tensors: list[torch.Tensor]):
    """The file's bytes as memoryviews of at most _CHUNK bytes (no copies of tensor data)."""
    yield memoryview(head)
    for t in tensors:
        data = memoryview(t.reshape(-1).view(torch.uint8).numpy())
        for start in range(0, len(data), _CHUNK):
            yield data[start:start + _CHUNK]
