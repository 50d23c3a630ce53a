"""Reading tensors out of a checkpoint without DeepSpeed: for resuming, generation and export."""

from pathlib import Path

import torch
from safetensors import safe_open

from gpt.checkpoint import format as fmt
from gpt.errors import CheckpointError

# Model fields that change the meaning or shape of the weights; everything else may differ on resume.
ARCHITECTURE = ("n_layer", "n_head", "n_kv_head", "n_embd", "ffn_hidden", "vocab_multiple", "bias", "norm",
                "activation", "position", "tie_embeddings")


class TensorReader:
    """Reads one parameter's slice for (tp_rank, tp_size) from the files of any saved layout."""

    def __init__(self, ckpt: Path, meta: dict):
        self.ckpt = ckpt
        self.meta = meta
        self._open: dict[str, object] = {}

    def _file(self, name: str):
        if name not in self._open:
            path = self.ckpt / name
            try:
                self._open[name] = safe_open(str(path), framework="pt")
            except Exception as e:  # safetensors raises its own error types for bad headers
                raise CheckpointError(f"{path} is corrupt ({e}); use checkpoint.fallback=true to resume from the previous one") from None
        return self._open[name]

    def has(self, name: str) -> bool:
        return name in self.meta["tensors"]

    def read(self, name: str, *, dim: int | None, tp_rank: int, tp_size: int, key: str | None = None) -> torch.Tensor:
        entry = self.meta["tensors"].get(name)
        if entry is None:
            raise CheckpointError(f"{self.ckpt / fmt.META} has no tensor {name!r}; the checkpoint does not match this model")
        key = key or name
        pieces = entry["pieces"]
        if entry["partition_dim"] is None:  # replicated: any copy
            full = self._get(pieces[0]["file"], key)
        elif len(pieces) == tp_size:  # same tensor size: just this rank's piece
            return self._get(pieces[tp_rank]["file"], key)
        else:
            full = torch.cat([self._get(pc["file"], key) for pc in pieces], dim=entry["partition_dim"])
        if dim is None:
            return full
        return full.chunk(tp_size, dim=dim)[tp_rank].contiguous()

    def _get(self, file: str, key: str) -> torch.Tensor:
        try:
            return self._file(file).get_tensor(key)
        except CheckpointError:
            raise
        except Exception as e:
            raise CheckpointError(f"{self.ckpt / file}: cannot read {key!r} ({e}); the file is corrupt") from None


def check_architecture(meta: dict, model_cfg: dict, ckpt: Path) -> None:
    saved = meta["config"]["model"]
    for key in ARCHITECTURE:
        if saved.get(key) != model_cfg.get(key):
            raise CheckpointError(f"{ckpt} was trained with model.{key}={saved.get(key)}, the config says "
                                  f"model.{key}={model_cfg.get(key)}; use the same model or a new run.dir")



def full_state_dict(ckpt: Path, meta: dict | None = None) -> dict[str, torch.Tensor]:
    """Every parameter as the one-process model holds it (tensor-parallel slices joined), fp32."""
    meta = meta or fmt.read_meta(ckpt)
    reader = TensorReader(ckpt, meta)
    return {name: reader.read(name, dim=None, tp_rank=0, tp_size=1) for name in meta["tensors"]}
