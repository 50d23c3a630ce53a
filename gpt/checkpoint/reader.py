"""Reading tensors out of a checkpoint without DeepSpeed: for resuming, generation and export.

Anything that can hand out "the slice of parameter `name` that tensor rank r of t holds" is a
*source* (`read(name, dim=, tp_rank=, tp_size=, key=)`): `TensorReader` (our checkpoints) and
`FullTensors` (a dict of whole tensors, e.g. converted Hugging Face weights). The loader sets every
layout's parameters from a source, so resuming and `model.init_from` share one slicing rule.
"""

from pathlib import Path

import torch
from safetensors import safe_open

from gpt.checkpoint import format as fmt
from gpt.data.tokenizer import LOCATION_KEYS
from gpt.errors import CheckpointError

def tp_slice(full: torch.Tensor, dim: int | None, tp_rank: int, tp_size: int) -> torch.Tensor:
    """Tensor rank `tp_rank`'s contiguous share of `full` along `dim` (None: replicated, the whole)."""
    if dim is None or tp_size == 1:
        return full
    return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()


class FullTensors:
    """A source over whole (one-process) tensors produced on demand by `get(name)`.

    `names` lists the tensors it has (None: whatever `get` can produce; it raises KeyError otherwise).
    """

    def __init__(self, get, names, where: str):
        self._get = get
        self.names = None if names is None else set(names)
        self.where = where

    def has(self, name: str) -> bool:
        return self.names is None or name in self.names

    def read(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, key: str | None = None) -> torch.Tensor:
        if (key is not None and key != name) or not self.has(name):
            raise CheckpointError(f"{self.where} has no tensor {key or name!r}; it does not match this model")
        try:
            full = self._get(name)
        except KeyError:
            raise CheckpointError(f"{self.where} has no tensor {name!r}; it does not match this model") from None
        return tp_slice(full, dim, tp_rank, tp_size)


class TensorReader:
    """Reads one parameter's slice for (tp_rank, tp_size) from the files of any saved layout.

    Only the rows/columns that slice needs are read (safetensors slices of a memory map), so
    resharding 8 -> 4 tensor ranks reads two old pieces per rank, not eight.
    """

    def __init__(self, ckpt: Path, meta: dict):
        self.ckpt = ckpt
        self.meta = meta
        self._open: dict[str, object] = {}

    def file(self, name: str):
        if name not in self._open:
            path = self.ckpt / name
            try:
                fmt.member(self.ckpt, name)  # inside the checkpoint, a regular file (a FIFO would block)
                self._open[name] = safe_open(str(path), framework="pt")
            except CheckpointError:
                raise
            except FileNotFoundError:
                raise CheckpointError(f"{path} is missing; the checkpoint is incomplete ({fmt.FALLBACK_HINT})") from None
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"{path} is corrupt ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
                                      f"use checkpoint.fallback=true to resume from the previous one") from None
        return self._open[name]

    def has(self, name: str) -> bool:
        return name in self.meta["tensors"]

    def read(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, key: str | None = None) -> torch.Tensor:
        entry = self.meta["tensors"].get(name)
        if entry is None:
            raise CheckpointError(f"{self.ckpt / fmt.META} has no tensor {name!r}; the checkpoint does not match this model")
        key = key or name
        pieces, saved_dim = entry["pieces"], entry["partition_dim"]
        if saved_dim is None:  # replicated: any copy
            return tp_slice(self._get(pieces[0]["file"], key), dim, tp_rank, tp_size)
        if dim is not None and dim != saved_dim:
            raise CheckpointError(f"{name!r} is split along dim {saved_dim} in {self.ckpt}, the model splits it along {dim}")
        if dim is not None and len(pieces) == tp_size:  # same tensor size: just this rank's piece
            return self._get(pieces[tp_rank]["file"], key)
        full = entry["shape"][saved_dim]
        if dim is None or tp_size == 1:
            start, stop = 0, full
        else:
            if full % tp_size:
                raise CheckpointError(f"{name!r} has {full} rows along dim {dim}, not divisible by tensor size {tp_size}")
            start, stop = tp_rank * full // tp_size, (tp_rank + 1) * full // tp_size
        parts, offset = [], 0
        for pc in pieces:
            n = pc["shape"][saved_dim]
            lo, hi = max(start, offset), min(stop, offset + n)
            if lo < hi:
                parts.append(self._get(pc["file"], key, saved_dim, lo - offset, hi - offset))
            offset += n
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=saved_dim)

    def _get(self, file: str, key: str, dim: int | None = None, lo: int = 0, hi: int = 0) -> torch.Tensor:
        try:
            f = self.file(file)
            if dim is None:
                return f.get_tensor(key)
            sl = f.get_slice(key)
            return sl[(slice(None),) * dim + (slice(lo, hi),)].contiguous()
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.ckpt / file}: cannot read {key!r} ({e}); the file is corrupt") from None

    def rank_tensor(self, rank: int, key: str) -> torch.Tensor | None:
        """A per-rank extra (e.g. RNG state) of rank `rank`'s file, if that file has it."""
        name = fmt.rank_file(rank)
        if name not in self.meta["files"]:
            return None
        f = self.file(name)
        return f.get_tensor(key) if key in f.keys() else None


def check_tokenizer(meta: dict, tokenizer, ckpt: Path, data_path: Path) -> None:
    """The shards' tokenizer must be the one the checkpoint was trained with (same ids for the same text)."""
    saved = meta.get("tokenizer")
    if saved is None:
        return
    ours = tokenizer.to_dict()
    keys = (saved.keys() & ours.keys()) - set(LOCATION_KEYS)
    diff = sorted(k for k in keys if saved[k] != ours[k])
    if diff:
        raise CheckpointError(f"{ckpt} was trained with tokenizer {saved}, but the shards in {data_path} use "
                              f"{ours} ({', '.join(diff)} differ); use data with the run's tokenizer or a new run.dir")


def full_state_dict(ckpt: Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """Every parameter as the one-process model holds it (tensor-parallel slices joined), fp32."""
    meta = meta or fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    return {name: reader.read(name, dim=None, tp_rank=0, tp_size=1) for name in meta["tensors"]}
