"""Weight files of a Hugging Face directory: read (safetensors, sharded or not; torch pickles only
through `torch.load(weights_only=True)`, which cannot run code) and written (safetensors, sharded
at 5 GB like `save_pretrained`, with the same index file)."""

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from gpt.checkpoint.format import make_readable
from gpt.errors import ConfigError
from gpt.paths import member_file, plain_name

SAFETENSORS, SAFETENSORS_INDEX = "model.safetensors", "model.safetensors.index.json"
BIN, BIN_INDEX = "pytorch_model.bin", "pytorch_model.bin.index.json"
MAX_SHARD_BYTES = 5 * 1024**3


class HFWeights:
    """Tensors of an HF directory by name, opened lazily (safetensors are memory-mapped)."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self._where: dict[str, str] = {}
        self._open: dict[str, object] = {}
        if (self.dir / SAFETENSORS_INDEX).is_file():
            self._where = self._index(SAFETENSORS_INDEX)
        elif (self.dir / SAFETENSORS).is_file():
            self._where = {k: SAFETENSORS for k in self._file(SAFETENSORS).keys()}
        elif (self.dir / BIN_INDEX).is_file():
            self._where = self._index(BIN_INDEX)
        elif (self.dir / BIN).is_file():
            self._where = {k: BIN for k in self._file(BIN)}
        else:
            raise ConfigError(f"{self.dir} holds no {SAFETENSORS}, {SAFETENSORS_INDEX}, {BIN} or {BIN_INDEX}: "
                              f"not a Hugging Face model directory (model.init_from)")

    def _index(self, name: str) -> dict[str, str]:
        path = self.dir / name
        try:
            member_file(self.dir, name, where=self.dir, error=ConfigError)  # a FIFO would block read_text
            weight_map = dict(json.loads(path.read_text())["weight_map"])
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{path} is not a valid weight index ({e})") from None
        for file in weight_map.values():  # names only here; each file is stat-checked when first opened
            plain_name(file, where=f"{path} (weight_map)", error=ConfigError)
        return weight_map

    def _file(self, name: str):
        if name not in self._open:
            path = self.dir / name
            try:
                member_file(self.dir, name, where=f"the weights of {self.dir}", error=ConfigError)  # inside, regular
            except FileNotFoundError:
                raise ConfigError(f"{path} is missing (named by the weight index of {self.dir})") from None
            try:
                if name.endswith(".safetensors"):
                    self._open[name] = safe_open(str(path), framework="pt")
                else:  # a pickle: only tensors and plain containers may come out of it
                    self._open[name] = _load_pickle(path)
            except Exception as e:
                raise ConfigError(f"{path} cannot be read as weights ({str(e).splitlines()[0]})") from None
        return self._open[name]

    def keys(self) -> set[str]:
        return set(self._where)

    def get(self, name: str) -> torch.Tensor:
        if name not in self._where:
            raise ConfigError(f"{self.dir} has no tensor {name!r}; its weights do not match its config.json")
        f = self._file(self._where[name])
        return f.get_tensor(name) if hasattr(f, "get_tensor") else f[name]


def _load_pickle(path: Path) -> dict:
    try:  # memory-mapped where the file is in torch's zip format (each rank touches only its slices)
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # the legacy (non-zip) format cannot be mapped
        return torch.load(path, map_location="cpu", weights_only=True)


def write_weights(tensors: dict[str, torch.Tensor], directory: Path, *, max_shard_bytes: int = MAX_SHARD_BYTES) -> list[str]:
    """Write `tensors` as model.safetensors, or as model-0000i-of-0000n.safetensors + index when large."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(tensors):
        t = tensors[name]
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = t
        size += nbytes
    meta = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(directory / SAFETENSORS), metadata=meta)
        make_readable(directory / SAFETENSORS)
        return [SAFETENSORS]
    names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(directory / name), metadata=meta)
        make_readable(directory / name)
        weight_map.update({k: name for k in shard})
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (directory / SAFETENSORS_INDEX).write_text(json.dumps({"metadata": {"total_size": total},
                                                           "weight_map": dict(sorted(weight_map.items()))}, indent=2))
    return names + [SAFETENSORS_INDEX]
