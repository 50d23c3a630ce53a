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
    """Reads any flat range of any parameter's slice for (tp_rank, tp_size) from the files of any
    saved layout.

    Only the fragments that range overlaps are read, and only their overlapping elements
    (safetensors slices of a memory map): resharding 8 -> 4 tensor ranks reads two old pieces per
    new slice, and a ZeRO rank reading its partition reads about 1/dp of it.
    """

    def __init__(self, ckpt: Path, meta: dict):
        self.ckpt = ckpt
        self.meta = meta
        self._open: dict[str, object] = {}

    def file(self, name: str):
        if name not in self._open:
            if name not in self.meta["files"]:
                raise CheckpointError(f"{self.ckpt / fmt.META} indexes {name!r}, which its file list (and checksums) "
                                      f"does not have: the checkpoint is corrupt")
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

    def _entry(self, name: str, dim: int | None) -> dict:
        entry = self.meta["tensors"].get(name)
        if entry is None:
            raise CheckpointError(f"{self.ckpt / fmt.META} has no tensor {name!r}; the checkpoint does not match this model")
        saved_dim = entry["partition_dim"]
        if dim is not None and saved_dim is not None and dim != saved_dim:
            raise CheckpointError(f"{name!r} is split along dim {saved_dim} in {self.ckpt}, the model splits it along {dim}")
        return entry

    def slice_shape(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int) -> list[int]:
        """The shape of tensor rank `tp_rank`'s slice (of `tp_size`) of `name` along `dim`."""
        entry = self._entry(name, dim)
        shape = list(entry["shape"])
        if dim is not None and tp_size > 1:
            if shape[dim] % tp_size:
                raise CheckpointError(f"{name!r} has {shape[dim]} rows along dim {dim}, not divisible by tensor size {tp_size}")
            shape[dim] //= tp_size
        return shape

    def read(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, key: str | None = None) -> torch.Tensor:
        """Tensor rank `tp_rank`'s whole slice of `name` (or of its moment `key`)."""
        shape = self.slice_shape(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size)
        return self.read_flat(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size, start=0, stop=fmt.numel(shape),
                              key=key).view(shape)

    def read_flat(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, start: int, stop: int,
                  key: str | None = None) -> torch.Tensor:
        """Flat elements [start, stop) of tensor rank `tp_rank`'s slice of `name` (row-major), 1-D.

        The full tensor is viewed as (outer, rows, inner) around the split dimension; the slice is
        rows [lo, hi), each saved piece rows [offset, offset + n). The requested range touches outer
        indices o0..o1; from each piece overlapping [lo, hi) we read those outer indices' rows (one
        contiguous span of the piece when o0 == o1, as for every split along dim 0), then cut.
        """
        entry = self._entry(name, dim)
        key = key or name
        full = entry["shape"]
        axis = entry["partition_dim"] if entry["partition_dim"] is not None else (dim if dim is not None else 0)
        rows, inner = full[axis], fmt.numel(full[axis + 1:])
        lo, hi = 0, rows
        if dim is not None and tp_size > 1:
            shape = self.slice_shape(name, dim=dim, tp_rank=tp_rank, tp_size=tp_size)
            lo, hi = tp_rank * shape[axis], (tp_rank + 1) * shape[axis]
        m = hi - lo
        if stop <= start:
            return torch.empty(0)
        o0, o1 = start // (m * inner), (stop - 1) // (m * inner)
        parts, offset = [], 0
        for pc in entry["pieces"]:
            n = pc["shape"][axis] if entry["partition_dim"] is not None else rows
            a, b = max(lo, offset), min(hi, offset + n)
            if a < b:
                c0, c1 = a - offset, b - offset
                if o0 == o1:
                    base = o0 * n * inner
                    part = self._span(name, key, pc, base + c0 * inner, base + c1 * inner).view(1, c1 - c0, inner)
                else:
                    part = self._span(name, key, pc, o0 * n * inner, (o1 + 1) * n * inner).view(o1 - o0 + 1, n, inner)
                    part = part[:, c0:c1]
                parts.append(part)
            offset += n
        block = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)
        base = o0 * m * inner
        return block.reshape(-1)[start - base:stop - base].contiguous()

    def _span(self, name: str, key: str, piece: dict, start: int, stop: int) -> torch.Tensor:
        """Flat elements [start, stop) of one saved piece, from the fragments that hold them."""
        out = []
        for fr in piece["fragments"]:
            a, b = max(start, fr["start"]), min(stop, fr["start"] + fr["numel"])
            if a < b:
                out.append(self._get(fr, key, a - fr["start"], b - fr["start"]))
        got = sum(t.numel() for t in out)
        if got != stop - start:
            raise CheckpointError(f"{self.ckpt / fmt.META}: the fragments of {key!r} (tensor rank {piece['tp_rank']}) "
                                  f"hold {got} of elements {start}-{stop}: the checkpoint is corrupt")
        return (out[0] if len(out) == 1 else torch.cat(out)).float()

    def _get(self, fragment: dict, key: str, lo: int, hi: int) -> torch.Tensor:
        file = fragment["file"]
        try:
            f = self.file(file)
            if fragment.get("shaped"):  # version 1: the whole piece, with its shape
                return f.get_tensor(key).reshape(-1)[lo:hi]
            return f.get_slice(key)[lo:hi]
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
